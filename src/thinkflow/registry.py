"""The stage registry: a stage is declared once, in its own module, and everything else is derived from that.

A stage module ``thinkflow/<package>/stage.py`` declares ``STAGE = StageSpec(...)``: its name, its run
function, the schema of its config section and what determines its result. From the specs:

- the pipeline's config schema has one optional section per stage (``config.pipeline_model``), checked by
  each spec's cross-section ``check``;
- the runner runs the enabled stages in ``order``, each in an MLflow child run tagged ``stage=<name>``, on
  ``trainer.devices`` ranks when the spec ``trains``, and repeats its ``headline`` metrics on the parent run;
- the cache identity of a result is the stage's section, its ``inputs`` and the results of its ``upstream``
  stages (``caching.stage_identity``); ``cache.refresh`` takes stage names.

One name per stage everywhere: config section, ``cache.refresh`` entry, MLflow tag, work directory, Prefect
task. A renamed stage keeps its old name in ``aliases`` (accepted, with a deprecation message).

Stage modules are found by name (``thinkflow.<package>.stage``), so this module imports nothing above it;
``register`` adds one from elsewhere (a plugin, a test).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # the run function's argument types (modules above this one)
    from thinkflow.config import PipelineConfig
    from thinkflow.stages import StageContext

log = logging.getLogger("thinkflow")


class StageResult(BaseModel):
    """What a stage hands to later stages, the cache and the closing summary: paths and run ids, never objects.
    JSON-able (it crosses process boundaries: Prefect's result store, the ranks of a distributed stage)."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    run_id: str = ""  # the stage's MLflow child run
    metrics: dict[str, float] = Field(default_factory=dict)  # its numbers (headline ones go on the parent run)
    checkpoint: str | None = None  # an HF checkpoint directory a later stage can load
    table: str | None = None  # the stage's main table (CSV)
    details: dict[str, Any] = Field(default_factory=dict)  # other JSON-able facts (per-checkpoint summaries, ...)
    summary_md: str | None = None  # a markdown summary, shown on the Prefect flow run
    profile: dict[str, Any] = Field(default_factory=dict)  # wall, peak memory, compute by phase (the runner's)
    identity_key: str = ""  # the cache identity it was computed under (the flow's)

    def files(self) -> list[str]:
        """The files this result points to (a reused result is only good while they exist)."""
        return [p for p in (self.checkpoint, self.table) if p]


@dataclass(frozen=True)
class StageSpec:
    name: str  # config section, cache.refresh entry, MLflow `stage` tag, work directory, Prefect task
    run: Callable[[PipelineConfig, StageContext], StageResult]
    config: type[BaseModel]  # the schema of its config section (``<name>: null`` turns the stage off)
    order: int  # enabled stages run in increasing order (pretrain 10, rl 20, ttc 30, compare 40)
    inputs: tuple[str, ...] = ()  # other top-level config keys that determine its result (its own section always)
    upstream: tuple[str, ...] = ()  # earlier stages whose results it reads (part of its cache identity)
    trains: bool = False  # trains on the task's training split, on `trainer.devices` ranks (one process each)
    headline: tuple[str, ...] = ()  # metrics repeated on the parent run as `<name>/<key>` and in the closing block
    check: Callable[[PipelineConfig], None] | None = None  # cross-section checks; raise ValueError naming the keys
    aliases: tuple[str, ...] = ()  # former names, still accepted (with a deprecation message)
    # what else its result depends on that lives outside the config (a registry alias): (config, upstream) -> dict
    outside: Callable[[dict, dict[str, StageResult]], dict] | None = None


_REGISTERED: dict[str, StageSpec] = {}  # added with ``register`` (beside the discovered ones)


def register(spec: StageSpec) -> StageSpec:
    """Add a stage declared outside ``thinkflow.<package>.stage`` (a plugin, a test). Returns it."""
    if spec.name in {s.name for s in _discovered()} or spec.name in _REGISTERED:
        raise ValueError(f"a stage named {spec.name!r} is already registered")
    _REGISTERED[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTERED.pop(name, None)


@functools.cache
def _discovered() -> tuple[StageSpec, ...]:
    import thinkflow

    found = []
    for info in pkgutil.iter_modules(thinkflow.__path__):
        name = f"thinkflow.{info.name}.stage"
        if info.ispkg and importlib.util.find_spec(name) is not None:
            spec = getattr(importlib.import_module(name), "STAGE", None)
            if isinstance(spec, StageSpec):
                found.append(spec)
    return tuple(found)


def stage_specs() -> list[StageSpec]:
    """Every stage, in pipeline order. Checks that each one's upstream stages come before it."""
    specs = sorted((*_discovered(), *_REGISTERED.values()), key=lambda s: (s.order, s.name))
    position = {s.name: i for i, s in enumerate(specs)}
    for i, s in enumerate(specs):
        late = [u for u in s.upstream if position.get(u, len(specs)) >= i]
        if late:
            raise ValueError(
                f"stage {s.name!r} reads {late} upstream, which are not registered stages running before it"
            )
    return specs


def stage_spec(name: str) -> StageSpec:
    """The stage of this name (or former name)."""
    canonical = canonical_name(name)
    for spec in stage_specs():
        if spec.name == canonical:
            return spec
    raise KeyError(f"no stage named {name!r}; stages: {', '.join(stage_names())}")


def stage_names() -> list[str]:
    return [s.name for s in stage_specs()]


_WARNED: set[str] = set()


def canonical_name(name: str) -> str:
    """A stage's current name; a former one (``ttc_eval``) is mapped with a deprecation message, once per
    process. Unknown names come back unchanged (the caller says what the stages are)."""
    for spec in stage_specs():
        if name in spec.aliases:
            if name not in _WARNED:
                _WARNED.add(name)
                log.warning("stage %r is now called %r; the old name still works but will be removed", name, spec.name)
            return spec.name
    return name
