"""The validated shape of the resolved Hydra config.

Hydra composes ``conf/``; the result is resolved to a plain dict and validated here before any
compute. Unknown keys, wrong types and impossible values stop the run with a message that
names the key (``model.n_heads: ...``); ``preflight`` also checks the task's data. Stage code
receives these typed sections.

The YAML under ``conf/`` holds every value; these models only type and bound them, so their fields
have no defaults and a key missing from the composed config is an error, not a silent second
default (tests/test_config.py fails if a key set in YAML gets one). The one exception is
``ContestantConfig``: the entries of ``compare.contestants`` are declared per run, and the fields an
entry leaves out take the defaults written here.
"""

from __future__ import annotations

import functools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from thinkflow.catalog import ENV_TASKS, TASKS, build_task
from thinkflow.registry import canonical_name, stage_names, stage_specs
from thinkflow.tasks.prompts import ChatPrompted


class ConfigError(ValueError):
    """The config is invalid; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class SandboxConfig(_Strict):
    """Limits on every program the code environment runs (envs.sandbox)."""

    cpu_s: float = Field(gt=0)
    wall_s: float = Field(gt=0)
    memory_mb: int = Field(ge=32)
    file_mb: float = Field(gt=0)
    # os: namespaces, a new root, no capabilities, seccomp (refuses to run where the machine cannot);
    # hook: resource limits and the in-process audit hook only, an explicit opt-in logged on the run
    isolation: Literal["os", "hook"]


class EnvConfig(_Strict):
    """Environment tasks (calc, code): the episode's rules."""

    tools: bool  # calc: the calculator is there (false: the same problems answered directly)
    terms: int = Field(ge=1, le=4)  # calc: products summed per problem
    max_turns: int | None = Field(ge=1)  # null: the task's default (calc 8, code 1)
    sandbox: SandboxConfig  # code


class DecontaminationConfig(_Strict):
    """Training problems checked against the held-out problems before a training stage uses them."""

    n: int = Field(ge=1)  # n-gram length for text; problems shorter than n tokens: exact match
    action: Literal["off", "report", "drop", "fail"]


class TaskConfig(_Strict):
    name: str
    difficulty: int = Field(ge=1)
    source: str | None  # GSM8K, MATH-500: hub id or local directory/JSONL
    n_test: int = Field(ge=1)
    env: EnvConfig  # environment tasks (calc, code)
    shots: int = Field(ge=0, le=4)  # math500: Minerva worked examples in the task's own prompt
    thinking: tuple[str, str]  # GSM8K, MATH-500: the answer is read after the closing delimiter
    check_timeout_s: float = Field(gt=0)  # math500: bound on one math-verify answer check
    decontaminate: DecontaminationConfig
    prompt: Literal["plain", "chat"]  # chat: prompts through the policy tokenizer's chat template

    def build(self, tokenizer=None):
        """The task this config names (``catalog.build_task``); with ``prompt=chat``, its prompts through
        ``tokenizer``'s chat template (``tasks.prompts.ChatPrompted``: a clear error when it has none)."""
        options = {"shots": self.shots, "thinking": self.thinking, "timeout_s": self.check_timeout_s}
        task = build_task(self.name, self.difficulty, self.source, self.env.model_dump(), options)
        if self.prompt == "plain" or tokenizer is None:  # no tokenizer: data checks, pretrain (refused below)
            return task
        return ChatPrompted(task, tokenizer)

    @property
    def evaluation_only(self) -> bool:
        return bool(getattr(TASKS.get(self.name), "evaluation_only", False))

    @model_validator(mode="after")
    def _known(self) -> TaskConfig:
        if self.name not in TASKS:
            raise ValueError(f"unknown task {self.name!r}; known tasks: {sorted(TASKS)}")
        if self.prompt == "chat" and self.name in ENV_TASKS:
            raise ValueError(
                f"prompt=chat is for single-turn tasks; {self.name} runs episodes in its environment's own format"
            )
        return self


