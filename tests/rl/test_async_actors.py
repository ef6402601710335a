"""rl.mode=async: staleness filtering, truncated importance weights, the simulated link, bad input,
and a real run on 2 local Ray actors with one killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
import torch

from tests.conftest import compose
from tests.stopping import no_leftovers, pipeline_command, signal_when, start, statuses
from thinkflow.config import ConfigError, validate
from thinkflow.rl.actors import tensor_bytes, too_stale, transfer_delay
from thinkflow.rl.objectives import ObjectiveConfig, policy_loss, truncated_is_weights


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
    for override, message in (
        ("rl.actors.num_actors=0", "rl.actors.num_actors must be >= 1"),
        ("rl.actors.max_staleness=-1", "rl.actors.max_staleness must be >= 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            validate(compose(["rl.mode=async", override], root=tmp_path))
    with pytest.raises(ConfigError, match="set trainer.devices=1"):
        validate(compose(["rl.mode=async", "trainer=cpu_zero2"], root=tmp_path))


def test_without_ray_installed_async_mode_says_how_to_get_it(monkeypatch):
    import sys

    from thinkflow.rl.actors import connect

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when Ray is not installed
    with pytest.raises(ConfigError, match=r"rl.mode=async needs Ray: pip install 'thinkflow\[ray\]'"):
        connect(None, 1)


def test_an_unreachable_ray_cluster_is_named():
    import ray

    from thinkflow.rl.actors import connect

    assert not ray.is_initialized()
    with pytest.raises(ConfigError, match=r"Ray cluster at rl.actors.address='127.0.0.1:9' is unreachable"):
        connect("127.0.0.1:9", 1)


# A simulated 1 s link latency each way makes every batch take >= 2 s of sleep whatever the machine's
# speed: a restarting actor (10-40 s to import and load its model) comes back long before the learner,
# fed by the other actor alone, reaches max_steps (without it, a fast machine finished 100 steps first).
ASYNC = [
    "experiment=tiny",
    "rl.mode=async",
    "rl.actors.num_actors=2",
    "rl.max_steps=40",
    "rl.eval_every=20",
    "rl.ckpt_every=3",
    "rl.prompts_per_step=4",
    "rl.reward.format_weight=1.0",
    "rl.actors.link.latency_s=1.0",
    "~ttc",
    "~compare",
    "trainer.progress_bar=false",
]


def _wait_for(what: str, check, proc, timeout: float = 300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        assert proc.poll() is None, f"the run ended before {what} (exit code {proc.returncode})"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_async_rl_survives_a_killed_actor_and_a_killed_learner(tmp_path):
    """2 local Ray actors. One is SIGKILLed by its pid mid-run: Ray restarts it and the learner goes on.
    Then the learner itself is SIGKILLed: rerunning the command resumes from its checkpoint with new actors."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    from tests.conftest import ROOT

    cmd = [sys.executable, str(ROOT / "flows" / "pipeline.py"), f"paths.root={tmp_path}", *ASYNC]
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    log = tmp_path / "first.log"  # a file, not a pipe: Ray's processes would hold a pipe open after the kill
    with open(log, "w") as out:  # the child keeps its own copy of the file descriptor
        first = subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    work = tmp_path / "mlruns" / "work" / "rl"
    pids_file = lambda: next(iter(work.glob("*/actors.json")), None)  # noqa: E731
    last_ckpt = lambda: next(iter(work.glob("*/lightning/last.ckpt")), None)  # noqa: E731
    _wait_for("a checkpoint", lambda: pids_file() and last_ckpt(), first)
    victim = json.loads(pids_file().read_text())["pids"]["1"]
    os.kill(victim, signal.SIGKILL)  # an actor dies mid-run
    _wait_for("the actor's restart", lambda: json.loads(pids_file().read_text())["pids"]["1"] != victim, first)
    seen = last_ckpt().stat().st_mtime_ns
    _wait_for("a checkpoint after the restart", lambda: last_ckpt().stat().st_mtime_ns != seen, first)
    os.killpg(first.pid, signal.SIGKILL)  # the learner dies (with its temporary Prefect server)
    first.wait(timeout=60)
    out = log.read_text()
    assert "rollout actor 1 died" in out and "rollout actor 1 is back as process" in out

    second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"rl: resuming from {last_ckpt()}" in second.stdout

    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs(
        [client.get_experiment_by_name("thinkflow").experiment_id],
        "tags.stage = 'rl'",
        order_by=["attributes.start_time ASC"],
    )
    resumed = runs[-1]
    assert resumed.info.status == "FINISHED"
    history = lambda key: [m for m in sorted(client.get_metric_history(resumed.info.run_id, key), key=lambda m: m.step)]  # noqa: E731
    steps = [m.step for m in history("rl/loss")]
    assert steps[0] > 1 and steps[-1] == 40  # picked up where the checkpoint was, went on to the end
    assert history("dist/policy_version")[0].value > 2  # the learner's policy version, restored
    assert history("dist/actor_restarts")[-1].value >= 1 and history("dist/lost_batches")[-1].value >= 1
    assert max(m.value for m in history("dist/staleness_mean")) <= 2
    assert all(m.value > 0 for m in history("dist/bytes_per_step"))
    assert {"dist/learner_idle_frac", "dist/is_weight_mean", "rl/val_pass_at_1"} <= set(resumed.data.metrics)
    assert resumed.data.metrics["profile/rollout/tokens_generated"] > 0  # the actors' compute, in the profile


@pytest.mark.slow
def test_sigterm_during_async_rl_ends_the_runs_killed_and_every_ray_process(tmp_path):
    """SIGTERM once the learner has its 2 Ray actors, whose first batch takes >= 2 minutes (a 60 s link each way):
    the learner cannot reach a step boundary within the grace period, so the stop kills the actors from the main
    thread while the learner waits; that ends the learner, whose stage shuts down the local Ray it started (GCS,
    raylet, agents, workers); the runs end KILLED and the process exits as killed by SIGTERM in seconds, not
    minutes. The grace period is longer than 3 s: Ray's failure signal handler, left in place, aborted the process
    3 s after a SIGTERM."""
    shared = ("experiment=tiny", "trainer.progress_bar=false")  # pipeline_command sets them
    slow_link = [o for o in ASYNC if o not in shared]
    cmd, env = pipeline_command(tmp_path, *slow_link, "rl.actors.link.latency_s=60", "stop_grace_s=4")
    log = tmp_path / "first.log"
    first = start(cmd, env, log)
    actors_up = lambda: any((tmp_path / "mlruns" / "work" / "rl").glob("*/actors.json"))  # noqa: E731
    tree = signal_when(first, log, actors_up, "rollout actors")
    first.wait(timeout=60)
    text = log.read_text()
    assert first.returncode == -signal.SIGTERM, text[-3000:]
    assert "rl: stopped; the rollout actors were ended" in text, text[-3000:]
    assert {"gcs_server", "raylet"} <= {p.info["name"] for p in tree}  # Ray's processes are in the tree checked here
    assert no_leftovers(tmp_path, tree) == []
    assert statuses(tmp_path) == {"pipeline": "KILLED", "pretrain": "FINISHED", "rl": "KILLED"}
