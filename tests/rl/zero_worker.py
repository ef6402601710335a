"""One rank of the ZeRO equivalence test: the real RL learner on a fixed batch of experience.

    python -m torch.distributed.run --nproc_per_node 2 tests/rl/zero_worker.py OUT 2   # ZeRO-2, 2 ranks
    python tests/rl/zero_worker.py OUT 0                                                # 1 process, no DeepSpeed

Every run sees the same global batch (4 groups x 4 samples per RL step); with 2 ranks each
rank takes half the groups. Writes OUT.rank<r>.json: the rank-averaged loss per RL step and
the number of optimizer-state elements this rank holds.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from thinkflow.catalog import build_task
from thinkflow.config import validate
from thinkflow.distributed import close_process_group, global_rank, world_size
from thinkflow.distributed.strategy import build_strategy
from thinkflow.inference import Sample
from thinkflow.models import build_model_and_tokenizer
from thinkflow.rl.learner import GRPOModule
from thinkflow.rl.objectives import group_advantages
from thinkflow.rl.rollout import Rollouts, build_batch
from thinkflow.rl.sync import InProcessPolicy

GROUPS, G, STEPS = 4, 4, 3
MODEL = dict(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=64)


class RecordingTracker:
    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict]] = []

    def log_metrics(self, run_id, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))


class FixedExperience(GRPOModule):
    """The same global batch of experience on any number of ranks (no sampling)."""

    def collect_rollouts(self, step: int):
        gen = torch.Generator().manual_seed(1000 + step)
        problems = self.train_problems[step * GROUPS : (step + 1) * GROUPS]
        lengths = torch.randint(3, 9, (GROUPS, G), generator=gen)
        tokens = torch.randint(4, 90, (GROUPS, G, 8), generator=gen)
        logps = -torch.rand(GROUPS, G, 8, generator=gen) * 3 - 0.5
        rewards = torch.randint(0, 2, (GROUPS, G), generator=gen).float()
        mine = list(range(global_rank(), GROUPS, world_size()))
        samples = [
            Sample(i, "", tokens[g, j, : lengths[g, j]].tolist(), logps[g, j, : lengths[g, j]].tolist(), "stop", 0)
            for i, g in enumerate(mine)
            for j in range(G)
        ]
        batch = build_batch(self.tokenizer, [problems[g].prompt for g in mine], samples)
        adv = group_advantages(rewards[mine], self.objective).reshape(-1)
        metrics = {
            "rl/reward_mean": float(rewards[mine].mean()),
            "rl/response_len": float(lengths[mine].float().mean()),
        }
        return Rollouts(batch, rewards[mine], adv, metrics, [problems[g] for g in mine], [""] * len(samples), 0), 0.0


def optimizer_state_numel(trainer) -> int:
    opt = trainer.optimizers[0]
    base = getattr(opt, "optimizer", opt)  # DeepSpeed's ZeRO optimizer wraps the torch AdamW
    return sum(s["exp_avg"].numel() for s in base.state.values() if "exp_avg" in s)


def configs(stage: int):
    """The CLI's rl and trainer sections (conf/), with this test's batch, schedule and ZeRO stage."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the checkout's tests package
    from tests.conftest import compose

    trainer = {0: "cpu", 2: "cpu_zero2", 3: "cpu_zero3"}[stage]
    overrides = [
        f"trainer={trainer}",
        f"trainer.devices={world_size()}",
        f"rl.max_steps={STEPS}",
        f"rl.prompts_per_step={GROUPS}",
        f"rl.group_size={G}",
        "rl.lr=1e-2",
        "rl.max_new_tokens=8",
        "rl.eval_every=1000",
        "rl.eval_samples=1",
        "rl.ckpt_every=1000",
    ]
    cfg = validate(compose(overrides, tiny=False))
    return cfg.rl, cfg.trainer


def main(out: str, stage: int) -> None:
    torch.set_num_threads(1)
    model, tokenizer = build_model_and_tokenizer(MODEL, seed=3)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    task = build_task("multiplication", 2)
    train, val = task.splits(GROUPS * STEPS, 4, seed=0)
    rl, tc = configs(stage)
    tracker = RecordingTracker()
    module = FixedExperience(
        model,
        tokenizer,
        task,
        train_problems=train,
        val_problems=val,
        rl=rl,
        seed=0,
        policy=InProcessPolicy(),
        tracker=tracker,
        run_id="run",
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world_size(),
        strategy=build_strategy(tc, rl.grad_clip),
        max_steps=STEPS * rl.ppo_epochs,
        logger=False,
        use_distributed_sampler=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader(range(STEPS), batch_size=1))
    losses = [m["rl/loss"] for _, m in tracker.metrics if "rl/loss" in m]
    result = {
        "rank": global_rank(),
        "world": world_size(),
        "losses": losses,
        "state_numel": optimizer_state_numel(trainer),
        "n_params": n_params,
    }
    with open(f"{out}.rank{global_rank()}.json", "w") as fh:
        json.dump(result, fh)
    close_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
