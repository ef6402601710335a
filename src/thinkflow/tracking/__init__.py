"""MLflow tracking helpers: store resolution, parent/child runs, flattened params."""

from thinkflow.tracking.mlflow_store import (
    FLOW_RUN_TAG,
    STAGE_TAG,
    Tracker,
    TrackingUnavailable,
    check_server,
    defer_run_status,
    flatten,
    metric_key,
    resolve_uri,
    server_problem,
    write_json,
)

__all__ = [
    "FLOW_RUN_TAG",
    "STAGE_TAG",
    "Tracker",
    "TrackingUnavailable",
    "check_server",
    "defer_run_status",
    "flatten",
    "metric_key",
    "resolve_uri",
    "server_problem",
    "write_json",
]