class ModelConfig(_Strict):
    name: str
    n_layers: int = Field(ge=1)
    d_model: int = Field(ge=8)
    n_heads: int = Field(ge=1)
    n_kv_heads: int = Field(ge=1)
    d_ff: int = Field(ge=1)
    max_seq_len: int = Field(ge=8)
    rope_theta: float = Field(gt=0)
    tie_embeddings: bool

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim d_model/n_heads={self.d_model // self.n_heads} must be even (RoPE)")
        return self


class PretrainConfig(_Strict):
    max_steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    min_lr_ratio: float = Field(ge=0, le=1)
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(ge=0)
    betas: tuple[float, float]
    grad_clip: float = Field(ge=0)
    eval_every: int = Field(ge=1)
    eval_max_new_tokens: int = Field(ge=1)
    ckpt_every: int = Field(ge=1)
    log_every: int = Field(ge=1)
    init_from: str | None  # an HF checkpoint directory to start from instead of scratch

    @model_validator(mode="after")
    def _schedule(self) -> PretrainConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be < max_steps={self.max_steps}")
        return self


class DeepSpeedConfig(_Strict):
    stage: Literal[2, 3]
    offload_optimizer: bool  # optimizer state in host RAM (ZeRO-Offload)
    offload_params: bool  # ZeRO-3 only: parameters in host RAM too

    @model_validator(mode="after")
    def _offload(self) -> DeepSpeedConfig:
        if self.offload_params and self.stage != 3:
            raise ValueError("offload_params needs ZeRO stage 3")
        return self


class TrainerConfig(_Strict):
    accelerator: Literal["cpu", "gpu", "cuda", "auto"]
    devices: int = Field(ge=1)  # processes per node (GPUs, or CPU processes on gloo)
    num_nodes: int = Field(ge=1)
    strategy: Literal["auto", "ddp", "deepspeed"]
    deepspeed: DeepSpeedConfig | None  # used when strategy=deepspeed
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"]  # auto: bf16 where native
    num_threads: int | None = Field(ge=1)  # torch threads per process; null = cores / devices
    progress_bar: bool
    gradient_checkpointing: bool  # recompute each layer's activations in the backward pass (HF models)
    # How the flow starts a multi-process stage: torchrun (this node only), or DeepSpeed's launcher,
    # which starts `devices` processes on each of the first `num_nodes` hosts of `hostfile`
    # ("host slots=N" lines) through `multinode_runner` (pdsh over passwordless ssh, MPI or SLURM's srun).
    launcher: Literal["torchrun", "deepspeed"]
    hostfile: str | None
    multinode_runner: Literal["pdsh", "openmpi", "mpich", "impi", "mvapich", "slurm"]
    master_addr: str | None  # rank 0's host as the other nodes reach it; null = the hostfile's first host
    master_port: int | None = Field(ge=1, le=65535)  # null = a free port on this node
    ssh_port: int | None = Field(ge=1, le=65535)  # pdsh: sshd port on the hosts, when not 22

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @model_validator(mode="after")
    def _strategy(self) -> TrainerConfig:
        if self.strategy == "deepspeed" and self.deepspeed is None:
            raise ValueError("strategy=deepspeed needs a trainer.deepspeed section (e.g. trainer=cpu_zero2)")
        if self.num_nodes > 1 and (self.launcher != "deepspeed" or not self.hostfile):
            raise ValueError(
                f"trainer.num_nodes={self.num_nodes} needs trainer.launcher=deepspeed and trainer.hostfile (one "
                "'host slots=N' line per node; see trainer=multinode_zero3): torchrun starts processes on this node only"
            )
        if self.launcher == "deepspeed" and self.multinode_runner != "pdsh" and self.ssh_port is not None:
            raise ValueError("trainer.ssh_port is for multinode_runner=pdsh; configure ssh for MPI/SLURM there")
        return self


class RewardSection(_Strict):
    correct_weight: float
    format_weight: float


class GuardConfig(_Strict):
    window: int = Field(ge=1)  # RL steps averaged before comparing with the start
    reward_collapse_ratio: float = Field(ge=0, le=1)  # reward below this share of its start
    min_response_len: float = Field(ge=0)  # mean completion tokens below this = length collapse
    stop_on_collapse: bool  # collapse is always logged; stop the stage only if asked


class SlowLinkConfig(_Strict):
    """A simulated weak interconnect between learner and actors: each transfer (weights down,
    experience up) waits latency + bytes / bandwidth."""

    latency_s: float = Field(ge=0)
    bandwidth_mb_s: float | None = Field(gt=0)  # null = unlimited


class ActorsConfig(_Strict):
    """``rl.mode=async``: rollout actors on Ray feeding a learner (see ``thinkflow.rl.actors``)."""

    num_actors: int
    max_staleness: int  # drop batches generated more than this many policy versions ago
    is_cap: float = Field(gt=0)  # truncated importance weight cap (pi_learner / pi_behaviour)
    address: str | None  # null = a local Ray on this machine; "auto" or "ray://host:10001" = a cluster
    threads: int = Field(ge=1)  # torch threads per actor
    link: SlowLinkConfig

    @model_validator(mode="after")
    def _ranges(self) -> ActorsConfig:
        if self.num_actors < 1:
            raise ValueError(f"rl.actors.num_actors must be >= 1, got {self.num_actors}")
        if self.max_staleness < 0:
            raise ValueError(f"rl.actors.max_staleness must be >= 0 policy versions, got {self.max_staleness}")
        return self


class LoRAConfig(_Strict):
    """LoRA adapters (peft) on the policy's linear layers; only they train."""

    r: int = Field(ge=1)  # rank
    alpha: float = Field(gt=0)  # scale alpha / r
    dropout: float = Field(ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"]  # leaf names of linear layers, e.g. [q_proj, v_proj]

    @model_validator(mode="after")
    def _targets(self) -> LoRAConfig:
        if not self.target_modules:
            raise ValueError("target_modules is empty: name the linear layers to adapt, or all-linear")
        return self


class RLConfig(_Strict):
    mode: Literal["sync", "async"]  # async: Ray rollout actors with a slightly stale policy
    actors: ActorsConfig
    objective: Literal["grpo", "dr_grpo", "dapo"]
    max_steps: int = Field(ge=1)  # RL steps (one batch of rollouts each)
    n_problems: int | None = Field(ge=1)  # unique training problems (a pool sampled with repeats); null: enough
    prompts_per_step: int = Field(ge=1)  # per process
    group_size: int = Field(ge=2)  # G samples per prompt
    ppo_epochs: int = Field(ge=1)  # optimisation passes over each batch of rollouts
    minibatches: int = Field(ge=1)  # optimizer steps per pass
    lr: float = Field(gt=0)
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(ge=0)
    betas: tuple[float, float]
    grad_clip: float = Field(ge=0)
    clip_low: float = Field(ge=0)
    clip_high: float = Field(ge=0)
    beta: float = Field(ge=0)  # k3 KL to the initial policy; 0 loads no reference model
    temperature: float = Field(gt=0)
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(ge=1)
    max_refill: int = Field(ge=0)  # dapo: extra sampling rounds to replace zero-variance groups
    reward: RewardSection
    backend: Literal["hf", "vllm"]
    eval_every: int = Field(ge=1)
    eval_samples: int = Field(ge=1)  # temperature-1 samples per held-out problem for pass@1
    log_every: int = Field(ge=1)
    ckpt_every: int = Field(ge=1)
    guards: GuardConfig
    init_from: str | None  # HF checkpoint; null: the pretrain stage's checkpoint
    lora: LoRAConfig | None  # null: full fine-tuning; else adapters only (the KL reference is the base model)

    @model_validator(mode="after")
    def _schedule(self) -> RLConfig:
        if self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be < max_steps={self.max_steps}")
        if self.lora is not None and self.backend != "hf":
            raise ValueError("rl.lora trains adapters the hf backend samples through; set rl.backend=hf")
        if self.lora is not None and self.mode == "async":
            raise ValueError("rl.lora with rl.mode=async is not supported (the actors load whole HF weights)")
        if self.mode == "async" and self.backend != "hf":
            raise ValueError("rl.mode=async runs each actor's own hf engine; set rl.backend=hf")
        if self.minibatches > self.prompts_per_step * self.group_size:
            raise ValueError(
                f"minibatches={self.minibatches} exceeds the rollout batch of "
                f"prompts_per_step*group_size={self.prompts_per_step * self.group_size} samples"
            )
        return self


class VerifierConfig(_Strict):
    train_problems: int = Field(ge=8)  # training problems whose samples teach the verifier
    samples: int = Field(ge=1)


class SearchConfig(_Strict):
    widths: list[int]  # beam widths; [] = no search
    expand: int = Field(ge=1)  # sampled next steps per beam
    max_steps: int = Field(ge=1)
    step_tokens: int = Field(ge=1)  # token cap of one step


class TTCConfig(_Strict):
    checkpoints: list[Literal["pretrain", "sft", "rl"]]  # upstream stages to evaluate
    init_from: str | None  # or evaluate this HF checkpoint (named "init") instead
    n_max: int = Field(ge=1)  # samples drawn once per problem
    ks: list[int]
    strategies: list[Literal["pass", "maj", "bon", "bon_logprob", "weighted_maj", "weighted_maj_logprob"]]
    temperature: float = Field(gt=0)
    max_new_tokens: int = Field(ge=1)
    n_problems: int | None = Field(ge=1)  # null = task.n_test
    vote_draws: int = Field(ge=1)  # random subsets per k for maj/weighted-maj estimates
    bootstrap: int = Field(ge=100)
    verifier: VerifierConfig
    budgets: list[int]  # thinking-token budgets (budget forcing, greedy)
    wait_min_think: list[int]  # "Wait"-extension: minimum thinking tokens
    answer_tokens: int = Field(ge=1)  # tokens allowed for the answer after forced thinking
    difficulty_bins: int = Field(ge=1)
    search: SearchConfig
    backend: Literal["hf", "vllm"]
    seed: int

    @model_validator(mode="after")
    def _ks(self) -> TTCConfig:
        bad = [k for k in self.ks if not 1 <= k <= self.n_max]
        if bad or not self.ks:
            raise ValueError(f"ks={self.ks} must be non-empty with 1 <= k <= n_max={self.n_max} (bad: {bad})")
        if not {"pass", "maj"} <= set(self.strategies):
            raise ValueError(f"strategies={self.strategies} must include pass and maj (the stage's headline curves)")
        if any(b < 1 for b in self.budgets + self.wait_min_think):
            raise ValueError("budgets and wait_min_think must be >= 1 thinking tokens")
        return self


class ContestantConfig(_Strict):
    """One model in the ``compare`` stage (see ``thinkflow.contestants``)."""

    kind: Literal["thinkflow", "hf", "gguf", "openai"]
    stage: Literal["pretrain", "sft", "rl"] | None = None  # thinkflow: the checkpoint of that stage (of ``run`` if set)
    run: str | None = None  # thinkflow: an earlier run's MLflow id (pipeline or stage run), or "latest"
    run_filter: str | None = None  # with run=latest: MLflow filter on pipeline runs, e.g. params.`model.name` = 'small'
    model: str | None = None  # hf: local dir, hub id or models:/NAME@ALIAS; gguf: .gguf file or dir; openai: model name
    gguf_file: str | None = None  # gguf: file name inside the ``model`` directory
    package: str | None = None  # gguf: a Python package whose assemble() returns the .gguf path
    backend: Literal["hf", "vllm"] = "hf"  # local kinds
    prompt: Literal["plain", "fewshot", "chat"] = "plain"
    fewshot: int = Field(0, ge=0)  # solved training examples before the question (fewshot, chat)
    max_new_tokens: int | None = Field(None, ge=1)  # default: compare.max_new_tokens
    base_url: str | None = None  # openai
    api_key_env: str | None = None  # openai: the NAME of the environment variable holding the key
    mode: Literal["chat", "completions"] = "chat"  # openai
    usd_per_mtok_in: float = Field(0.0, ge=0)  # openai prices per million tokens
    usd_per_mtok_out: float = Field(0.0, ge=0)
    n_params: int | None = Field(None, ge=1)  # openai: for FLOPs (~2 x params per token); local: counted
    usd_per_hour: float | None = Field(None, ge=0)  # local: hardware price (default compare.usd_per_hour)

    @model_validator(mode="after")
    def _kind(self) -> ContestantConfig:
        need = {"thinkflow": [], "hf": ["model"], "gguf": [], "openai": ["model", "base_url", "api_key_env"]}
        missing = [k for k in need[self.kind] if not getattr(self, k)]
        if missing:
            raise ValueError(f"kind={self.kind} needs {', '.join(missing)}")
        if self.kind == "thinkflow" and self.stage is None and self.run is None:
            raise ValueError("kind=thinkflow needs stage (this pipeline's), run (an earlier run's), or both")
        if self.kind == "gguf" and not (self.model or self.package):
            raise ValueError("kind=gguf needs model (a .gguf file, or a dir with gguf_file) or package")
        if self.kind == "openai" and self.prompt == "plain" and self.mode == "chat":
            raise ValueError("kind=openai with mode=chat needs prompt=chat (or fewshot)")
        if self.kind == "gguf" and self.backend != "hf":
            raise ValueError("kind=gguf runs on backend=hf (transformers de-quantizes the GGUF)")
        return self


class APIConfig(_Strict):
    concurrency: int = Field(ge=1)
    requests_per_minute: float | None = Field(gt=0)
    tokens_per_minute: float | None = Field(gt=0)
    max_retries: int = Field(ge=0)
    timeout_s: float = Field(gt=0)
    backoff_base_s: float = Field(gt=0)
    backoff_max_s: float = Field(gt=0)
    spend_cap_usd: float | None = Field(ge=0)  # per contestant; null = no cap
    cache: str | None  # SQLite response cache; null = <paths.work_dir>/<stage>/api_cache.sqlite


class CompareConfig(_Strict):
    contestants: dict[str, ContestantConfig | None]  # null drops one (e.g. compare.contestants.rl=null)
    n_problems: int | None = Field(ge=1)  # null = task.n_test
    ks: list[int]  # maj@k / pass@k; max(ks) samples per problem
    strategies: list[Literal["greedy", "pass", "maj", "budget"]]
    temperature: float = Field(gt=0)
    max_new_tokens: int = Field(ge=1)
    budgets: list[int]  # thinking budgets (strategy budget; local backends only)
    answer_tokens: int = Field(ge=1)
    usd_per_hour: float = Field(ge=0)  # price of this machine, for the cost of local models
    bootstrap: int = Field(ge=100)
    api: APIConfig
    seed: int

    @property
    def entrants(self) -> dict[str, ContestantConfig]:
        return {name: c for name, c in self.contestants.items() if c is not None}

    @model_validator(mode="after")
    def _check(self) -> CompareConfig:
        if not self.entrants:
            raise ValueError("contestants is empty; declare at least one (see conf/compare/default.yaml)")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks={self.ks} must be non-empty and >= 1")
        if "budget" in self.strategies and (not self.budgets or min(self.budgets) < 1):
            raise ValueError("strategy budget needs budgets: a list of thinking-token budgets >= 1")
        return self


class TrackingConfig(_Strict):
    uri: str | None
    experiment: str = Field(min_length=1)
    log_checkpoint: bool
    register_models: bool  # each training stage's checkpoint: a version of thinkflow-<task>-<model> in the registry


class CacheConfig(_Strict):
    enabled: bool  # reuse a stage's result when its config, upstream results and code are unchanged
    refresh: list[str]  # recompute these stages anyway (stage names)

    @field_validator("refresh")
    @classmethod
    def _stage_names(cls, names: list[str]) -> list[str]:
        names = [canonical_name(n) for n in names]
        unknown = [n for n in names if n not in stage_names()]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; the stages are {', '.join(stage_names())}")
        return names


class ProfileConfig(_Strict):
    enabled: bool  # the compute-spend profile (table, share chart, roofline) on the parent run
    measure_model: bool  # time prefill / decode / a training step of the final model (roofline points)
    probe_cache: str | None  # where the machine probe's figures are cached; null = ~/.cache/thinkflow


class PathsConfig(_Strict):
    root: str
    work_dir: str


class PipelineConfig(_Strict):
    """The sections every pipeline has. Each registered stage adds its own optional section (``pipeline_model``):
    null turns the stage off (``~rl`` on the command line, ``rl: null`` in an experiment)."""

    seed: int
    run_name: str | None
    stop_grace_s: float = Field(ge=0)
    paths: PathsConfig
    task: TaskConfig
    model: ModelConfig
    trainer: TrainerConfig
    tracking: TrackingConfig
    cache: CacheConfig
    profile: ProfileConfig

    def enabled(self, stage: str) -> bool:
        return getattr(self, stage, None) is not None

    @model_validator(mode="after")
    def _stages(self) -> PipelineConfig:
        training = [s.name for s in stage_specs() if s.trains and self.enabled(s.name)]
        if self.task.evaluation_only and training:
            raise ValueError(
                f"task {self.task.name} is evaluation-only (no training split), but {' and '.join(training)} would "
                f"train on it: drop them ({' '.join('~' + t for t in training)}) and evaluate a checkpoint with "
                "ttc.init_from=DIR, or compare"
            )
        if self.task.prompt == "chat" and self.enabled("pretrain"):
            raise ValueError(
                "task.prompt=chat needs an instruct model's chat template, and pretrain trains thinkflow's own "
                "character-level model (none): drop pretrain (~pretrain) and start from a checkpoint "
                "(rl.init_from=..., sft.init_from=..., ttc.init_from=...)"
            )
        for spec in stage_specs():
            if spec.check is not None and self.enabled(spec.name):
                spec.check(self)
        return self


def pipeline_model() -> type[PipelineConfig]:
    """The whole config's schema: the common sections plus one optional section per registered stage."""
    return _pipeline_model(tuple((s.name, s.config) for s in stage_specs()))


@functools.cache
def _pipeline_model(sections: tuple[tuple[str, type[BaseModel]], ...]) -> type[PipelineConfig]:
    fields: dict = {name: (schema | None, ...) for name, schema in sections}  # required: null, not absent
    return create_model("PipelineConfig", __base__=PipelineConfig, **fields)


def drop_removed_stages(config: dict, overrides: list[str]) -> dict:
    """``~rl`` removes the rl stage even when an experiment preset also sets rl keys (Hydra would
    re-create a partial section from the preset's keys)."""
    for override in overrides:
        name = override[1:].split("=", 1)[0] if override.startswith("~") else None
        if name in stage_names():
            config[name] = None
    return config


def preflight(config: dict) -> PipelineConfig:
    """Everything that can be checked before any compute: the config (``validate``: a ConfigError names each
    bad key) and the task's data (``Task.check``: a TaskError names the file, the line and what is wrong)."""
    cfg = validate(config)
    cfg.task.build().check()
    return cfg


def validate(config: dict) -> PipelineConfig:
    """Validate a resolved config dict; raise ConfigError naming each bad key."""
    try:
        return pipeline_model().model_validate(config)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"]) or "<root>"
            msg = e["msg"].removeprefix("Value error, ")
            # a section's own check (and the whole config's) names its keys itself: its input is not echoed
            shown = e["type"] != "missing" and e["loc"] and not isinstance(e["input"], dict)
            shown = shown and not any("key" in str(p).lower() for p in e["loc"])  # never echo a secret
            lines.append(f"  {key}: {msg}" + (f" (got {e['input']!r})" if shown else ""))
        raise ConfigError("invalid config:\n" + "\n".join(lines)) from None
