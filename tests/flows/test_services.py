"""The multi-service topology of docker/compose.yaml without containers: a real PostgreSQL, a Prefect
server and an MLflow tracking server on it, and the pipeline pointed at them by environment."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.conftest import ROOT, wait_http
from thinkflow.inference.vllm_server import free_port

PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    """PostgreSQL refuses to run as root: run its tools as the `postgres` user when we are root."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def postgres():
    if PG_BIN is None:
        pytest.skip("PostgreSQL server binaries missing: apt-get install postgresql")
    base = Path(tempfile.mkdtemp(prefix="thinkflow-pg-", dir="/tmp"))
    base.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()
    init = _as_postgres([f"{PG_BIN}/initdb", "-D", str(data), "-U", "thinkflow", "-A", "trust"])
    assert init.returncode == 0, init.stderr
    start = _as_postgres(
        [
            f"{PG_BIN}/pg_ctl",
            "-D",
            str(data),
            "-w",
            "-l",
            str(base / "pg.log"),
            "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1",
            "start",
        ]
    )
    assert start.returncode == 0, start.stderr + start.stdout
    try:
        for db in ("prefect", "mlflow"):
            made = _as_postgres(
                [
                    "psql",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "thinkflow",
                    "-d",
                    "postgres",
                    "-c",
                    f"CREATE DATABASE {db}",
                ]
            )
            assert made.returncode == 0, made.stderr
        yield port
    finally:
        _as_postgres([f"{PG_BIN}/pg_ctl", "-D", str(data), "-m", "fast", "stop"])
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_pipeline_on_postgres_backed_prefect_and_mlflow_servers(tmp_path, postgres):
    pg = f"thinkflow@127.0.0.1:{postgres}"
    prefect_port, mlflow_port = free_port(), free_port()
    base_env = os.environ | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(tmp_path / "prefect")}
    prefect_env = base_env | {"PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{pg}/prefect"}
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            env=prefect_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"postgresql+psycopg2://{pg}/mlflow",
                "--artifacts-destination",
                str(tmp_path / "mlartifacts"),
            ],
            env=base_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ),
    ]
    try:
        wait_http(f"http://127.0.0.1:{prefect_port}/api/health", servers[0], "prefect server")
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", servers[1], "mlflow server")
        env = base_env | {
            "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
            "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}",
        }
        run = subprocess.run(
            [
                sys.executable,
                str(ROOT / "flows" / "pipeline.py"),
                "experiment=tiny",
                f"paths.root={tmp_path}",
                "~compare",
                "trainer.progress_bar=false",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

        # the runs are in the PostgreSQL-backed MLflow server (and no local store was made)
        client = MlflowClient(f"http://127.0.0.1:{mlflow_port}")
        runs = client.search_runs([client.get_experiment_by_name("thinkflow").experiment_id])
        stages = sorted(r.data.tags.get("stage", "") for r in runs)
        assert stages == ["", "pretrain", "rl", "ttc"] and all(r.info.status == "FINISHED" for r in runs)
        assert not (tmp_path / "mlruns" / "mlflow.db").exists()
        count = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(postgres),
                "-U",
                "thinkflow",
                "-d",
                "mlflow",
                "-tAc",
                "SELECT count(*) FROM runs",
            ],
            capture_output=True,
            text=True,
        )
        assert count.stdout.strip() == "4", count.stderr
        ckpt = [
            a.path
            for a in client.list_artifacts(
                next(r for r in runs if r.data.tags.get("stage") == "rl").info.run_id, "checkpoint"
            )
        ]
        assert "checkpoint/model.safetensors" in ckpt  # artifacts went through the server to its store

        # the flow run is in the PostgreSQL-backed Prefect server, linked from the MLflow parent run
        flow_run_id = next(r for r in runs if "stage" not in r.data.tags).data.tags["prefect.flow_run_id"]
        flow_run = httpx.get(f"http://127.0.0.1:{prefect_port}/api/flow_runs/{flow_run_id}", timeout=10).json()
        assert flow_run["state"]["type"] == "COMPLETED"
        prefect_rows = subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(postgres),
                "-U",
                "thinkflow",
                "-d",
                "prefect",
                "-tAc",
                f"SELECT count(*) FROM flow_run WHERE id = '{flow_run_id}'",
            ],
            capture_output=True,
            text=True,
        )
        assert prefect_rows.stdout.strip() == "1", prefect_rows.stderr
    finally:
        for s in servers:
            s.terminate()
            s.wait(30)


