"""MLflow tracking: one parent run per pipeline run, one child run per stage.

The store defaults to ``sqlite:///<root>/mlruns/mlflow.db`` with artifacts under
``<root>/mlruns/artifacts``; ``tracking.uri`` or ``MLFLOW_TRACKING_URI`` override it. Runs are
addressed by id through an explicit ``MlflowClient`` (no global active run): Prefect tasks run
in worker threads and must not depend on thread-local MLflow state.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import mlflow.data
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from thinkflow import liveness, logs, shutdown

log = logs.get("tracking")

STAGE_TAG = "stage"
FLOW_RUN_TAG = "prefect.flow_run_id"
PROCESS_TAG = "thinkflow.process."  # + host, pid, pid_ns, started: the process running the run (liveness)
GONE_TAG = "thinkflow.failed_because"
MAX_PARAM_VALUE = 6000


def resolve_uri(uri: str | None, root: str | Path) -> str:
    """Explicit config beats the environment, which beats the project-local SQLite store."""
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = Path(root).resolve() / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def artifact_root(uri: str, root: str | Path) -> str | None:
    """Artifacts beside a local SQLite store; a tracking server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(root).resolve() / "mlruns" / "artifacts").as_uri()
    return None


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=artifact_location)
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def metric_key(name: str) -> str:
    """MLflow rejects ``@`` in metric names: ``rl/val_pass@1`` is stored as ``rl/val_pass_at_1``."""
    return name.replace("@", "_at_")


