"""Run a stage on several processes: a launcher starts one worker per rank, each worker runs
the stage function, rank 0 writes the stage result. Started from the Prefect task as a
subprocess, so no launcher ever re-executes the flow itself.

- ``trainer.launcher=torchrun``: ``trainer.devices`` processes on this node.
- ``trainer.launcher=deepspeed``: DeepSpeed's own launcher (``deepspeed.launcher.runner``) starts
  ``trainer.devices`` processes on each of the first ``trainer.num_nodes`` hosts of
  ``trainer.hostfile``, through pdsh (passwordless ssh), MPI or SLURM. Every node needs the same
  code and Python at the same paths (one image) and the work dir on a shared filesystem: the
  launch spec, the result file and the checkpoints live there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from thinkflow import logs, shutdown
from thinkflow.config import ConfigError, TrainerConfig
from thinkflow.registry import StageResult
from thinkflow.tracking import write_json


class LaunchError(RuntimeError):
    """A multi-process stage failed; the message carries the tail of its output."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def root_cause(lines: list[str]) -> str:
    """The ranks' own exception line(s) (``[rank1]: ConfigError: ...``, ``node2: ValueError: ...`` under
    pdsh), not the launcher's wrapper."""
    pattern = re.compile(r"^([\w.-]+: )?(\[rank\d+\]: )?[\w.]+(Error|Exception): ")
    found = [line for line in lines if pattern.match(line) and "ChildFailedError" not in line]
    return "; ".join(dict.fromkeys(found)) or "no exception line in the output (killed?)"


