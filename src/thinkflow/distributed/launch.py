"""Run a stage on several processes: torchrun starts one worker per rank, each worker runs
the stage function, rank 0 writes the stage result. Started from the Prefect task as a
subprocess, so no launcher ever re-executes the flow itself."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from thinkflow.tracking import write_json


class LaunchError(RuntimeError):
    """A multi-process stage failed; the message carries the tail of its output."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def root_cause(lines: list[str]) -> str:
    """The ranks' own exception line(s) (``[rank1]: ConfigError: ...``), not torchrun's wrapper."""
    pattern = re.compile(r"^(\[rank\d+\]: )?[\w.]+(Error|Exception): ")
    found = [line for line in lines if pattern.match(line) and "ChildFailedError" not in line]
    return "; ".join(dict.fromkeys(found)) or "no exception line in the output (killed?)"


def launch(stage: str, config: dict, run_id: str, parent_run_id: str, upstream: dict, nproc: int, spool: Path) -> dict:
    """Run ``stage`` on ``nproc`` local processes; returns rank 0's stage result."""
    spool.mkdir(parents=True, exist_ok=True)
    spec = write_json(
        spool / "launch.json",
        {"stage": stage, "config": config, "run_id": run_id, "parent_run_id": parent_run_id, "upstream": upstream},
    )
    result_path, log_path = spool / "result.json", spool / "launch.log"
    result_path.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}",
        "-m", "thinkflow.distributed.worker", str(spec), str(result_path),
    ]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    print(f"{stage}: launching {nproc} processes (torchrun); output in {log_path}")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:  # echo rank output live (progress) and keep it on disk
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    if rc != 0 or not result_path.exists():
        lines = log_path.read_text(errors="replace").splitlines()
        raise LaunchError(
            f"{stage} on {nproc} processes failed (exit code {rc}): {root_cause(lines)}\nlast output:\n"
            + "\n".join(lines[-40:])
        )
    return json.loads(result_path.read_text())
