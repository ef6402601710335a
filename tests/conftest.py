"""Shared fixtures: isolated Prefect/MLflow state, composed configs, a Prefect test server."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The checkout's sibling shared/ (as laid out for developers and CI), or THINKFLOW_SHARED.
GSM8K_DIR = Path(os.environ.get("THINKFLOW_SHARED", ROOT.parent / "shared")) / "datasets" / "gsm8k"

# Before Prefect/MLflow are imported anywhere: no telemetry, a private Prefect home.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="thinkflow-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "true"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("PREFECT_API_URL", None)


def compose(overrides: list[str] | None = None, root: Path | None = None, tiny: bool = True) -> dict:
    """The real config tree through ``thinkflow.composition.compose``; shrunk by ``experiment=tiny`` unless
    ``tiny`` is False or the overrides choose another experiment, every generated file under ``root``."""
    from thinkflow.composition import compose as compose_config

    overrides = list(overrides or [])
    if tiny and not any(o.startswith("experiment=") for o in overrides):
        overrides.insert(0, "experiment=tiny")
    if root:
        overrides.insert(0, f"paths.root={root}")
    return compose_config(overrides)


@pytest.fixture
def tiny_config(tmp_path) -> dict:
    return compose(root=tmp_path)


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    if not (GSM8K_DIR / "test.jsonl").exists():
        pytest.fail(f"GSM8K test data missing at {GSM8K_DIR} (set THINKFLOW_SHARED to the shared/ folder)")
    return GSM8K_DIR


def wait_http(url: str, proc, what: str, timeout: float = 180) -> None:
    """Until ``url`` answers 200; fails with the process's output if it exits first."""
    import time

    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(1)
    raise AssertionError(f"{what} not healthy after {timeout} s")


@pytest.fixture
def prefect_server_process(tmp_path):
    """A real `prefect server start` (SQLite in a temp PREFECT_HOME, free port); yields the env to use it."""
    import subprocess
    import sys

    from thinkflow.inference.vllm_server import free_port

    port = free_port()
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/health", server, "prefect server")
        yield env
    finally:
        server.terminate()
        server.wait(30)
