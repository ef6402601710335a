"""The ``sft`` stage: supervised fine-tuning on reasoning traces between pretraining and RL.

    python flows/pipeline.py sft=default                          # pretrain -> sft (gold + self traces) -> rl -> ...
    python flows/pipeline.py experiment=expert_iteration          # pretrain -> 3 rounds of expert iteration -> ttc
    python flows/pipeline.py sft=default "~pretrain" sft.init_from=DIR sft.sources.gold=null \
        "+sft.sources.distill={kind: teacher, weight: 1, k: 4, max_per_problem: 1, teacher: BIG_DIR}"

Trace sources (``sft.sources``, mixed by weight): ``gold`` (the task's own traces), ``teacher`` (k samples
per problem from a checkpoint, kept when the task's verifier accepts them: rejection sampling) and ``self``
(the current policy's own verified samples). With ``sft.rounds = R`` the stage samples the ``self`` sources
again from the policy of the previous round, filters and trains, R times (expert iteration / STaR); the
gold and teacher examples are collected once and mixed into every round.

Every candidate trace, kept or not, is a row of the provenance table (``sft/provenance.parquet`` on the
run, and the run's MLflow dataset input ``sft-train`` for the kept ones). Resumable: the work directory is
keyed by the config and the starting weights; each round keeps its sampled traces, its Lightning
checkpoints and its HF export there, so a killed stage neither resamples nor retrains a finished round.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from thinkflow import logs
from thinkflow.api import APIError, SpendCapReached
from thinkflow.checkpoints import hf_export_dir, training_dirs
from thinkflow.config import ConfigError, ContestantConfig, PipelineConfig
from thinkflow.contamination import ContaminationError
from thinkflow.contestants import Skip, open_contestant, thinkflow_checkpoint
from thinkflow.distributed import is_rank_zero
from thinkflow.envs import EnvTask
from thinkflow.evaluation import greedy_accuracy
from thinkflow.inference import GenerationError, HFEngine, Sample, SamplingParams, open_engine
from thinkflow.models import CheckpointError, load_checkpoint, n_params
from thinkflow.models.lora import apply_lora
from thinkflow.profile.ledger import phase
from thinkflow.registry import StageResult, StageSpec
from thinkflow.sft.config import SAMPLED, SFTConfig, SourceConfig
from thinkflow.sft.data import ExampleDataset, collate_packed, collate_padded, encode, mixing_sampler
from thinkflow.sft.module import RoundLogger, SFTModule
from thinkflow.sft.sources import (
    KEPT,
    Candidate,
    SFTDataError,
    decontaminate,
    frame,
    from_frame,
    gold_candidates,
    judged,
    require_examples,
    sampled_candidates,
    select,
    source_counts,
)
from thinkflow.stages import (
    StageContext,
    config_key,
    local_source,
    stage_work_dir,
    training_problems,
    upstream_checkpoint,
)
from thinkflow.tasks import Problem, Task
from thinkflow.tasks.prompts import stop_strings
from thinkflow.tracking import flatten, write_json
from thinkflow.tracking.model_registry import is_model_uri
from thinkflow.training import build_trainer, export_hf, set_gradient_checkpointing

log = logs.get("sft")
T = TypeVar("T")


def starting_checkpoint(cfg: PipelineConfig, upstream: dict[str, StageResult]) -> str:
    init = local_source(cfg, cfg.sft.init_from) or upstream_checkpoint(upstream, "pretrain")
    if not init:
        raise ConfigError("sft: no starting checkpoint (no pretrain result upstream and sft.init_from is not set)")
    if not (Path(init) / "config.json").exists():
        raise ConfigError(f"sft: starting checkpoint {init} is missing (no config.json there)")
    return str(init)


def teacher_spec(cfg: PipelineConfig, ctx: StageContext, name: str, source: SourceConfig) -> ContestantConfig:
    """What a teacher source samples from, as a compare contestant (``thinkflow.contestants``): a checkpoint
    directory, ``models:/...``, ``pretrain`` or a ``kind: thinkflow`` run is a local ``hf`` model (its weights then
    count in the result's identity: a newer run is a new result); other contestants are used as declared. A local
    checkpoint that cannot be loaded fails before any work."""
    t, upstream = source.teacher, ctx.upstream
    if isinstance(t, ContestantConfig):
        if t.kind == "hf" and is_model_uri(t.model):
            return t.model_copy(update={"model": str(local_source(cfg, t.model))})
        if t.kind == "thinkflow":
            try:
                path = thinkflow_checkpoint(t, upstream, ctx.tracker, Path(cfg.paths.work_dir) / "sft")
            except (Skip, CheckpointError) as err:
                raise SFTDataError(f"sft: the teacher of source {name!r} cannot be loaded: {err}") from None
            return ContestantConfig(kind="hf", model=str(path), backend=cfg.sft.backend, prompt=t.prompt)
        return t
    path = upstream_checkpoint(upstream, "pretrain") if t == "pretrain" else local_source(cfg, t)
    if not path:
        raise ConfigError(f"sft.sources.{name}.teacher=pretrain, but no pretrain result is upstream")
    if not (Path(path) / "config.json").is_file():
        raise SFTDataError(
            f"sft: the teacher of source {name!r} cannot be loaded: {path} is not an HF checkpoint directory "
            "(no config.json there)"
        )
    return ContestantConfig(kind="hf", model=str(path), backend=cfg.sft.backend)


def teacher_label(spec: ContestantConfig) -> str:
    """Who wrote a teacher's traces (the provenance table's ``model``)."""
    if spec.kind == "openai":
        return f"openai:{spec.model} at {spec.base_url}"
    if spec.kind == "thinkflow":
        return f"thinkflow:{spec.run or 'this pipeline'}/{spec.stage or 'rl'}"
    return str(spec.model or spec.package)


def _local_dirs(teachers: dict[str, ContestantConfig]) -> dict[str, str]:
    """The teachers whose weights are a local directory (hashed into the stage's identity)."""
    return {n: t.model for n, t in teachers.items() if t.kind == "hf" and t.model and Path(t.model).is_dir()}


def weights_digest(checkpoint: str | Path) -> str:
    """Content hash of a checkpoint's weight files (a re-export of the same weights keeps it)."""
    h = hashlib.sha256()
    for f in sorted(Path(checkpoint).glob("*.safetensors")) + sorted(Path(checkpoint).glob("*.bin")):
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()[:16]


def sft_section(cfg: PipelineConfig, init: str, teachers: dict[str, str]) -> dict:
    """What identifies an SFT result: its config, task, seed and the weights it starts from and distils."""
    weights = {"init": init} | teachers
    tc = cfg.trainer
    distributed = {"world_size": tc.world_size, "strategy": tc.strategy} | (
        {"deepspeed": tc.deepspeed.model_dump()} if tc.deepspeed else {}
    )  # data parallel: sft.batch_size is per process, so the world size changes the result
    return {
        "sft": cfg.sft.model_dump(),
        "task": cfg.task.model_dump(),
        "seed": cfg.seed,
        **({"distributed": distributed} if tc.world_size > 1 else {}),
        "weights": config_key({k: f"{Path(p).resolve()}:{weights_digest(p)}" for k, p in weights.items()}),
    }


def run_sft(cfg: PipelineConfig, ctx: StageContext) -> StageResult:
    sc, tc = cfg.sft, cfg.trainer
    torch.set_num_threads(tc.num_threads or max(1, os.cpu_count() or 1))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    init = starting_checkpoint(cfg, ctx.upstream)
    model, tokenizer = load_checkpoint(init)
    task = cfg.task.build(tokenizer)  # task.prompt=chat: the student's chat template (teachers get the same text)
    sources = sc.active_sources
    if isinstance(task, EnvTask) and any(s.kind in SAMPLED for s in sources.values()):
        raise ConfigError(f"sft: task {task.name} is an environment task; its sources can only be kind=gold here")
    teachers = {n: teacher_spec(cfg, ctx, n, s) for n, s in sources.items() if s.kind == "teacher"}
    train, test = training_problems(cfg, task, sc.n_problems, ctx)
    section = sft_section(cfg, init, _local_dirs(teachers))
    work = stage_work_dir(cfg, "sft", section)
    tracker, run_id = ctx.tracker, ctx.run_id
    tracker.log_params(run_id, flatten(section | {"trainer": tc.model_dump(), "init_from": init}))
    tracker.log_params(
        run_id, {"task.n_train": str(len(train)), **{f"sft.teacher.{n}": teacher_label(t) for n, t in teachers.items()}}
    )

    _check_lengths(cfg, task, tokenizer, train + test, model.config.max_position_embeddings)
    val_examples = encode(tokenizer, [p.prompt for p in test], [task.completion_segments(p) for p in test])
    start = rank_zero_first(
        work / "start.json", lambda: _start_eval(model, tokenizer, task, test, val_examples, sc, work)
    )
    tracker.log_metrics(run_id, {"sft/val_acc": start["accuracy"], "val/loss": start["val_loss"]}, step=0)
    log.info("start: held-out greedy accuracy %.3f, val loss %.4f (%s)", start["accuracy"], start["val_loss"], init)

    fixed = rank_zero_first(
        work / "fixed.parquet", lambda: _fixed_candidates(cfg, ctx, task, train, test, teachers, work)
    )
    problems = {p.id: p for p in train}
    t0, policy, rounds, everything = time.perf_counter(), init, [], list(fixed)
    for r in range(sc.rounds):
        rdir = work / f"round_{r}"
        make = functools.partial(_self_candidates, cfg, task, train, test, policy, r, rdir)
        mine = rank_zero_first(rdir / "self.parquet", make)  # sampled once, by rank 0
        everything += mine
        candidates = fixed + mine
        require_examples(candidates, _sampled_labels(sources, teachers, mine), r)
        _log_round(tracker, run_id, candidates, everything, r)
        done = rdir / "done.json"
        if done.exists():  # a finished round of a resumed run
            rounds.append(pd.read_json(done, typ="series").to_dict())
            policy = str(hf_export_dir(rdir))
            continue
        kept = [c for c in candidates if c.status == KEPT]
        model, tokenizer = load_checkpoint(policy)
        if sc.lora is not None:  # fresh adapters on this round's policy (the last round's merged export)
            model = apply_lora(model, **sc.lora.model_dump(), where="sft.lora")
        set_gradient_checkpointing(model, cfg.trainer.gradient_checkpointing)
        evaluation = _train_round(cfg, ctx, task, model, tokenizer, kept, problems, test, val_examples, rdir, r)
        export_hf(model, tokenizer, hf_export_dir(rdir), {"stage": "sft", "round": r, "init_from": policy})
        info = {"round": r, "examples": len(kept), **{k: evaluation[k] for k in ("accuracy", "val_loss", "step")}}
        if is_rank_zero():
            write_json(done, info)
        else:  # the next round's policy is rank 0's export, written before its done.json
            wait_for(done)
        rounds.append(info)
        policy = str(hf_export_dir(rdir))
        log.info(
            "round %d: %d examples, held-out greedy accuracy %.3f, val loss %.4f",
            r,
            len(kept),
            info["accuracy"],
            info["val_loss"],
        )
    wall = time.perf_counter() - t0
    model, tokenizer = load_checkpoint(policy)
    hf_dir = hf_export_dir(work)
    export_hf(model, tokenizer, hf_dir, {"stage": "sft", "rounds": sc.rounds, "init_from": init})
    return _finish(cfg, ctx, everything, start, rounds, work, hf_dir, wall, n_params(model))


def rank_zero_first(path: Path, make: Callable[[], T]) -> T:
    """What is sampled, bought or evaluated once: rank 0 makes it and writes ``path``; the other ranks of a
    multi-process stage wait for that file, then ``make`` reads it (every maker returns its file's content when
    the file exists)."""
    if not is_rank_zero():
        wait_for(path)
    return make()


def wait_for(path: Path, poll_s: float = 0.5) -> None:
    """Until rank 0 has written ``path`` (if rank 0 fails, the launcher stops this rank)."""
    while not path.exists():
        time.sleep(poll_s)


def _check_lengths(cfg: PipelineConfig, task: Task, tokenizer, problems: list[Problem], limit: int) -> None:
    sc = cfg.sft
    prompt = max(len(ids) for ids in tokenizer([p.prompt for p in problems]).input_ids)
    gold = max(
        len(ex["input_ids"])
        for ex in encode(tokenizer, [p.prompt for p in problems], [task.completion_segments(p) for p in problems])
    )
    if gold > limit:
        raise ConfigError(
            f"model.max_seq_len={limit} is too short for task {task.name!r}: its longest traced example has {gold} "
            "tokens; raise model.max_seq_len or lower task.difficulty"
        )
    for key, new in (("max_new_tokens", sc.max_new_tokens), ("eval_max_new_tokens", sc.eval_max_new_tokens)):
        if prompt + new > limit:
            raise ConfigError(
                f"sft.{key}={new} + the longest prompt ({prompt} tokens) exceeds the model context of {limit} tokens"
            )


def _start_eval(model, tokenizer, task: Task, test: list[Problem], val: list[dict], sc: SFTConfig, work: Path) -> dict:
    """Held-out greedy accuracy and gold-trace loss of the starting checkpoint (kept in the work dir)."""
    path = work / "start.json"
    if path.exists():
        return pd.read_json(path, typ="series").to_dict()
    result = greedy_accuracy(HFEngine(model, tokenizer), task, test, sc.eval_max_new_tokens)
    losses = []
    with torch.no_grad():
        for batch in _val_loader(val, tokenizer, sc.batch_size):
            n = int((batch["labels"][:, 1:] != -100).sum())
            losses.append((float(model(**{k: v for k, v in batch.items() if k != "seq_lens"}).loss), n))
    out = {"accuracy": result.accuracy, "val_loss": sum(v * n for v, n in losses) / sum(n for _, n in losses)}
    write_json(path, out)
    return out


def _val_loader(val: list[dict], tokenizer, batch_size: int) -> DataLoader:
    pad = tokenizer.pad_token_id
    return DataLoader(ExampleDataset(val), batch_size=batch_size, collate_fn=lambda b: collate_padded(b, pad))


def _sampling(sc: SFTConfig, k: int, seed: int) -> SamplingParams:
    return SamplingParams(n=k, temperature=sc.temperature, top_p=sc.top_p, max_new_tokens=sc.max_new_tokens, seed=seed)


def _sampled_labels(
    sources: dict[str, SourceConfig], teachers: dict[str, ContestantConfig], mine: list[Candidate]
) -> dict:
    """The sampled sources of a round and what they sample from (for error messages)."""
    policy = next((c.model for c in mine), "the policy")
    return {
        n: f"teacher {teacher_label(teachers[n])}" if s.kind == "teacher" else f"self, {policy}"
        for n, s in sources.items()
        if s.kind in SAMPLED
    }


def _fixed_candidates(
    cfg: PipelineConfig,
    ctx: StageContext,
    task: Task,
    train: list[Problem],
    test: list[Problem],
    teachers: dict[str, ContestantConfig],
    work: Path,
) -> list[Candidate]:
    """Gold and teacher traces: collected, filtered and decontaminated once (kept in the work dir)."""
    path = work / "fixed.parquet"
    if path.exists():
        return from_frame(pd.read_parquet(path))
    sources = cfg.sft.active_sources
    out: list[Candidate] = []
    for name, s in sources.items():
        if s.kind == "gold":
            out += gold_candidates(task, train, name)
        elif s.kind == "teacher":
            out += _teacher_candidates(cfg, ctx, task, train, name, s.k, teachers[name], work)
    select(out, {n: s.max_per_problem for n, s in sources.items()})
    if out:
        _decontaminate(cfg, task, out, test)
    write_parquet(frame(out), path)
    return out


def _teacher_candidates(
    cfg: PipelineConfig,
    ctx: StageContext,
    task: Task,
    train: list[Problem],
    name: str,
    k: int,
    spec: ContestantConfig,
    work: Path,
) -> list[Candidate]:
    """``k`` samples of every training problem from a teacher of any contestant kind, in the form it takes
    (``spec.prompt``), judged by the task. An API teacher buys through the client: its response cache (a rerun, or
    a stage resumed after a kill, buys nothing twice) and its spend cap (what was bought before it is kept)."""
    label = teacher_label(spec)
    log.info("sampling %d x %d traces from the teacher of %r (%s)", len(train), k, name, label)
    params = replace(_sampling(cfg.sft, k, cfg.seed), stop=stop_strings(spec.prompt))
    client = None
    try:
        with open_contestant(name, spec, ctx.upstream, ctx.tracker, work, cfg.sft.api) as c, phase("rollout"):
            client = c.client
            # few-shot examples from the other training problems (never the problem's own solution)
            prompts = [c.prompt(task, p, [q for q in train[: spec.fewshot + 1] if q.id != p.id]) for p in train]
            try:
                groups = c.engine.generate(prompts, params)
            except SpendCapReached as stop:
                groups = stop.results
                bought = sum(len(g) for g in groups)
                log.warning("teacher of %r: %s; keeping the %d traces bought before it", name, stop, bought)
    except Skip as why:
        raise SFTDataError(f"sft: the teacher of source {name!r} ({label}) cannot be used: {why}") from None
    except (APIError, CheckpointError, GenerationError) as err:
        got = f" ({client.usage.paid_calls} bought, {client.usage.cache_hits} cached)" if client is not None else ""
        raise SFTDataError(
            f"sft: the teacher of source {name!r} ({label}) failed before {len(train)} x {k} traces were in{got}: {err}"
        ) from err
    cost = None
    if client is not None:  # what this run bought (a rerun's cache hits cost nothing again)
        u = client.usage
        usage = {"api_paid_calls": u.paid_calls, "api_cache_hits": u.cache_hits, "api_spent_usd": u.spent_usd}
        ctx.tracker.log_metrics(ctx.run_id, {f"sft/{k}/{name}": float(v) for k, v in usage.items()})

        def cost(sample: Sample) -> float:  # the trace's price at the endpoint's rates (cached or bought)
            return client.endpoint.cost(sample.prompt_tokens, sample.gen_tokens)

    return judged(task, train, groups, source=name, kind="teacher", model=label, round_=0, cost=cost)


def _self_candidates(
    cfg: PipelineConfig,
    task: Task,
    train: list[Problem],
    test: list[Problem],
    policy: str,
    round_: int,
    rdir: Path,
) -> list[Candidate]:
    """This round's samples of the ``self`` sources from ``policy`` (kept in the round's dir)."""
    path = rdir / "self.parquet"
    if path.exists():
        return from_frame(pd.read_parquet(path))
    rdir.mkdir(parents=True, exist_ok=True)
    sources = {n: s for n, s in cfg.sft.active_sources.items() if s.kind == "self"}
    out: list[Candidate] = []
    for name, s in sources.items():
        log.info("round %d: sampling %d x %d traces from the policy for %r", round_, len(train), s.k, name)
        with open_engine(cfg.sft.backend, policy) as engine, phase("rollout"):
            params = _sampling(cfg.sft, s.k, cfg.seed + 1000 * (round_ + 1))
            out += sampled_candidates(
                engine, task, train, source=name, kind="self", model=policy, round_=round_, params=params
            )
    select(out, {n: s.max_per_problem for n, s in sources.items()})
    if any(c.status == KEPT for c in out):
        _decontaminate(cfg, task, out, test)
    write_parquet(frame(out), path)
    return out


def _decontaminate(cfg: PipelineConfig, task: Task, candidates: list[Candidate], test: list[Problem]) -> None:
    dc = cfg.task.decontaminate
    if dc.action == "off":
        return
    held_out = {task.name: [p.meta.get("question", p.prompt) for p in test]}
    try:
        report = decontaminate(candidates, held_out, dc.n, dc.action)
    except ContaminationError as err:
        raise SFTDataError(f"sft: task.decontaminate.action={dc.action}: {err}") from None
    if report.contaminated:
        what = "dropped" if dc.action == "drop" else "kept"
        log.info("%d SFT examples overlap held-out problems (%s): %s", report.contaminated, what, report.describe())


def write_parquet(table: pd.DataFrame, path: Path) -> Path:
    """Atomic: a killed stage never leaves a half-written table that a resume would trust."""
    tmp = path.with_suffix(".tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


def _log_round(tracker, run_id: str, candidates: list[Candidate], everything: list[Candidate], round_: int) -> None:
    """Per source: accept rate (verified / sampled) and cost; the round's examples; drops so far."""
    metrics: dict[str, float] = {"sft/examples": sum(c.status == KEPT for c in candidates)}
    for name, counts in source_counts(candidates).items():
        mine = [c for c in candidates if c.source == name]
        metrics[f"sft/accept_rate/{name}"] = counts.get("verified", 0) / counts["samples"]
        metrics[f"sft/teacher_cost_usd/{name}"] = sum(c.cost_usd for c in mine)
        metrics[f"sft/kept/{name}"] = counts.get(KEPT, 0)
    metrics["sft/contaminated_dropped"] = sum(c.status == "contaminated" for c in everything)
    metrics["sft/duplicates_dropped"] = sum(c.status == "duplicate" for c in everything)
    tracker.log_metrics(run_id, metrics, step=round_)


def _train_round(
    cfg: PipelineConfig,
    ctx: StageContext,
    task: Task,
    model,
    tokenizer,
    kept: list[Candidate],
    problems: dict[str, Problem],
    test: list[Problem],
    val_examples: list[dict],
    rdir: Path,
    round_: int,
) -> dict:
    """``sft.max_steps`` optimizer steps on this round's examples (mixed by source weight); resumes from the
    round's ``last.ckpt``. Returns the last held-out evaluation."""
    sc, tc = cfg.sft, cfg.trainer
    segments = [
        task.completion_segments(problems[c.problem_id]) if c.kind == "gold" else [(c.completion, True)] for c in kept
    ]
    examples = encode(tokenizer, [c.prompt for c in kept], segments)
    model.train()  # from_pretrained returns it in eval mode (dropout off either way; Lightning warns)
    limit = model.config.max_position_embeddings
    fits = [i for i, ex in enumerate(examples) if len(ex["input_ids"]) <= limit]  # a teacher's tokenizer may differ
    if len(fits) < len(examples):
        log.warning(
            "round %d: %d examples longer than the model context (%d tokens) left out",
            round_,
            len(examples) - len(fits),
            limit,
        )
        kept, examples = [kept[i] for i in fits], [examples[i] for i in fits]
    if not examples:
        raise SFTDataError(f"sft: every example of round {round_} is longer than the model context ({limit} tokens)")
    weights = {n: s.weight for n, s in sc.active_sources.items()}
    sampler = mixing_sampler([c.source for c in kept], weights, sc.max_steps * sc.batch_size, cfg.seed + round_)
    pad = tokenizer.pad_token_id
    collate = (lambda b: collate_packed(b, pad, limit)) if sc.packing else (lambda b: collate_padded(b, pad))
    train_dl = DataLoader(ExampleDataset(examples), batch_size=sc.batch_size, sampler=sampler, collate_fn=collate)
    module = SFTModule(
        model,
        tokenizer,
        task,
        test,
        lr=sc.lr,
        max_steps=sc.max_steps,
        warmup_steps=sc.warmup_steps,
        min_lr_ratio=sc.min_lr_ratio,
        weight_decay=sc.weight_decay,
        betas=sc.betas,
        eval_max_new_tokens=sc.eval_max_new_tokens,
        log_every=sc.log_every,
    )
    ckpt_dir, _, resume = training_dirs(rdir, "sft")
    trainer = build_trainer(
        tc,
        stage="sft",
        work=rdir,
        ckpt_dir=ckpt_dir,
        ckpt_every=sc.ckpt_every,
        grad_clip=sc.grad_clip,
        max_steps=sc.max_steps,
        logger=RoundLogger(ctx.tracker, ctx.run_id, offset=round_ * sc.max_steps),
        val_check_interval=min(sc.eval_every, sc.max_steps),
        check_val_every_n_epoch=None,
        gradient_clip_val=sc.grad_clip or None,
        log_every_n_steps=sc.log_every,
    )
    val_dl = _val_loader(val_examples, tokenizer, sc.batch_size)
    trainer.fit(
        module,
        train_dataloaders=train_dl,
        val_dataloaders=val_dl,
        ckpt_path=str(resume) if resume else None,
        weights_only=False,
    )
    if module.last_eval is None or module.last_eval["step"] != trainer.global_step:
        trainer.validate(module, dataloaders=val_dl, verbose=False)  # resumed a finished round: score it
    return module.last_eval


def _finish(
    cfg: PipelineConfig,
    ctx: StageContext,
    candidates: list[Candidate],
    start: dict,
    rounds: list[dict],
    work: Path,
    hf_dir: Path,
    wall: float,
    params: int,
) -> StageResult:
    last = rounds[-1]
    counts = source_counts(candidates)
    metrics = {
        "val_acc": last["accuracy"],
        "val_acc_start": start["accuracy"],
        "val_loss": last["val_loss"],
        "val_loss_start": start["val_loss"],
        "examples": float(last["examples"]),
        "rounds": float(len(rounds)),
        "contaminated_dropped": float(sum(c.status == "contaminated" for c in candidates)),
        "wall_s": wall,
        **{f"accept_rate/{n}": c.get("verified", 0) / c["samples"] for n, c in counts.items()},
    }
    result = StageResult(stage="sft", run_id=ctx.run_id, checkpoint=str(hf_dir), metrics=metrics)
    result.summary_md = _summary(counts, start, rounds)
    if not is_rank_zero():
        return result
    tracker, run_id = ctx.tracker, ctx.run_id
    table = frame(candidates)
    (work / "provenance").mkdir(exist_ok=True)
    path = write_parquet(table, work / "provenance" / "provenance.parquet")
    tracker.log_artifacts(run_id, path.parent, "sft")
    tracker.log_dataset(run_id, table[table.status == KEPT], name="sft-train", source=str(path), context="training")
    tracker.log_metrics(run_id, {"sft/wall_s": wall, "sft/final_val_acc": last["accuracy"], "model/n_params": params})
    tracker.log_text(run_id, result.summary_md, "sft/summary.md")
    if cfg.tracking.log_checkpoint:
        tracker.log_artifacts(run_id, hf_dir, "checkpoint")
    log.info(
        "held-out greedy accuracy %.3f -> %.3f, val loss %.4f -> %.4f; %d rounds, %d examples in the last (%.0f s)",
        start["accuracy"],
        last["accuracy"],
        start["val_loss"],
        last["val_loss"],
        len(rounds),
        last["examples"],
        wall,
    )
    return result


def _summary(counts: dict[str, dict[str, int]], start: dict, rounds: list[dict]) -> str:
    lines = ["| source | traces | verified | kept |", "|---|---:|---:|---:|"]
    lines += [f"| {n} | {c['samples']} | {c.get('verified', 0)} | {c.get(KEPT, 0)} |" for n, c in counts.items()]
    lines += ["", "| round | examples | held-out greedy acc | val loss |", "|---|---:|---:|---:|"]
    lines += [f"| start | - | {start['accuracy']:.3f} | {start['val_loss']:.4f} |"]
    lines += [f"| {r['round']} | {r['examples']} | {r['accuracy']:.3f} | {r['val_loss']:.4f} |" for r in rounds]
    return "\n".join(lines) + "\n"


def check_config(cfg: PipelineConfig) -> None:
    """What the sft section needs from the rest of the config."""
    if cfg.pretrain is None and not cfg.sft.init_from:
        raise ValueError("sft needs a starting checkpoint: enable pretrain or set sft.init_from")
    uses_pretrain = [
        n
        for n, s in cfg.sft.active_sources.items()
        if s.teacher == "pretrain"
        or (isinstance(s.teacher, ContestantConfig) and s.teacher.stage == "pretrain" and not s.teacher.run)
    ]
    if uses_pretrain and cfg.pretrain is None:
        raise ValueError(f"sft.sources.{uses_pretrain[0]}.teacher=pretrain needs the pretrain stage")


STAGE = StageSpec(
    name="sft",
    run=run_sft,
    config=SFTConfig,
    order=15,
    inputs=("task", "model", "trainer", "seed"),
    upstream=("pretrain",),
    trains=True,
    headline=("val_acc",),
    check=check_config,
)