def flatten(cfg: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists are JSON strings."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            out[name] = text[:MAX_PARAM_VALUE]
    return out


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server does not answer."""


# A tracking server that goes away mid-run fails the stage after ~15 s of retries (3 tries, backoff 2 s,
# 4 s, 8 s) instead of MLflow's default of several minutes; users can set these variables themselves.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PENDING_FILE = "pending_run_status.jsonl"  # run ends the server could not take, applied at the next start


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def server_problem(uri: str, timeout: float = 10.0) -> str:
    """Why an HTTP tracking server is not usable ('' when it answers its health check, or is not a server)."""
    if not is_server(uri):
        return ""
    import httpx

    try:
        ok = httpx.get(uri.rstrip("/") + "/health", timeout=timeout).status_code == 200
        return "" if ok else "its /health check did not return 200"
    except httpx.HTTPError as err:
        return f"{type(err).__name__}: {err}"


def check_server(uri: str, timeout: float = 10.0) -> None:
    """Fail fast, before any compute, when an HTTP tracking server does not answer its health check."""
    reason = server_problem(uri, timeout)
    if reason:
        raise TrackingUnavailable(
            f"MLflow tracking server at {uri} is not answering ({reason}); start it (mlflow server ...) or unset "
            "MLFLOW_TRACKING_URI / tracking.uri to use the local store under mlruns/"
        )


def defer_run_status(root: str | Path, uri: str, run_id: str, status: str) -> None:
    """Remember a run end the server could not take (it is down); ``apply_pending`` sends it later."""
    path = Path(root).resolve() / "mlruns" / PENDING_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps({"uri": uri, "run_id": run_id, "status": status, "time": time.time()}) + "\n")
    log.warning("%s is down; run %s will be marked %s when a pipeline next starts", uri, run_id, status)


def _sqlite_lock(uri: str):
    """An flock beside a local SQLite store: two processes creating a fresh store at once race through MLflow's
    schema migrations ('duplicate column name'). A no-op for other stores."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(uri.removeprefix("sqlite:///") + ".lock")


class Tracker:
    """Creates and closes the pipeline's runs; every method takes run ids explicitly."""

    def __init__(self, uri: str, experiment: str, root: str | Path) -> None:
        self.uri, self.root = uri, root
        if is_server(uri):
            for key, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(key, value)
        try:
            with _sqlite_lock(uri):  # creating the store and the experiment: once, even for two pipelines at once
                self.client = MlflowClient(tracking_uri=uri)
                self.experiment_id = ensure_experiment(self.client, experiment, artifact_root(uri, root))
        except Exception as err:
            self._raise_if_down(err, "opening the experiment")
            raise

    def start_run(self, name: str, tags: dict[str, str], parent_run_id: str | None = None) -> str:
        """A new run, tagged with the process running it (``fail_orphaned_runs`` ends it if that process dies)."""
        process = {PROCESS_TAG + k: v for k, v in liveness.this_process().items()}
        tags = {MLFLOW_RUN_NAME: name, **process, **tags}
        if parent_run_id:
            tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        return self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        """Log params once; values already logged identically are skipped (params are immutable)."""
        have = self.client.get_run(run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in have]
        for i in range(0, len(new), 100):
            self.client.log_batch(run_id, params=new[i : i + 100])

    def log_dict(self, run_id: str, data: dict, file_name: str) -> None:
        self.client.log_dict(run_id, data, file_name)

    def log_metrics(
        self, run_id: str, metrics: dict[str, float], step: int | None = None, timestamp_ms: int | None = None
    ) -> None:
        now = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
        batch = [Metric(metric_key(k), float(v), now, step or 0) for k, v in metrics.items()]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_text(self, run_id: str, text: str, file_name: str) -> None:
        self.client.log_text(run_id, text, file_name)

    def log_table(self, run_id: str, rows: list[dict], file_name: str) -> None:
        """Rows as an MLflow table artifact (shown and compared in the UI's artifact view)."""
        import pandas as pd

        self.client.log_table(run_id, pd.DataFrame(rows), file_name)

    def log_dataset(self, run_id: str, frame, name: str, source: str, context: str = "training") -> None:
        """``frame`` (a pandas DataFrame) as the run's MLflow dataset input: name, digest, schema and row count
        in the run's *Datasets used* (``source``: where the table's file lives, e.g. its Parquet artifact)."""
        with warnings.catch_warnings():  # a local path "is ambiguous" (two equal source types); integer columns
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_pandas(frame, source=source, name=name)._to_mlflow_entity()
        tags = [InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)]
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset, tags=tags)])

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Close the run; when the server is down, the status is kept locally and sent at the next start."""
        if server_problem(self.uri):  # asked first: a dead server would cost a round of retries
            defer_run_status(self.root, self.uri, run_id, status)
            return
        self.client.set_terminated(run_id, status=status)

    def end_open_children(self, parent_run_id: str, status: str) -> list[str]:
        """End the parent's child runs still RUNNING (a stage cut off by a stop); returns their ids."""
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.{MLFLOW_PARENT_RUN_ID} = '{parent_run_id}' and attributes.status = 'RUNNING'"
        )
        for run in runs:
            self.client.set_terminated(run.info.run_id, status=status)
        return [run.info.run_id for run in runs]

    def apply_pending(self) -> list[str]:
        """Send the run ends deferred while this server was down (see ``end_run``); returns their run ids."""
        path = Path(self.root).resolve() / "mlruns" / PENDING_FILE
        if not path.exists():
            return []
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        done = []
        for e in entries:
            if e["uri"] == self.uri:
                self.client.set_terminated(e["run_id"], status=e["status"])
                done.append(e["run_id"])
                log.info("marked run %s %s (deferred while the server was down)", e["run_id"], e["status"])
        rest = [e for e in entries if e["uri"] != self.uri]
        if rest:
            write_lines = "".join(json.dumps(e) + "\n" for e in rest)
            path.write_text(write_lines)
        else:
            path.unlink()
        return done

    def fail_orphaned_runs(self) -> list[str]:
        """End FAILED the experiment's RUNNING runs whose process, on this host, is gone (``kill -9``, OOM
        killer, power loss); runs of other hosts are left alone. Returns their run ids."""
        host = liveness.this_process()["host"].replace("'", "")
        running = self.client.search_runs(
            [self.experiment_id], f"attributes.status = 'RUNNING' and tags.`{PROCESS_TAG}host` = '{host}'"
        )
        by_process: dict[tuple, list] = {}
        for run in running:
            owner = {k[len(PROCESS_TAG) :]: v for k, v in run.data.tags.items() if k.startswith(PROCESS_TAG)}
            by_process.setdefault(tuple(sorted(owner.items())), []).append(run.info.run_id)
        failed = []
        for key, run_ids in by_process.items():
            owner = dict(key)
            if not liveness.is_gone(owner):
                continue
            why = (
                f"the process running it (pid {owner['pid']} on {owner['host']}) ended without closing it "
                "(killed with SIGKILL, out of memory, or the machine went down); marked FAILED when the next "
                "pipeline started"
            )
            for run_id in run_ids:
                self.client.set_tag(run_id, GONE_TAG, why)
                self.client.set_terminated(run_id, status="FAILED")
            failed += run_ids
            log.info(
                "marked %d run%s of a process that is gone (pid %s on %s) FAILED: %s",
                len(run_ids),
                "s" * (len(run_ids) > 1),
                owner["pid"],
                owner["host"],
                ", ".join(run_ids),
            )
        return failed

    def _raise_if_down(self, err: BaseException, during: str) -> None:
        reason = server_problem(self.uri)
        if reason:
            raise TrackingUnavailable(
                f"MLflow tracking server at {self.uri} stopped answering while {during} ({reason}). Checkpoints "
                "written so far are kept under paths.work_dir; when the server is back, rerun the same command: "
                "training stages resume from their last checkpoint and the interrupted runs are marked FAILED"
            ) from err

    @contextmanager
    def run(self, name: str, tags: dict[str, str], parent_run_id: str | None = None) -> Iterator[str]:
        """A run that ends FINISHED, KILLED when the pipeline was told to stop, or FAILED if the body raises
        (and the error is re-raised; a tracking server that went down becomes a TrackingUnavailable saying so)."""
        run_id = self.start_run(name, tags, parent_run_id)
        try:
            yield run_id
        except BaseException as err:
            self.end_run(run_id, "KILLED" if shutdown.requested() or shutdown.is_stop_signal(err) else "FAILED")
            if isinstance(err, Exception) and not isinstance(err, TrackingUnavailable):
                self._raise_if_down(err, f"running `{name}`")
            raise
        self.end_run(run_id, "FINISHED")


def write_json(path: str | Path, data: dict) -> Path:
    """Atomic JSON write: a crash never leaves a half-written result file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    os.replace(fh.name, path)
    return path
