"""Baseline: Hugging Face TRL's GRPOTrainer on CPU, on the same tiny model and task as our RL stage.

Runs in its own virtualenv (TRL is not a project dependency), importing only ``thinkflow.tasks``:

    PYTHONPATH=src OMP_NUM_THREADS=2 /work/trl-venv/bin/python benchmarks/trl_grpo.py \\
        --model mlruns/work/pretrain/<key>/hf --steps 20 --out trl_grpo.json

The config mirrors ``conf/rl/default.yaml``: 16 prompts x 8 samples per rollout batch, two
optimisation passes over it (ppo_epochs=2, one minibatch), DAPO loss with clip 0.2/0.28, no KL.
In TRL one pass is one optimizer step, so a "TRL step" below is half of one of our RL steps:
``rl_step_s`` sums the optimizer steps that share a rollout batch (the first also generates).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
import trl
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from thinkflow.catalog import build_task
from thinkflow.tasks import Problem, Task

PROMPTS_PER_STEP = 16  # rl.prompts_per_step
GROUP_SIZE = 8  # rl.group_size
PASSES = 2  # rl.ppo_epochs (with rl.minibatches = 1)
WARMUP_STEPS = 2  # optimizer steps left out of the median (= the first rollout batch)


class StepTimer(TrainerCallback):
    """Wall clock of each optimizer step (generation, loss, backward, optimizer), plus the step's logs."""

    def __init__(self) -> None:
        self.step_s: list[float] = []
        self.logs: list[dict[str, float]] = []
        self._t0 = 0.0

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._t0 = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_s.append(time.perf_counter() - self._t0)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.logs.append({k: v for k, v in logs.items() if isinstance(v, int | float)})


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--model", required=True, help="HF checkpoint dir (config.json, model.safetensors, tokenizer)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (max_steps); 2 per rollout batch")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--task", default="multiplication")
    p.add_argument("--difficulty", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def prompt_dataset(task: Task, seed: int) -> tuple[Dataset, dict[str, Problem]]:
    """The RL stage's training prompts as a TRL dataset, and the problem behind each prompt."""
    train = task.splits(4096, 256, seed=seed)[0]
    by_prompt = {p.prompt: p for p in train}
    if len(by_prompt) != len(train):
        raise ValueError(f"{len(train) - len(by_prompt)} duplicate prompts in the {task.name} training split")
    return Dataset.from_dict({"prompt": [p.prompt for p in train]}), by_prompt


def correctness_reward(task: Task, by_prompt: dict[str, Problem]) -> Callable[..., list[float]]:
    """TRL reward function: 1.0 where the task's verifier accepts the completion, else 0.0."""

    def correct(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return [float(task.verify(c, by_prompt[p])) for p, c in zip(prompts, completions, strict=True)]

    return correct


def grpo_config(steps: int, out_dir: str, seed: int) -> GRPOConfig:
    """GRPOConfig mirroring conf/rl/default.yaml (see the module docstring for the mapping)."""
    fields = {f.name for f in dataclasses.fields(GRPOConfig)}
    optional = {"loss_type": "dapo", "epsilon_high": 0.28, "use_vllm": False}
    return GRPOConfig(
        output_dir=out_dir,
        # One optimizer step = the whole rollout batch: 16 prompts x 8 completions, no accumulation.
        per_device_train_batch_size=PROMPTS_PER_STEP * GROUP_SIZE,
        gradient_accumulation_steps=1,
        num_generations=GROUP_SIZE,
        steps_per_generation=1,  # generation_batch_size = 128 completions = 16 prompts
        num_iterations=PASSES,  # the batch is reused for a second optimizer step (ppo_epochs=2)
        max_completion_length=24,
        temperature=1.0,
        top_p=1.0,
        learning_rate=5e-5,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.99,
        max_grad_norm=1.0,
        beta=0.0,
        epsilon=0.2,
        **{k: v for k, v in optional.items() if k in fields},
        use_cpu=True,
        gradient_checkpointing=False,  # TRL defaults to True; our learner does not checkpoint activations
        bf16=False,
        fp16=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        max_steps=steps,
        seed=seed,
        disable_tqdm=True,
    )


def config_summary(cfg: GRPOConfig) -> dict[str, Any]:
    keys = (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "num_generations",
        "generation_batch_size",
        "steps_per_generation",
        "num_iterations",
        "max_completion_length",
        "temperature",
        "top_p",
        "learning_rate",
        "lr_scheduler_type",
        "adam_beta2",
        "max_grad_norm",
        "beta",
        "loss_type",
        "epsilon",
        "epsilon_high",
        "scale_rewards",
        "use_vllm",
        "use_cpu",
        "gradient_checkpointing",
        "bf16",
        "max_steps",
        "seed",
    )
    return {k: _plain(getattr(cfg, k, None)) for k in keys}


def _plain(value: Any) -> Any:
    """Enum config values (lr_scheduler_type) as their string value, for JSON."""
    return getattr(value, "value", value)


def rl_steps(step_s: list[float], per_batch: int) -> list[float]:
    """Sum consecutive optimizer steps that share one rollout batch (complete batches only)."""
    return [sum(step_s[i : i + per_batch]) for i in range(0, len(step_s) - per_batch + 1, per_batch)]


def summarise(timer: StepTimer, cfg: GRPOConfig, model_dir: str) -> dict[str, Any]:
    per_batch = cfg.steps_per_generation * cfg.num_iterations // cfg.gradient_accumulation_steps
    timed = timer.step_s[WARMUP_STEPS:] or timer.step_s
    rl = rl_steps(timer.step_s, per_batch)
    rl_timed = rl[WARMUP_STEPS // per_batch :] or rl
    return {
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "model": model_dir,
        "steps": len(timer.step_s),
        "step_s": [round(s, 4) for s in timer.step_s],
        "median_step_s": statistics.median(timed) if timed else None,
        "warmup_excluded": WARMUP_STEPS,
        "completions_per_step": cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps,
        "optimizer_steps_per_rl_step": per_batch,
        "rl_step_s": [round(s, 4) for s in rl],
        "median_rl_step_s": statistics.median(rl_timed) if rl_timed else None,
        "logs": timer.logs,
        "config": config_summary(cfg),
    }


def summary_line(result: dict[str, Any], out: Path) -> str:
    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    return (
        f"trl {result['trl_version']}: {result['steps']} optimizer steps of {result['completions_per_step']} "
        f"completions, median {fmt(result['median_step_s'])} s/step, {fmt(result['median_rl_step_s'])} s per RL step "
        f"(generate + {result['optimizer_steps_per_rl_step']} passes), {result['torch_threads']} threads -> {out}"
    )


def main() -> None:
    args = parse_args()
    task = build_task(args.task, args.difficulty)
    dataset, by_prompt = prompt_dataset(task, args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="trl_grpo_") as out_dir:
        cfg = grpo_config(args.steps, out_dir, args.seed)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=correctness_reward(task, by_prompt),
            args=cfg,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[timer],
        )
        trainer.train()
    result = summarise(timer, cfg, args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary_line(result, args.out))


if __name__ == "__main__":
    main()
