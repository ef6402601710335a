"""Stage reuse across pipeline runs: what identifies a stage's result.

A stage's result can be reused when everything that determines it is unchanged: its own config
sections, the upstream results it consumed (their identities and the runs that produced them),
where results live (work dir, tracking store) and the thinkflow code itself. The flow passes this
identity to each stage's Prefect task as the task's only cached input (cache policy: that input
plus the task's source; results persisted), so a sweep over evaluation settings reuses the
training stages and Prefect shows them as ``Cached``. Two pipelines that reach the same stage at
once take turns (``stage_lock``): the second waits, then reuses the first's result.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout
from mlflow import MlflowClient

from thinkflow import liveness, logs, shutdown
from thinkflow.registry import StageResult, stage_spec
from thinkflow.tracking import resolve_uri
from thinkflow.tracking.model_registry import RegistryError, is_model_uri, registered_version

REUSED_TAG = "thinkflow.reused_from"


@functools.cache
def code_version() -> str:
    """Hash of the thinkflow package's source: changing the code invalidates every cached stage."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def stage_identity(name: str, config: dict, upstream: dict[str, StageResult]) -> dict:
    """What determines a stage's result: its section and ``inputs`` (``StageSpec``), where results live, the
    results of its ``upstream`` stages and the code."""
    spec = stage_spec(name)
    sections = {key: config.get(key) for key in (spec.name, *spec.inputs)}
    # where results live, made absolute: `paths.root=.` in two checkouts are two different stores
    root = Path(config["paths"]["root"]).resolve()
    tracking = config.get("tracking") or {}
    sections["paths"] = {"root": str(root), "work_dir": str(Path(config["paths"]["work_dir"]).resolve())}
    sections["tracking"] = tracking | {"uri": resolve_uri(tracking.get("uri"), root)}
    inputs = {
        stage: [r.identity_key, r.run_id] for stage, r in upstream.items() if stage in spec.upstream
    }  # the results this stage consumes, not every earlier one
    identity = {"stage": spec.name, "config": sections, "upstream": inputs, "code": code_version()}
    aliases = _registry_aliases(sections.get(spec.name), sections["tracking"]["uri"])
    identity |= {"registered": aliases} if aliases else {}
    return identity | ({"outside": spec.outside(config, upstream)} if spec.outside else {})


def _registry_aliases(section, tracking_uri: str) -> dict[str, str]:
    """``models:/NAME@ALIAS`` values in a stage's section, each with the version the alias points at now: when
    the alias moves (a new champion), the stage's result is a new one."""
    found: dict[str, str] = {}
    values = [section]
    while values:
        value = values.pop()
        if isinstance(value, dict):
            values.extend(value.values())
        elif isinstance(value, list | tuple):
            values.extend(value)
        elif isinstance(value, str) and is_model_uri(value) and "@" in value:
            try:
                found[value] = registered_version(MlflowClient(tracking_uri), value)[1]
            except RegistryError:
                found[value] = "unresolved"  # the stage itself then says what is wrong
    return found


def identity_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def result_files_exist(result: StageResult) -> bool:
    """A reused result is only good while the files it points to are still there."""
    return all(Path(f).exists() for f in result.files())


@contextmanager
def stage_lock(name: str, identity: dict, work_dir: str | Path) -> Iterator[Path]:
    """Held while a stage with this identity runs (and is looked up in the cache), so that two pipelines sharing
    a work dir never compute the same result side by side: the second waits, then finds the first's result. An
    ``flock``: the kernel releases it when its holder dies, so a killed pipeline's lock is taken over. Yields
    the lock file's path. Keyed on the identity without the code version: stage work dirs are keyed on config
    alone, so pipelines running different code must take turns too (the second then recomputes, not reuses).
    A stop (SIGTERM, Ctrl-C) keeps it until ``shutdown.stop`` has let the stage save its checkpoint."""
    key = identity_key({k: v for k, v in identity.items() if k != "code"})
    path = Path(work_dir).resolve() / "locks" / f"{name}-{key[:16]}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = path.with_suffix(".owner.json")  # who holds it, for the waiting message (the lock file stays empty)
    lock = FileLock(path)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        try:
            pid = json.loads(owner.read_text())["pid"]
        except (OSError, ValueError, KeyError):
            pid = "?"
        logs.get(name).info("waiting for another pipeline (pid %s) running the same stage; lock %s", pid, path)
        lock.acquire(poll_interval=0.2)  # a Python loop: SIGTERM and Ctrl-C still stop the pipeline meanwhile
    try:
        owner.write_text(json.dumps(liveness.this_process()))
        yield path
    except BaseException as err:
        if not shutdown.is_stop_signal(err):
            lock.release()
            raise
        # stopped: the stage's thread is still saving its checkpoint; release once ``shutdown.stop`` has waited
        hook = shutdown.register(f"{name} lock", last=lambda: (lock.release(), shutdown.unregister(hook)))
        raise
    lock.release()
