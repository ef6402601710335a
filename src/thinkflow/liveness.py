"""Which process owns what, and what happens to it when that process dies without cleaning up (``kill -9``,
OOM killer, a lost container).

- ``this_process()``: host, pid, pid namespace and start time, recorded on MLflow runs and stage locks; the
  start time tells a reused pid apart from the process that held it (``is_gone``).
- ``guard_child(pid)``: a watchdog process that ends a helper this process started (the temporary Prefect
  server) once this process is gone. Run as ``python -I liveness.py OWNER_PID CHILD_PID``; it notices the
  owner's death by being re-parented, so it works whichever thread started the helper (``PR_SET_PDEATHSIG``
  fires when the *thread* that forked exits, and Prefect may start its server from a worker thread).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys

START_TIME_SLACK_S = 2.0  # /proc/stat's boot time can shift by a second; a pid is not reused that fast


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")  # e.g. "pid:[4026531836]": containers sharing a hostname differ
    except OSError:
        return ""


def this_process() -> dict[str, str]:
    """This process as recorded on runs and locks: ``host``, ``pid``, ``pid_ns``, ``started`` (epoch s)."""
    import psutil

    started = f"{psutil.Process().create_time():.2f}"
    return {"host": socket.gethostname(), "pid": str(os.getpid()), "pid_ns": _pid_namespace(), "started": started}


def is_gone(owner: dict[str, str]) -> bool | None:
    """Whether the process ``this_process()`` described has ended: None when it cannot be known here (another
    host or pid namespace, or an incomplete record)."""
    import psutil

    if owner.get("host") != socket.gethostname() or owner.get("pid_ns", "") != _pid_namespace():
        return None
    try:
        pid, started = int(owner["pid"]), float(owner["started"])
    except (KeyError, ValueError):
        return None
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - started) > START_TIME_SLACK_S or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False  # it exists


def guard_child(child_pid: int) -> subprocess.Popen:
    """Start a watchdog that ends ``child_pid`` (SIGTERM, SIGKILL after 3 s) once this process is gone; it exits
    by itself when the child ends first. Clean environment, no inherited output: it is invisible to the user."""
    return subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), str(child_pid)],
        env={},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def _watch(owner_pid: int, child_pid: int, poll_s: float = 0.5, grace_s: float = 3.0) -> None:
    """The watchdog's loop (in its own process, stdlib only)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is the owner's to handle
    try:
        child = os.pidfd_open(child_pid)  # race-free: the pid cannot be reused while we hold this
    except ProcessLookupError:
        return
    while os.getppid() == owner_pid:  # re-parented: the owner is gone
        if select.select([child], [], [], poll_s)[0]:
            return  # the child ended first (the owner stopped it)
    try:
        signal.pidfd_send_signal(child, signal.SIGTERM)
        if not select.select([child], [], [], grace_s)[0]:
            signal.pidfd_send_signal(child, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it ended meanwhile


if __name__ == "__main__":
    _watch(int(sys.argv[1]), int(sys.argv[2]))
