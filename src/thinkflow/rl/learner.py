"""The RL learner as a LightningModule: each training step is one RL step.

One RL step = sample a group of completions per prompt from the current policy (through the
rollout engine), reward them with the task's verifier, then ``ppo_epochs`` passes of
``minibatches`` optimizer steps each on the clipped objective. Manual optimization, because one
batch of experience feeds several optimizer steps. Under DeepSpeed ZeRO-3 the parameters are
gathered (a collective: every rank takes part) whenever the engine needs whole weights.

Every rank samples its own prompts (data parallel); metrics are averaged over ranks and
logged by rank 0 only, with the RL step as the x-axis. The experience comes from a source
(``rl.experience``): sampled in this process with the current weights (``rl.mode=sync``) or from
Ray actors with a slightly older policy (``rl.mode=async``, corrected with importance weights).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DeepSpeedStrategy

from thinkflow import logs
from thinkflow.config import RLConfig
from thinkflow.distributed import all_mean, all_sum, full_parameters, global_rank, is_rank_zero, world_size
from thinkflow.evaluation import greedy_accuracy, sampled_pass_at_1
from thinkflow.profile.ledger import book, record_forward, record_training
from thinkflow.rl.experience import InProcessExperience
from thinkflow.rl.objectives import ObjectiveConfig, policy_loss, truncated_is_weights
from thinkflow.rl.rewards import RewardConfig
from thinkflow.rl.rollout import token_logprobs
from thinkflow.tasks import Problem, Task
from thinkflow.training import adamw_warmup_cosine

log = logs.get("rl")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/inf; no update from that batch was applied."""


class CollapseError(RuntimeError):
    """Reward or response length collapsed and ``rl.guards.stop_on_collapse`` is set."""


@dataclass
class Guards:
    """Reward- and length-collapse detection over a window of RL steps."""

    window: int
    collapse_ratio: float
    min_len: float
    rewards: list[float] = field(default_factory=list)
    lengths: list[float] = field(default_factory=list)

    def update(self, reward: float, length: float) -> dict[str, float]:
        self.rewards.append(reward)
        self.lengths.append(length)
        w = self.window
        recent_len = sum(self.lengths[-w:]) / len(self.lengths[-w:])
        reward_collapse = False
        if len(self.rewards) >= 2 * w:
            start, recent = sum(self.rewards[:w]) / w, sum(self.rewards[-w:]) / w
            reward_collapse = start > 0 and recent < self.collapse_ratio * start
        return {
            "guard/reward_collapse": float(reward_collapse),
            "guard/length_collapse": float(recent_len < self.min_len),
        }


