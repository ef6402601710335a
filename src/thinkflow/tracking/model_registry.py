"""Registered models: every checkpoint a training stage produces becomes a version in the MLflow Model Registry.

- ``register_checkpoint``: the stage's HF checkpoint logged to its run as an MLflow ``transformers`` model
  (``model/``: loadable with ``mlflow.transformers.load_model``, servable with ``mlflow models serve``) and
  registered as a new version of ``thinkflow-<task>-<model>``, tagged with its lineage: the stage, the version
  it started from (pretrain -> sft -> rl), the config hash, the code version, the data it trained on and its
  headline metrics. A reused stage result keeps the version registered when it was computed.
- ``resolve_model_uri``: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` as a local HF checkpoint directory
  (downloaded once into the work dir), for ``init_from`` and contestants.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from thinkflow import logs
from thinkflow.tracking.mlflow_store import Tracker

log = logs.get("registry")

MODELS_PREFIX = "models:/"
MODEL_ARTIFACT = "model"  # where the MLflow model goes in the stage's run
LINEAGE_TAGS = ("stage", "parent_version", "config_hash", "code_version", "data", "run_id")


class RegistryError(ValueError):
    """A ``models:/`` URI that names no registered version, or a registry that cannot be reached."""


def registered_name(task: str, model: str) -> str:
    """``thinkflow-<task>-<model>`` with what the registry accepts (letters, digits, ``-_.``)."""
    return re.sub(r"[^\w.-]+", "-", f"thinkflow-{task}-{model}").strip("-")


def register_checkpoint(
    tracker: Tracker, run_id: str, name: str, checkpoint: str | Path, tags: dict[str, str], description: str = ""
) -> str:
    """Log ``checkpoint`` (an HF directory) to ``run_id`` as an MLflow transformers model and register it as a new
    version of ``name`` with ``tags``. Returns the version."""
    import mlflow.transformers
    from mlflow.exceptions import MlflowException

    from thinkflow.models import load_checkpoint

    model, tokenizer = load_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / MODEL_ARTIFACT
        mlflow.transformers.save_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            path=str(out),
            task="text-generation",
            pip_requirements=["transformers", "torch"],  # not inferred: that would load the model again
        )
        tracker.log_artifacts(run_id, out, MODEL_ARTIFACT)
    client = tracker.client
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="thinkflow checkpoints: pretrain -> sft -> rl")
    version = client.create_model_version(
        name,
        source=f"runs:/{run_id}/{MODEL_ARTIFACT}",
        run_id=run_id,
        tags={k: str(v) for k, v in tags.items()},
        description=description,
    ).version
    log.info("registered %s version %s (%s)", name, version, tags.get("stage", ""))
    return str(version)


def is_model_uri(source: str | Path | None) -> bool:
    return str(source or "").startswith(MODELS_PREFIX)


def model_uri_name(uri: str) -> str:
    """NAME of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    return re.split(r"[@/]", uri.removeprefix(MODELS_PREFIX), maxsplit=1)[0]


def alias_version(client, name: str, alias: str) -> str | None:
    """The version of ``name`` holding ``alias`` now, or None (no such alias or model yet)."""
    try:
        return registered_version(client, f"{MODELS_PREFIX}{name}@{alias}")[1]
    except RegistryError:
        return None


def _model_version(client, uri: str):
    from mlflow.exceptions import MlflowException

    ref = uri.removeprefix(MODELS_PREFIX)
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return client.get_model_version_by_alias(name, alias)
        name, _, number = ref.partition("/")
        return client.get_model_version(name, number)
    except MlflowException as err:
        raise RegistryError(
            f"{uri}: no such registered model version in {client.tracking_uri} ({err.message})"
        ) from None


def registered_version(client, uri: str) -> tuple[str, str]:
    """(name, version) that ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names now."""
    mv = _model_version(client, uri)
    return mv.name, str(mv.version)


def resolve_model_uri(uri: str, tracking_uri: str, cache_dir: str | Path) -> Path:
    """The local HF checkpoint directory of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (config, weights
    and tokenizer side by side), downloaded once into ``cache_dir/<name>/<version>``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    mv = _model_version(client, uri)
    target = Path(cache_dir).resolve() / mv.name / str(mv.version)
    if (target / "config.json").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(client.download_artifacts(mv.run_id, MODEL_ARTIFACT, tmp))
        staged = Path(tmp) / "hf"
        shutil.copytree(local / "model", staged)  # config + weights
        for f in (local / "components" / "tokenizer").iterdir():  # the tokenizer beside them
            shutil.copy2(f, staged / f.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staged, target, dirs_exist_ok=True)
    return target
