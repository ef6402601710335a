"""rl.mode=async: staleness filtering, truncated importance weights, the simulated link, bad input,
and a real run on 2 local Ray actors with one killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import torch

from tests.conftest import compose
from thinkflow.config import ConfigError, validate
from thinkflow.rl.actors import tensor_bytes, too_stale, transfer_delay, truncated_is_weights
from thinkflow.rl.objectives import ObjectiveConfig, policy_loss


def test_batches_older_than_max_staleness_are_dropped():
    # learner at version 5: batches from versions 5, 4, 3 pass with max_staleness=2; 2 and older do not
    assert [too_stale(v, 5, 2) for v in (5, 4, 3, 2, 0)] == [False, False, False, True, True]
    assert too_stale(4, 5, 0) and not too_stale(5, 5, 0)  # max_staleness=0: strictly on-policy


def test_importance_weights_are_truncated_at_the_cap_on_completion_tokens_only():
    learner = torch.log(torch.tensor([[0.5, 0.9, 0.2], [0.3, 0.3, 0.3]]))
    behaviour = torch.log(torch.tensor([[0.5, 0.1, 0.4], [0.1, 0.3, 0.9]]))
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    w, truncated = truncated_is_weights(learner, behaviour, mask, cap=2.0)
    # ratios: 1.0, 9.0 -> 2.0 (cap), 0.5 | 3.0 -> 2.0, 1.0, (masked: 1)
    assert torch.allclose(w, torch.tensor([[1.0, 2.0, 0.5], [2.0, 1.0, 1.0]]), atol=1e-5)
    assert truncated == pytest.approx(2 / 5)


def test_importance_weights_scale_the_policy_gradient_per_token():
    logp = torch.log(torch.tensor([[0.4, 0.6]])).requires_grad_(True)
    old, adv, mask, cfg = logp.detach().clone(), torch.tensor([1.0]), torch.ones(1, 2), ObjectiveConfig("dapo")
    plain = torch.autograd.grad(policy_loss(logp, old, adv, mask, cfg).loss, logp)[0]
    weights = torch.tensor([[2.0, 0.5]])
    weighted = torch.autograd.grad(policy_loss(logp, old, adv, mask, cfg, token_weights=weights).loss, logp)[0]
    assert torch.allclose(weighted, plain * weights)


def test_simulated_link_and_payload_bytes():
    link = {"latency_s": 0.1, "bandwidth_mb_s": 10.0}
    assert transfer_delay(5_000_000, link) == pytest.approx(0.1 + 0.5)
    assert transfer_delay(5_000_000, {"latency_s": 0.0, "bandwidth_mb_s": None}) == 0.0
    assert tensor_bytes({"a": torch.zeros(10), "b": [torch.zeros(2, 2, dtype=torch.float64)], "c": "x"}) == 40 + 32


def test_bad_actor_settings_are_named(tmp_path):
    for override, message in (("rl.actors.num_actors=0", "rl.actors.num_actors must be >= 1"),
                              ("rl.actors.max_staleness=-1", "rl.actors.max_staleness must be >= 0")):  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            validate(compose(["rl.mode=async", override], root=tmp_path))
    with pytest.raises(ConfigError, match="set trainer.devices=1"):
        validate(compose(["rl.mode=async", "trainer=cpu_zero2"], root=tmp_path))


def test_an_unreachable_ray_cluster_is_named():
    import ray

    from thinkflow.rl.actors import connect

    assert not ray.is_initialized()
    with pytest.raises(ConfigError, match=r"Ray cluster at rl.actors.address='127.0.0.1:9' is unreachable"):
        connect("127.0.0.1:9", 1)


ASYNC = ["rl.mode=async", "rl.actors.num_actors=2", "rl.max_steps=30", "rl.eval_every=10", "rl.ckpt_every=3",
         "rl.prompts_per_step=4", "rl.reward.format_weight=1.0", "~ttc", "~compare"]  # fmt: skip


@pytest.mark.slow
def test_async_rl_keeps_training_when_an_actor_is_killed(tmp_path, prefect_server):
    """2 local Ray actors; one is SIGKILLed (by its pid) mid-run: Ray restarts it, the learner goes on."""
    from mlflow import MlflowClient

    from flows.pipeline import pipeline

    config = compose(ASYNC, root=tmp_path)
    killed: dict = {}

    def kill_one_actor():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            for path in (tmp_path / "mlruns" / "work" / "rl").glob("*/actors.json"):
                pids = json.loads(path.read_text())["pids"]
                if len(pids) == 2 and list((path.parent / "lightning").glob("*.ckpt")):  # a few steps in
                    killed["pid"] = pids["1"]
                    os.kill(pids["1"], signal.SIGKILL)
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    result = pipeline(config)
    killer.join(timeout=5)
    assert killed, "the run ended before an actor could be killed"

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    rl = client.get_run(result["rl"]["run_id"])
    assert rl.info.status == "FINISHED" and result["rl"]["steps"] == 30  # training went on to the end
    history = lambda key: [m.value for m in client.get_metric_history(rl.info.run_id, key)]  # noqa: E731
    assert history("dist/actor_restarts")[-1] >= 1 and history("dist/lost_batches")[-1] >= 1
    assert len(history("rl/loss")) == 30 and max(history("dist/staleness_mean")) <= 2
    assert all(b > 0 for b in history("dist/bytes_per_step"))
    assert {"dist/learner_idle_frac", "dist/is_weight_mean", "rl/val_pass_at_1"} <= set(rl.data.metrics)
    pids = json.loads(next((tmp_path / "mlruns" / "work" / "rl").glob("*/actors.json")).read_text())["pids"]
    assert pids["1"] != killed["pid"]  # the restarted actor is a new process
    assert result["rl"]["profile"]["phases"]["rollout"]["tokens_generated"] > 0  # the actors' compute, booked