class GRPOModule(pl.LightningModule):
    def __init__(
        self,
        model,
        tokenizer,
        task: Task,
        *,
        train_problems: list[Problem],
        val_problems: list[Problem],
        rl: RLConfig,
        seed: int,
        policy,  # rl.sync.InProcessPolicy | VLLMPolicy: how weights reach the rollout engine
        tracker,
        run_id: str,
        ref_model=None,
        ckpt_hook=None,  # called with the RL step after each ckpt_every-th update (HF export)
        ckpt_dir: str = "the stage work directory",
        source=None,  # rl.actors.AsyncExperience in rl.mode=async; None: rl.experience.InProcessExperience
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.train_problems, self.val_problems = train_problems, val_problems
        self.rl, self.seed, self.policy = rl, seed, policy
        self.tracker, self.run_id, self.ckpt_hook, self.ckpt_dir = tracker, run_id, ckpt_hook, ckpt_dir
        self.objective, self.reward_cfg = ObjectiveConfig.from_rl(rl), RewardConfig.from_rl(rl)
        if source is None:  # rl.mode=sync: sampled here, from the current weights, through the policy's engine
            source = InProcessExperience(
                policy, tokenizer, task, train_problems, rl, seed, self.reward_cfg, self.objective
            )
        self.source = source
        # The reference model stays outside the module tree: never trained, sharded or saved.
        object.__setattr__(self, "ref_model", ref_model)
        if rl.beta > 0 and ref_model is None:
            raise ValueError("rl.beta > 0 needs a reference model, but none was loaded")
        self.updates_per_step = rl.ppo_epochs * rl.minibatches
        g = rl.guards
        self.guards = Guards(window=g.window, collapse_ratio=g.reward_collapse_ratio, min_len=g.min_response_len)
        self.evals: list[dict] = []  # every held-out evaluation, kept across resumes
        self.sample_rows: list[dict] = []  # rollouts recorded at evaluation steps (the samples table)
        self.last_val_rows: list[dict] = []
        self._warned: set[str] = set()

    @property
    def rl_step(self) -> int:
        return self.global_step // self.updates_per_step

    # ---- the RL step -------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> None:
        step = self.rl_step
        if step % self.rl.eval_every == 0 and not any(e["step"] == step for e in self.evals):
            self.evaluate(step)
        t0 = time.perf_counter()
        rollouts, sync_s = self.collect_rollouts(step)
        rollout_s = time.perf_counter() - t0 - sync_s
        if step % self.rl.eval_every == 0:
            self._record_samples(step, rollouts)
        t2 = time.perf_counter()
        learn = self._learn(step, rollouts)
        self.policy.mark_updated()  # the next engine() call brings the new weights to the sampler
        self.source.publish(self.model)  # a new policy version (for the actors, in rl.mode=async)
        learner_s = time.perf_counter() - t2
        learner_tokens = learn.pop("_tokens")
        metrics = rollouts.metrics | learn
        metrics |= {
            "perf/rollout_tokens_per_s": rollouts.gen_tokens / max(rollout_s, 1e-9),
            "perf/learner_tokens_per_s": learner_tokens / max(learner_s, 1e-9),
            "perf/rollout_s": rollout_s,
            "perf/learner_s": learner_s,
            "perf/weight_sync_s": sync_s,
            "perf/step_s": time.perf_counter() - t0,
        }
        metrics |= self.source.step_metrics(time.perf_counter() - t0)
        metrics = all_mean(metrics)
        metrics |= self.guards.update(metrics["rl/reward_mean"], metrics["rl/response_len"])
        metrics["rl/lr"] = self.lr_schedulers().get_last_lr()[0]
        self._check_guards(step, metrics)
        if (step + 1) % self.rl.log_every == 0 or step == 0:
            self._log(metrics, step + 1)
        self.log("reward", metrics["rl/reward_mean"], prog_bar=True, logger=False)
        self.log("len", metrics["rl/response_len"], prog_bar=True, logger=False)
        if self.ckpt_hook is not None and (step + 1) % self.rl.ckpt_every == 0:
            self.ckpt_hook(step + 1)

    def collect_rollouts(self, step: int):
        """This rank's experience for RL step ``step``; (Rollouts, weight-sync seconds). Synchronous: sampled
        now from the current weights. Async: the next fresh-enough batch from the actors."""
        exp = self.source.next(self.model, step)
        for name, totals in exp.compute.items():  # generation done elsewhere (the actors), in this stage's ledger
            book(name, totals)
        return exp.rollouts, exp.sync_s

    def _learn(self, step: int, rollouts) -> dict[str, float]:
        """``ppo_epochs`` passes of ``minibatches`` clipped-objective updates on one batch of rollouts."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        batch, adv = rollouts.batch, rollouts.advantages
        ref_logp = None
        if self.ref_model is not None:
            t0 = time.perf_counter()
            with torch.no_grad():
                ref_logp = token_logprobs(self.ref_model, batch)
            record_forward("learn", self.model.config, batch.attention_mask.sum(-1).tolist(), time.perf_counter() - t0)
        is_weights, extra = None, {}
        if self.source.off_policy:  # truncated IS weights against the learner's current policy
            with torch.no_grad():
                prox = token_logprobs(self.model, batch)
            is_weights, truncated = truncated_is_weights(prox, batch.old_logp, batch.loss_mask, self.rl.actors.is_cap)
            mask = batch.loss_mask.bool()
            extra = {
                "dist/is_weight_mean": float(is_weights[mask].mean()) if mask.any() else 1.0,
                "dist/is_truncated_frac": truncated,
            }
            batch = replace(batch, old_logp=prox)  # PPO's ratio and clip are taken against the learner's policy
        order = torch.randperm(len(adv), generator=torch.Generator().manual_seed(self.seed + step))
        stats = {"rl/loss": 0.0, "rl/kl": 0.0, "rl/clip_frac": 0.0, "rl/ratio": 0.0, "rl/entropy": 0.0}
        tokens = 0
        for epoch in range(self.rl.ppo_epochs):
            for m, idx in enumerate(order.chunk(self.rl.minibatches)):
                mb, t_mb = batch.select(idx), time.perf_counter()
                logp, entropy = token_logprobs(self.model, mb, with_entropy=True)
                w = None if is_weights is None else is_weights[idx][:, : mb.loss_mask.shape[1]]
                # dapo's token mean over the whole batch, whichever rank holds the tokens (objectives.aggregate)
                tokens_per_rank = all_sum([float(mb.loss_mask.sum())])[0] / world_size()
                out = policy_loss(
                    logp,
                    mb.old_logp,
                    adv[idx],
                    mb.loss_mask,
                    self.objective,
                    None if ref_logp is None else ref_logp[idx],
                    token_weights=w,
                    tokens_per_rank=tokens_per_rank,
                )
                finite = all_sum([float(torch.isfinite(out.loss.detach()))])[0] == world_size()
                if not finite:
                    raise TrainingDivergedError(
                        f"rl: non-finite loss ({float(out.loss.detach())}) at RL step {step}, epoch {epoch}, minibatch {m}; "
                        f"no update from this batch was applied. The last good checkpoint is kept in "
                        f"{self.ckpt_dir}; lower rl.lr "
                        f"or raise rl.grad_clip."
                    )
                self.manual_backward(out.loss)
                if not self._deepspeed and self.rl.grad_clip:
                    self.clip_gradients(opt, gradient_clip_val=self.rl.grad_clip, gradient_clip_algorithm="norm")
                opt.step()
                opt.zero_grad()
                sched.step()
                record_training(
                    "learn", self.model.config, mb.attention_mask.sum(-1).tolist(), time.perf_counter() - t_mb
                )
                tokens += int(mb.attention_mask.sum())
                n_tok = mb.loss_mask.sum().clamp(min=1)
                stats["rl/loss"] += float(out.loss.detach())
                stats["rl/kl"] += float(out.kl.detach())
                stats["rl/clip_frac"] += out.clip_frac
                stats["rl/ratio"] += out.ratio_mean
                stats["rl/entropy"] += float((entropy.detach() * mb.loss_mask).sum() / n_tok)
        stats = {k: v / self.updates_per_step for k, v in stats.items()}
        return stats | {"_tokens": tokens} | extra

    @property
    def _deepspeed(self) -> bool:
        return isinstance(self.trainer.strategy, DeepSpeedStrategy)  # clips gradients itself

    # ---- evaluation, guards, logging ---------------------------------------------------
    def evaluate(self, step: int) -> dict:
        """Held-out greedy accuracy and temperature-1 pass@1, each rank scoring its share."""
        mine = self.val_problems[global_rank() :: world_size()]
        t0 = time.perf_counter()
        with full_parameters(self.model):
            engine, _ = self.policy.engine(self.model, self.tokenizer)
            greedy = greedy_accuracy(engine, self.task, mine, self.rl.max_new_tokens)
            sampled = sampled_pass_at_1(
                engine, self.task, mine, self.rl.eval_samples, 1.0, self.rl.max_new_tokens, seed=10_007 + step
            )
        self.model.train()
        n_correct, n, s_correct, no_answer = all_sum(
            [greedy.accuracy * greedy.n_problems, greedy.n_problems, sum(sampled.correct), greedy.n_no_answer]
        )
        result = {
            "step": step,
            "val_acc": n_correct / n,
            "val_pass@1": s_correct / (n * self.rl.eval_samples),
            "n_val": int(n),
            "eval_samples": self.rl.eval_samples,
            "no_answer_frac": no_answer / n,
            "eval_s": time.perf_counter() - t0,
        }
        self.evals.append(result)
        self.last_val_rows = greedy.rows
        self._log(
            {
                "rl/val_acc": result["val_acc"],
                "rl/val_pass@1": result["val_pass@1"],
                "rl/val_no_answer_frac": result["no_answer_frac"],
                "perf/eval_s": result["eval_s"],
            },
            step,
        )
        if is_rank_zero():
            log.info(
                f"step {step}: held-out val_acc {result['val_acc']:.3f}, val_pass@1 {result['val_pass@1']:.3f} "
                f"({int(n)} problems x {self.rl.eval_samples} samples)"
            )
        return result

    def on_train_end(self) -> None:
        if not self.evals or self.evals[-1]["step"] != self.rl_step:
            self.evaluate(self.rl_step)

    def _check_guards(self, step: int, metrics: dict[str, float]) -> None:
        for key, what in (("guard/reward_collapse", "reward"), ("guard/length_collapse", "response length")):
            if not metrics[key]:
                continue
            message = (
                f"rl: {what} collapse at RL step {step} (reward {metrics['rl/reward_mean']:.3f}, "
                f"response length {metrics['rl/response_len']:.1f} tokens)"
            )
            if self.rl.guards.stop_on_collapse:
                raise CollapseError(message + "; stopping (rl.guards.stop_on_collapse=true)")
            if key not in self._warned and is_rank_zero():
                log.warning("%s; logged as %s", message, key)
            self._warned.add(key)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if is_rank_zero():
            self.tracker.log_metrics(self.run_id, {k: v for k, v in metrics.items() if math.isfinite(v)}, step=step)

    def _record_samples(self, step: int, rollouts, groups: int = 2) -> None:
        g = rollouts.rewards.shape[1]
        for i, problem in enumerate(rollouts.problems[:groups]):
            for j in range(g):
                row = i * g + j
                self.sample_rows.append(
                    {
                        "step": step,
                        "rank": global_rank(),
                        "problem_id": problem.id,
                        "prompt": problem.prompt,
                        "completion": rollouts.texts[row],
                        "answer": problem.answer,
                        "reward": float(rollouts.rewards[i, j]),
                        "advantage": float(rollouts.advantages[row]),
                    }
                )

    # ---- optimizer and resumable state --------------------------------------------------
    def configure_optimizers(self):
        """AdamW with a linear warm-up over ``rl.warmup_steps`` RL steps, then a constant learning rate
        (``min_lr_ratio=1``); the schedule counts optimizer steps."""
        per = self.updates_per_step
        return adamw_warmup_cosine(
            self.model,
            self.rl.lr,
            self.rl.betas,
            self.rl.weight_decay,
            self.rl.warmup_steps * per,
            self.rl.max_steps * per,
            min_lr_ratio=1.0,
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["thinkflow_rl"] = {
            "evals": self.evals,
            "samples": self.sample_rows,
            "rewards": self.guards.rewards,
            "lengths": self.guards.lengths,
            "actors": self.source.state(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("thinkflow_rl", {})
        self.evals = state.get("evals", [])
        self.sample_rows = state.get("samples", [])
        self.guards.rewards = state.get("rewards", [])
        self.guards.lengths = state.get("lengths", [])
        self.source.load_state(state.get("actors", {}))  # async: new actors, its policy version and counters