def test_servers_that_are_down_stop_the_run_before_any_compute(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = os.environ | {"PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
    cmd = [sys.executable, str(ROOT / "flows" / "pipeline.py"), "experiment=tiny", f"paths.root={tmp_path}"]
    prefect_down = subprocess.run(
        cmd, env=env | {"PREFECT_API_URL": f"{dead}/api"}, capture_output=True, text=True, timeout=120
    )
    assert prefect_down.returncode != 0
    assert "is not answering" in prefect_down.stderr and "prefect server start" in prefect_down.stderr
    mlflow_down = subprocess.run(
        cmd, env=env | {"MLFLOW_TRACKING_URI": dead}, capture_output=True, text=True, timeout=300
    )
    assert mlflow_down.returncode != 0
    assert f"MLflow tracking server at {dead} is not answering" in mlflow_down.stdout + mlflow_down.stderr
    assert not (tmp_path / "mlruns" / "work").exists()  # nothing was computed


def test_compose_file_is_valid_and_its_variables_are_documented():
    compose_spec = pytest.importorskip("compose_spec")
    text = (ROOT / "docker" / "compose.yaml").read_text()
    stack = compose_spec.PyCompose.from_yaml(text)
    stack.validate()
    assert sorted(stack.service_names()) == ["mlflow", "postgres", "prefect-server", "worker"]
    import re

    used = set(re.findall(r"\$\{(\w+)", text))
    documented = {
        line.split("=")[0]
        for line in (ROOT / "docker" / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert used <= documented, used - documented
    for dockerfile in ("Dockerfile", "Dockerfile.cuda"):
        for line in (ROOT / "docker" / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), (dockerfile, src)
    assert json.loads(json.dumps(stack.to_dict()))["services"]["worker"]["environment"]["MLFLOW_TRACKING_URI"]


def _mlflow_server(store: str, artifacts: Path, port: int, log: Path) -> subprocess.Popen:
    """`mlflow server` in its own process group (its web workers go down with it)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            store,
            "--artifacts-destination",
            str(artifacts),
        ],
        stdout=open(log, "a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        proc.wait(30)


@pytest.mark.slow
def test_mlflow_server_lost_mid_stage_fails_the_run_keeps_checkpoints_and_the_rerun_resumes(tmp_path):
    port, store, art, log = free_port(), f"sqlite:///{tmp_path}/server.db", tmp_path / "art", tmp_path / "mlflow.log"
    uri = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "MLFLOW_TRACKING_URI": uri,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}",
    }
    cmd = [
        sys.executable,
        str(ROOT / "flows" / "pipeline.py"),
        "experiment=tiny",
        f"paths.root={tmp_path}",
        "~rl",
        "~ttc",
        "~compare",
        "trainer.progress_bar=false",
        "pretrain.max_steps=200",
        "pretrain.ckpt_every=20",
        "pretrain.eval_every=200",
        "pretrain.log_every=5",
    ]
    server = _mlflow_server(store, art, port, log)
    try:
        wait_http(f"{uri}/health", server, "mlflow server")
        first = subprocess.Popen(
            cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        work = tmp_path / "mlruns" / "work" / "pretrain"
        deadline = time.time() + 300
        while not list(work.glob("*/lightning/last.ckpt")):  # training is under way: take the server away
            assert first.poll() is None and time.time() < deadline, first.stdout.read()[-3000:]
            time.sleep(0.2)
        _stop(server)
        out = first.communicate(timeout=300)[0]
        assert first.returncode != 0
        assert f"MLflow tracking server at {uri} stopped answering while running `pretrain`" in out, out[-3000:]
        ckpts = list(work.glob("*/lightning/last.ckpt"))
        assert len(ckpts) == 1  # the checkpoint is kept
        pending = [json.loads(line) for line in (tmp_path / "mlruns" / "pending_run_status.jsonl").open()]
        assert [p["status"] for p in pending] == ["FAILED", "FAILED"]  # the stage's run, then the parent's

        server = _mlflow_server(store, art, port, log)  # the server is back: rerun the same command
        wait_http(f"{uri}/health", server, "mlflow server")
        second = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert f"pretrain: resuming from {ckpts[0]}" in second.stdout
        assert not (tmp_path / "mlruns" / "pending_run_status.jsonl").exists()

        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("thinkflow").experiment_id], order_by=["start_time"])
        status = {r.info.run_id: r.info.status for r in runs}
        assert {status[p["run_id"]] for p in pending} == {"FAILED"}  # marked once the server was back
        failed = next(r for r in runs if r.info.run_id == pending[0]["run_id"])
        resumed = next(r for r in runs if r.data.tags.get("stage") == "pretrain" and r.info.status == "FINISHED")
        lost_at = max(m.step for m in client.get_metric_history(failed.info.run_id, "train/loss"))
        steps = [m.step for m in client.get_metric_history(resumed.info.run_id, "train/loss")]
        # picked up where it was saved, not at step 0: the last periodic checkpoint, or the one the failing stage
        # wrote on its way out (up to one checkpoint interval past the last step the lost server received)
        assert 20 <= min(steps) <= lost_at + 20 + 5 and max(steps) >= 195
    finally:
        _stop(server)
