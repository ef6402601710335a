"""The thinkflow pipeline: Hydra config -> Prefect flow -> stages tracked in MLflow.

    python flows/pipeline.py                                  # tiny default on CPU
    python flows/pipeline.py pretrain.max_steps=200           # any override
    python flows/pipeline.py -m pretrain.max_steps=200,400    # a Hydra sweep
    mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db  # look at the runs

The flow takes plain JSON (the resolved config dict), never a DictConfig, so deployments and
the Prefect UI can pass it too. Stages pass paths and run ids, not objects.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import time

# A cold ephemeral Prefect server (migrations on a fresh PREFECT_HOME) takes longer than
# Prefect's 20 s default to come up on a 2-core laptop.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# Offline-friendly: no usage telemetry from the local Prefect server (it fails noisily offline).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# thinkflow's log lines (thinkflow.logs) also on the flow run in the Prefect UI; lines outside a flow run (config
# checks before it) stay local without a warning.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "thinkflow")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import INPUTS, TASK_SOURCE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from thinkflow import liveness, quiet, schedules, shutdown  # noqa: E402
from thinkflow.caching import identity_key, result_files_exist, stage_identity, stage_lock  # noqa: E402
from thinkflow.composition import compose  # noqa: E402
from thinkflow.config import ConfigError, drop_removed_stages, preflight, validate  # noqa: E402
from thinkflow.registry import StageResult  # noqa: E402
from thinkflow.runner import (  # noqa: E402
    closing_summary,
    enabled_stages,
    end_pipeline_run,
    profile_pipeline_run,
    record_reuse,
    run_stage,
    start_pipeline_run,
)
from thinkflow.sweeps import job_tags  # noqa: E402
from thinkflow.tasks import TaskError  # noqa: E402

# A stage task is cached on its identity alone (config sections, upstream results, code; see
# thinkflow.caching) plus its source, never on the whole config or the parent run id, so a run that
# changes only ttc.* reuses pretrain and rl. Results are persisted for the next pipeline run.
log = logging.getLogger("thinkflow")
quiet.silence()  # third-party noise that tells a user nothing (thinkflow.quiet)
STAGE_CACHE = (INPUTS - "config" - "parent_run_id" - "upstream") + TASK_SOURCE


_STAGE_TASKS: dict = {}  # stage name -> its Prefect task (a plain dict: joblib sweep jobs pickle this module's functions)


def stage_task(name: str):
    """The Prefect task running one stage (one per registered stage, made on first use)."""
    if name in _STAGE_TASKS:
        return _STAGE_TASKS[name]

    # log_prints off inside stages: dill (used by HF datasets for fingerprints) captures
    # stdout to disassemble functions, and Prefect's print capture floods the log with it.
    @task(name=name, task_run_name=name, log_prints=False, persist_result=True, cache_policy=STAGE_CACHE)
    def _run(config: dict, parent_run_id: str, upstream: dict, identity: dict) -> StageResult:
        result = run_stage(name, config, parent_run_id, upstream, flow_run.get_id())
        if result.summary_md:  # a stage's summary table, shown on the flow run in the Prefect UI
            create_markdown_artifact(markdown=result.summary_md, key=f"{name.replace('_', '-')}-summary")
        return result.model_copy(update={"summary_md": None, "identity_key": identity_key(identity)})

    _STAGE_TASKS[name] = _run
    return _run


@flow(name="pipeline", log_prints=True)
def pipeline(config: dict, tags: dict[str, str] | None = None) -> dict:
    """Run every configured stage in order; returns each stage's result (paths, run ids).
    ``tags`` go on the MLflow parent run (a Hydra sweep's ``sweep_id``, job number, overrides)."""
    t0 = time.perf_counter()
    _guard_temporary_prefect_server()
    preflight(config)  # the config and the task's data, before the MLflow parent run (deployments start here)
    parent = start_pipeline_run(config, flow_run.get_id(), tags)
    setup = time.perf_counter() - t0  # config checks, tracking store and the parent run
    cfg = validate(config)
    results: dict[str, StageResult] = {}
    reused: set[str] = set()
    running: list = []  # the stage task in flight
    shutdown.reset()
    try:
        for name in enabled_stages(cfg):
            results[name] = _run_or_reuse(name, config, parent, results, cfg.cache, reused, running)
        wall = time.perf_counter() - t0
        profile_md = profile_pipeline_run(config, parent, results, reused, wall, setup)
        if profile_md:  # where the run's compute went, on the flow run in the Prefect UI
            create_markdown_artifact(markdown=profile_md, key="compute-profile")
    except BaseException as err:
        status = "FAILED"
        if shutdown.is_stop_signal(err):  # SIGTERM or Ctrl-C: let the stage save its state, then end it all
            status = "KILLED"
            shutdown.stop(cfg.stop_grace_s, lambda: any(not f.wrapped_future.done() for f in running))
        end_pipeline_run(config, parent, results, status)
        raise
    end_pipeline_run(config, parent, results, "FINISHED")
    return {"parent_run_id": parent, "flow_run_id": flow_run.get_id(), **results}


@flow(name="nightly", log_prints=True)
def nightly_pipeline(
    config_name: str = "pipeline", overrides: list[str] | None = None, seed: int | None = None
) -> dict:
    """The ``thinkflow-nightly`` deployment: continue from the champion with a new seed, gate, promote
    (``thinkflow.schedules.nightly_plan``); the first night runs the whole pipeline and makes the first champion.
    ``seed`` defaults to the night's date (YYYYMMDD of the scheduled start)."""
    night = seed if seed is not None else schedules.night_seed(_scheduled_start())
    plan = schedules.nightly_plan(list(overrides or []), config_name, night)
    log.info("nightly: %s", plan.describe())
    return pipeline(compose(plan.overrides, config_name), {"trigger": "nightly", **plan.tags})


@flow(name="watch", log_prints=True)
def watch(
    config_name: str = "pipeline", overrides: list[str] | None = None, day: str | None = None, alias: str = "champion"
) -> dict:
    """The ``thinkflow-watch`` deployment: the champion and the API contestants on the day's draw of held-out
    problems, each appended to its MLflow series (step = day); ``day`` (YYYY-MM-DD) defaults to the scheduled one.
    The overrides are the nightly's (a ``~compare`` there is ignored: the watch is the compare stage)."""
    when = dt.date.fromisoformat(day) if day else _scheduled_start().date()
    plan = schedules.watch_plan([o for o in overrides or [] if o != "~compare"], config_name, when, alias)
    config = compose(plan.overrides, config_name)
    result = pipeline(config, {"trigger": "watch", **plan.tags})
    create_markdown_artifact(markdown=schedules.log_watch_series(config, result["compare"], plan, when), key="watch")
    return result


def _scheduled_start() -> dt.datetime:
    """When this flow run was scheduled for (its deployment's slot), or now."""
    return flow_run.scheduled_start_time or dt.datetime.now(dt.UTC)


def _run_or_reuse(
    name: str, config: dict, parent: str, results: dict[str, StageResult], cache, reused: set[str], running: list
) -> StageResult:
    """Run the stage's task; when Prefect serves it from the cache, record the reuse in MLflow
    (or recompute, if the files the cached result points to are gone). Under the stage's lock: a pipeline
    reaching a stage another one is running waits, then submits and finds its result in the cache."""
    identity = stage_identity(name, config, results)
    refresh = not cache.enabled or name in cache.refresh
    task_ = stage_task(name).with_options(refresh_cache=True) if refresh else stage_task(name)
    with stage_lock(name, identity, config["paths"]["work_dir"]):
        result, state = _result(task_.submit(config, parent, dict(results), identity), running)
        if state == "Cached":
            if not result_files_exist(result):
                log.info("%s: the cached result's files are gone; recomputing", name)
                task_ = stage_task(name).with_options(refresh_cache=True)
                return _result(task_.submit(config, parent, dict(results), identity), running)[0]
            record_reuse(name, config, parent, result, flow_run.get_id())
            reused.add(name)
    return result


def _result(future, running: list) -> tuple[StageResult, str]:
    """The task's result and final state name. Waited for in short slices: the stage runs in a worker thread,
    and a SIGTERM the kernel hands to that thread only reaches Python's handler (in the main thread) when the
    main thread runs bytecode, which an unbounded wait would put off until the stage ended."""
    running[:] = [future]
    while not future.wrapped_future.done():
        future.wait(timeout=0.5)
    result = future.result()
    running.clear()
    return result, future.state.name


def check_prefect_server() -> None:
    """With PREFECT_API_URL set, the server must answer before anything runs."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        return  # Prefect starts a temporary local server
    import httpx

    try:
        if httpx.get(url.rstrip("/") + "/health", timeout=10).status_code == 200:
            return
        reason = "its /health check did not return 200"
    except httpx.HTTPError as err:
        reason = f"{type(err).__name__}: {err}"
    raise SystemExit(
        f"Prefect server at PREFECT_API_URL={url} is not answering ({reason}). Start it with "
        "`prefect server start` (then PREFECT_API_URL=http://127.0.0.1:4200/api), or unset PREFECT_API_URL "
        "to run on a temporary local server."
    )


def checked_config(cfg: DictConfig, overrides: list[str]) -> dict:
    """The resolved config, validated and its task's data checked before the Prefect server starts. A bad key
    or data file ends the run with one message and no traceback (raised from the flow, Hydra and Prefect
    would each print it, after the ~20 s server start)."""
    try:
        config = drop_removed_stages(OmegaConf.to_container(cfg, resolve=True), overrides)
        preflight(config)
    except (ConfigError, TaskError) as err:
        raise SystemExit(str(err)) from None
    except OmegaConfBaseException as err:  # e.g. an interpolation that does not resolve
        raise SystemExit(f"invalid config: {err}") from None
    return config


@hydra.main(version_base="1.3", config_path="../conf", config_name="pipeline")
def main(cfg: DictConfig) -> dict:
    from hydra.core.hydra_config import HydraConfig

    config = checked_config(cfg, OmegaConf.to_container(HydraConfig.get().overrides.task, resolve=False))
    check_prefect_server()
    for noisy in ("httpx", "httpx2", "openai"):  # one INFO line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if "joblib" in str(HydraConfig.get().launcher.get("_target_", "")) and not os.environ.get("PREFECT_API_URL"):
        raise SystemExit(
            "parallel sweep jobs (hydra/launcher=joblib) share one Prefect server: start `prefect server start` "
            "and set PREFECT_API_URL=http://127.0.0.1:4200/api, or drop hydra/launcher=joblib to run the jobs "
            "one after another on a temporary server"
        )
    # SIGTERM outside the flow, and after the flow has handled it (Prefect re-sends it to this handler)
    signal.signal(signal.SIGTERM, shutdown.raise_terminated)
    try:
        result = pipeline(config, job_tags())
    except BaseException as err:
        if shutdown.is_stop_signal(err):
            _stop_temporary_prefect_server()  # its atexit hook would not run
            shutdown.exit_by_signal(signal.SIGINT if isinstance(err, KeyboardInterrupt) else signal.SIGTERM)
        raise
    print(closing_summary(config, result, result.get("flow_run_id")), flush=True)
    return result


_WATCHDOGS: dict = {}  # temporary Prefect server pid -> the watchdog process that stops it if this process dies


def _guard_temporary_prefect_server() -> None:
    """A watchdog stops the temporary Prefect server once this process is gone, even after a kill -9 (which runs
    no atexit hook; reparented to init, the server would run on). Once per server; a no-op with PREFECT_API_URL."""
    from prefect.server.api.server import SubprocessASGIServer

    process = SubprocessASGIServer().server_process  # the one Prefect's client started for this flow run
    if process is not None and process.poll() is None and process.pid not in _WATCHDOGS:
        _WATCHDOGS[process.pid] = liveness.guard_child(process.pid)


def _stop_temporary_prefect_server() -> None:
    from prefect.server.api.server import SubprocessASGIServer

    SubprocessASGIServer().stop()  # the one Prefect's client started (a no-op with PREFECT_API_URL set)


if __name__ == "__main__":
    main()