def read_hostfile(path: str | Path, num_nodes: int, devices: int) -> list[str]:
    """The first ``num_nodes`` hosts of a DeepSpeed hostfile (``host slots=N`` per line, ``#`` comments),
    each checked to have at least ``devices`` slots."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"trainer.hostfile={path} does not exist (one 'host slots=N' line per node)")
    hosts: dict[str, int] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\S+)\s+slots=(\d+)", line)
        if not m:
            raise ConfigError(f"trainer.hostfile={path} line {n}: {raw.strip()!r} is not 'host slots=N'")
        if m[1] in hosts:
            raise ConfigError(f"trainer.hostfile={path} line {n}: host {m[1]!r} is listed twice")
        hosts[m[1]] = int(m[2])
    if len(hosts) < num_nodes:
        raise ConfigError(f"trainer.num_nodes={num_nodes} but trainer.hostfile={path} lists {len(hosts)} host(s)")
    chosen = list(hosts)[:num_nodes]
    short = [h for h in chosen if hosts[h] < devices]
    if short:
        raise ConfigError(
            f"trainer.devices={devices} processes per node, but {', '.join(short)} in {path} "
            f"has fewer slots ({', '.join(str(hosts[h]) for h in short)})"
        )
    return chosen


def check_hosts(hosts: list[str], tc: TrainerConfig, spec: Path) -> None:
    """pdsh only: every host answers over passwordless ssh (with the options pdsh will use) and sees this
    Python and the launch spec (the work dir is shared). Fails before any process starts."""
    if shutil.which("pdsh") is None:
        raise ConfigError("trainer.multinode_runner=pdsh but pdsh is not installed (apt-get install pdsh)")
    opts = shlex.split(os.environ.get("PDSH_SSH_ARGS_APPEND", "")) + (["-p", str(tc.ssh_port)] if tc.ssh_port else [])
    probe = f"test -x {shlex.quote(sys.executable)} && test -r {shlex.quote(str(spec))}"
    for host in hosts:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", *opts, host, probe]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if proc.returncode == 255:
            raise ConfigError(
                f"host {host} (trainer.hostfile) is not reachable over passwordless ssh: {proc.stderr.strip()[-300:]}; "
                "set up keys, or pass ssh options (key, port) in PDSH_SSH_ARGS_APPEND / trainer.ssh_port"
            )
        if proc.returncode != 0:
            raise ConfigError(
                f"host {host} does not see {sys.executable} and {spec}: every node needs the same Python at the "
                "same path and paths.work_dir on a filesystem shared by all nodes"
            )


def launcher_command(tc: TrainerConfig, spec: Path, result_path: Path) -> list[str]:
    """The command that starts every rank of the stage, each running ``thinkflow.distributed.worker``."""
    worker = ["thinkflow.distributed.worker", str(spec), str(result_path)]
    if tc.launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={tc.devices}",
            "--nnodes=1",
            "--master_addr=127.0.0.1",
            f"--master_port={tc.master_port or free_port()}",
            "-m",
            *worker,
        ]
    hostfile = Path(tc.hostfile).resolve() if tc.hostfile else None
    cmd = [
        sys.executable,
        "-u",
        "-m",
        "deepspeed.launcher.runner",
        f"--num_gpus={tc.devices}",
        f"--master_port={tc.master_port or free_port()}",
        "--no_local_rank",
        "--module",
    ]
    if hostfile is None:  # one node, no hostfile: DeepSpeed's local launch
        return [*cmd, "--master_addr=127.0.0.1", *worker]
    hosts = read_hostfile(hostfile, tc.num_nodes, tc.devices)
    cmd += [
        f"--hostfile={hostfile}",
        f"--num_nodes={tc.num_nodes}",
        f"--launcher={tc.multinode_runner}",
        f"--master_addr={tc.master_addr or hosts[0]}",
        "--no_ssh_check",
    ]
    if tc.ssh_port:
        cmd.append(f"--ssh_port={tc.ssh_port}")
    if tc.num_nodes > 1:
        cmd.append("--force_multi")
        if tc.multinode_runner == "pdsh":
            check_hosts(hosts, tc, spec)
    return [*cmd, *worker]


def launch(
    stage: str,
    config: dict,
    run_id: str,
    parent_run_id: str,
    upstream: dict[str, StageResult],
    tc: TrainerConfig,
    spool: Path,
) -> dict:
    """Run ``stage`` on ``tc.world_size`` processes (this node, or the hostfile's nodes); returns rank 0's
    stage result."""
    spool.mkdir(parents=True, exist_ok=True)
    spec = write_json(
        spool / "launch.json",
        {
            "stage": stage,
            "config": config,
            "run_id": run_id,
            "parent_run_id": parent_run_id,
            "upstream": {name: r.model_dump() for name, r in upstream.items()},
        },
    )
    result_path, log_path = spool / "result.json", spool / "launch.log"
    result_path.unlink(missing_ok=True)
    cmd = launcher_command(tc, spec, result_path)
    env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // tc.devices))}
    where = f"{tc.num_nodes} nodes x {tc.devices}" if tc.num_nodes > 1 else str(tc.devices)
    logs.get(stage).info("launching %s processes (%s); output in %s", where, tc.launcher, log_path)
    with open(log_path, "w") as log:
        # its own process group, so that a pipeline stop (SIGTERM / Ctrl-C, thinkflow.shutdown) reaches the
        # launcher and every rank it started, and nothing of the stage outlives the pipeline
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        procs = _StageProcesses(proc, tc, spec)
        with shutdown.on_stop(f"{stage} on {tc.world_size} processes", now=procs.term, last=procs.kill):
            try:
                for line in proc.stdout:  # echo rank output live (progress) and keep it on disk
                    sys.stdout.write(line)
                    log.write(line)
                rc = proc.wait()
            finally:
                if shutdown.requested():  # the launcher ended on a stop: nothing of the stage stays, on any node
                    procs.kill()
    if rc != 0 or not result_path.exists():
        lines = log_path.read_text(errors="replace").splitlines()
        raise LaunchError(
            f"{stage} on {tc.world_size} processes failed (exit code {rc}): {root_cause(lines)}\nlast output:\n"
            + "\n".join(lines[-40:])
        )
    return StageResult.model_validate_json(result_path.read_text())


class _StageProcesses:
    """What a launch started, for a pipeline stop (``thinkflow.shutdown``): the launcher's process group, every
    process the launcher started (torchrun puts each rank in a session of its own, out of the group's reach, and a
    rank whose launcher has died is no longer its descendant), and with pdsh the node agents and ranks on every
    host, which are children of that host's sshd."""

    def __init__(self, proc: subprocess.Popen, tc: TrainerConfig, spec: Path) -> None:
        self.proc, self.tc, self.spec = proc, tc, spec
        self.seen: list = []  # psutil.Process of each process the launcher started, as the stop found them
        pdsh = tc.hostfile and tc.num_nodes > 1 and tc.launcher == "deepspeed" and tc.multinode_runner == "pdsh"
        self.hosts = read_hostfile(tc.hostfile, tc.num_nodes, tc.devices) if pdsh else []

    def _find(self) -> None:
        import psutil

        with contextlib.suppress(psutil.Error):
            self.seen.extend(psutil.Process(self.proc.pid).children(recursive=True))

    def term(self) -> None:
        """At the stop request: SIGTERM to the launcher's group (a launcher passes it on to its ranks)."""
        self._find()
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.killpg(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        """After the grace period, or once the launcher has ended on a stop: SIGKILL to all of it."""
        import psutil

        self._find()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in self.seen:
            with contextlib.suppress(psutil.Error):  # gone (psutil also refuses a pid that was reused)
                p.kill()
        if self.hosts:
            kill_on_hosts(self.hosts, self.tc.ssh_port, cmdline_pattern(self.spec))


def cmdline_pattern(spec: Path) -> str:
    """A ``pkill -f`` pattern (POSIX extended regex) for the processes of one launch, whose command lines carry
    its spec path; it does not match itself, so the remote shell running the ``pkill`` survives it."""
    path = re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", str(spec.parent))
    return f"{path}/[l]aunch\\.json"


def kill_on_hosts(hosts: list[str], ssh_port: int | None, pattern: str) -> None:
    """SIGKILL, through pdsh, every process on ``hosts`` whose command line matches ``pattern``. DeepSpeed's
    launcher runs a ``pkill`` of its own on SIGTERM, but it matches any DeepSpeed node agent of this Python on the
    host (other jobs' too), and in tests/flows/test_multinode.py it left node agents and ranks running."""
    env = os.environ | {"PDSH_RCMD_TYPE": "ssh"}
    if ssh_port:
        env["PDSH_SSH_ARGS_APPEND"] = f"{env.get('PDSH_SSH_ARGS_APPEND', '')} -p {ssh_port}"
    cmd = ["pdsh", "-S", "-w", ",".join(hosts), f"pkill -KILL -f {shlex.quote(pattern)}"]
    try:  # pkill exits 1 where nothing matched: the status says nothing here
        subprocess.run(cmd, env=env, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        logs.get("stop").warning(
            "could not end the stage's processes on %s: %s: %s", ", ".join(hosts), type(err).__name__, err
        )
