"""Process identity that survives pid reuse, and the watchdog that ends a helper (the temporary Prefect server)
once the process that started it is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from tests.conftest import ROOT
from thinkflow import liveness


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_is_gone_tells_a_live_process_from_an_ended_one_or_a_reused_pid():
    me = liveness.this_process()
    assert liveness.is_gone(me) is False
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    assert liveness.is_gone(me | {"pid": str(ended.pid)}) is True
    assert liveness.is_gone(me | {"started": str(float(me["started"]) - 3600)}) is True  # the pid now names another
    assert liveness.is_gone(me | {"host": "another-host", "pid": str(ended.pid)}) is None  # cannot know from here
    assert liveness.is_gone(me | {"pid_ns": "pid:[1]", "pid": str(ended.pid)}) is None  # another container


OWNER = """
import subprocess, sys, time
from thinkflow import liveness
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
watchdog = liveness.guard_child(child.pid)
print(child.pid, watchdog.pid, flush=True)
time.sleep(120)
"""


def test_the_watchdog_ends_the_child_once_its_owner_is_killed_and_exits_with_a_child_that_ends_first():
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    owner = subprocess.Popen([sys.executable, "-c", OWNER], env=env, stdout=subprocess.PIPE, text=True)
    child, watchdog = (int(x) for x in owner.stdout.readline().split())
    try:
        time.sleep(0.5)
        assert not _gone(child) and not _gone(watchdog)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        deadline = time.time() + 10
        while not (_gone(child) and _gone(watchdog)) and time.time() < deadline:
            time.sleep(0.1)
        assert _gone(child) and _gone(watchdog)
    finally:
        for pid in (owner.pid, child):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    watchdog = liveness.guard_child(child.pid)
    child.wait()
    assert watchdog.wait(timeout=5) == 0  # nothing left to guard
