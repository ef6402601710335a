"""The thinkflow pipeline: Hydra config -> Prefect flow -> stages tracked in MLflow.

    python flows/pipeline.py                                  # tiny default on CPU
    python flows/pipeline.py pretrain.max_steps=200           # any override
    python flows/pipeline.py -m pretrain.max_steps=200,400    # a Hydra sweep
    mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db  # look at the runs

The flow takes plain JSON (the resolved config dict), never a DictConfig, so deployments and
the Prefect UI can pass it too. Stages pass paths and run ids, not objects.
"""

from __future__ import annotations

import logging
import os

# A cold ephemeral Prefect server (migrations on a fresh PREFECT_HOME) takes longer than
# Prefect's 20 s default to come up on a 2-core laptop.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Offline-friendly: no usage telemetry from the local Prefect server (it fails noisily offline).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from thinkflow.config import validate  # noqa: E402
from thinkflow.runner import STAGES, enabled_stages, end_pipeline_run, run_stage, start_pipeline_run  # noqa: E402


def _stage_task(name: str):
    # log_prints off inside stages: dill (used by HF datasets for fingerprints) captures
    # stdout to disassemble functions, and Prefect's print capture floods the log with it.
    @task(name=name, task_run_name=name, log_prints=False)
    def _run(config: dict, parent_run_id: str, upstream: dict) -> dict:
        result = run_stage(name, config, parent_run_id, upstream, flow_run.get_id())
        if "summary_md" in result:  # a stage's summary table, shown on the flow run in the Prefect UI
            create_markdown_artifact(markdown=result.pop("summary_md"), key=f"{name.replace('_', '-')}-summary")
        return result

    return _run


STAGE_TASKS = {name: _stage_task(name) for name in STAGES}


@flow(name="pipeline", log_prints=True)
def pipeline(config: dict) -> dict:
    """Run every configured stage in order; returns each stage's result (paths, run ids)."""
    parent = start_pipeline_run(config, flow_run.get_id())
    results: dict = {}
    try:
        for name in enabled_stages(validate(config)):
            results[name] = STAGE_TASKS[name].submit(config, parent, dict(results)).result()
    except BaseException:
        end_pipeline_run(config, parent, results, "FAILED")
        raise
    end_pipeline_run(config, parent, results, "FINISHED")
    return {"parent_run_id": parent, **results}


@hydra.main(version_base="1.3", config_path="../conf", config_name="pipeline")
def main(cfg: DictConfig) -> dict:
    for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return pipeline(OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
