"""run_tests against real attacks, in real processes: each must end with reward 0, the right
violation, no effect on the host, no process left behind, and the next call still working.

The attacks that are safe to try run twice: with every layer this machine allows, and with
the audit hook alone (what a non-root run gets), so a hole in either shows up here.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thinkflow.envs import sandbox
from thinkflow.envs.sandbox import SandboxError, SandboxLimits, SandboxResult, run_tests

ROOT = Path(__file__).resolve().parents[2]
FAST = SandboxLimits(cpu_s=1, wall_s=3, memory_mb=256)
ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["add(1, 2) == 3", "add(-1, 1) == 0"]


def sandbox_processes() -> list[str]:
    """Command lines of live sandbox children of this checkout (zombies excluded: they hold nothing; other
    checkouts' pipelines running sandboxes on the same machine are none of these tests' business)."""
    child = sandbox._CHILD.encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if child in cmdline and state != "Z":
            found.append(cmdline.replace(b"\0", b" ").decode())
    return found


def assert_contained(result: SandboxResult, violation: str) -> None:
    assert result.violation == violation, result
    assert result.reward == 0.0
    assert violation in result.detail
    assert sandbox_processes() == []
    after = run_tests(ADD, ADD_TESTS, FAST)  # the rollout goes on
    assert after.reward == 1.0 and after.violation is None, after


@pytest.fixture(params=["all_layers", "hook_only"])
def layers(request, monkeypatch):
    """hook_only: no network namespace, no uid drop, no RLIMIT_NPROC, as for a non-root caller."""
    if request.param == "hook_only":
        monkeypatch.setattr(sandbox, "_plan", lambda: sandbox._Plan(libc=None, drop_uid=False, read_search=False))
    return request.param


@pytest.fixture
def server():
    """A real TCP listener on 127.0.0.1 that the sandboxed code tries to reach."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    yield listener
    listener.close()


def accepted_connection(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        return False
    conn.close()
    return True


# ---------------------------------------------------------------- scoring


def test_correct_solution_gets_full_reward():
    result = run_tests(ADD, ADD_TESTS, FAST)
    assert (result.passed, result.total, result.violation, result.failures) == (2, 2, None, [])
    assert result.reward == 1.0 and result.detail == "all 2 tests passed"
    assert 0 < result.seconds < FAST.wall_s


def test_partly_correct_solution_gets_its_share_and_names_failures():
    code = "def f(x):\n    return x * 2 if x < 3 else 0\n"
    result = run_tests(code, ["f(1) == 2", "f(2) == 4", "f(3) == 6", "f(4) == 8"], FAST)
    assert (result.passed, result.total, result.reward) == (2, 4, 0.5)
    assert result.failures == ["f(3) == 6: returned 0", "f(4) == 8: returned 0"]
    assert result.detail == "f(3) == 6: returned 0"


def test_exception_in_one_test_fails_it_and_the_others_still_run():
    code = "def f(x):\n    return 10 // x\n"
    result = run_tests(code, ["f(0) == 0", "f(5) == 2", "g(1)"], FAST)
    assert result.passed == 1 and result.violation is None
    assert result.failures[0] == "f(0) == 0: raised ZeroDivisionError: integer division or modulo by zero"
    assert result.failures[1].startswith("g(1): raised NameError")


def test_syntax_error_scores_zero_and_says_where():
    result = run_tests("def f(x):\n    return (x +\n", ["f(1) == 1"], FAST)
    assert result.reward == 0.0 and result.violation is None
    assert "SyntaxError" in result.detail and "line" in result.detail


def test_writing_inside_its_own_dir_is_allowed_and_stdout_comes_back():
    code = ADD + "open('scratch.txt', 'w').write('hi')\nprint(open('scratch.txt').read())\n"
    result = run_tests(code, ADD_TESTS, FAST)
    assert result.reward == 1.0, result
    assert result.stdout == "hi\n"


def test_work_dir_is_removed_afterwards():
    result = run_tests("import os\nprint(os.getcwd())", ["True"], FAST)
    work = Path(result.stdout.strip())
    assert work.name == "work" and not work.parent.exists()


def test_missing_report_is_a_violation_not_a_crash_of_the_caller():
    assert_contained(run_tests("import os\nos._exit(0)", ["True"], FAST), "no_report")


def test_garbage_written_to_the_report_fds_is_a_violation():
    # The code can find the inherited report/audit fds; scribbling on them must not pass for a clean run.
    code = "import os\nfor fd in range(3, 1024):\n    try:\n        os.write(fd, b'{junk')\n    except OSError:\n        pass\n"
    assert_contained(run_tests(code, ["True"], FAST), "tamper")


@pytest.mark.parametrize(
    ("tests", "limits", "field"),
    [
        ([], FAST, "tests"),
        (["f(1) == "], FAST, "tests[0]"),
        (["True"], SandboxLimits(cpu_s=-1), "cpu_s"),
        (["True"], SandboxLimits(wall_s=0), "wall_s"),
        (["True"], SandboxLimits(memory_mb=1.5), "memory_mb"),
    ],
)
def test_bad_arguments_raise_naming_the_field(tests, limits, field):
    with pytest.raises(SandboxError, match=field.replace("[", r"\[")):
        run_tests(ADD, tests, limits)


# ---------------------------------------------------------------- attacks


@pytest.mark.parametrize(
    ("code", "tests"),
    [("while True: pass", ["True"]), ("def f():\n    while True: pass\n", ["f() == 1"])],
    ids=["top_level", "inside_a_test"],
)
def test_busy_loop_ends_as_cpu_time(code, tests):
    assert_contained(run_tests(code, tests, FAST), "cpu_time")


def test_sleeping_ends_as_wall_time_within_the_limit():
    start = time.monotonic()
    result = run_tests("import time\ntime.sleep(100)", ["True"], FAST)
    assert time.monotonic() - start < FAST.wall_s + 2
    assert_contained(result, "wall_time")


def test_fork_bomb_ends_as_process_and_leaves_nothing(layers):
    # Hook-only has no RLIMIT_NPROC behind it, so there a single fork is tried, not a bomb.
    code = "import os\nwhile True:\n    os.fork()" if layers == "all_layers" else "import os\nos.fork()"
    assert_contained(run_tests(code, ["True"], FAST), "process")


def test_huge_allocation_ends_as_memory():
    assert_contained(run_tests("x = bytearray(10 * 2**30)", ["True"], FAST), "memory")


def test_writing_outside_its_dir_ends_as_filesystem(layers, tmp_path):
    tmp_path.chmod(0o777)  # so that uid nobody alone would not be what stops it
    target = tmp_path / "escape.txt"
    result = run_tests(f"open({str(target)!r}, 'w').write('escaped')", ["True"], FAST)
    assert_contained(result, "filesystem")
    assert not target.exists()


@pytest.mark.parametrize("path", ["/etc/passwd", str(ROOT / "pyproject.toml")], ids=["etc_passwd", "project_file"])
def test_reading_host_files_ends_as_filesystem(layers, path):
    result = run_tests(f"print(open({path!r}).read())", ["True"], FAST)
    assert_contained(result, "filesystem")
    assert result.stdout == ""


def test_connecting_to_localhost_ends_as_network(layers, server):
    port = server.getsockname()[1]
    code = f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))"
    assert_contained(run_tests(code, ["True"], FAST), "network")
    assert not accepted_connection(server)


@pytest.mark.parametrize("code", ["import ctypes", "__import__('_ctypes')"])
def test_ctypes_ends_as_forbidden_import(layers, code):
    assert_contained(run_tests(code, ["True"], FAST), "forbidden_import")


def test_printing_100_mb_ends_as_output_with_bounded_stdout():
    limits = SandboxLimits(cpu_s=2, wall_s=5, output_chars=500)
    result = run_tests("print('x' * 100_000_000)", ["True"], limits)
    assert_contained(result, "output")
    assert len(result.stdout) <= limits.output_chars


# ---------------------------------------------------------------- the OS layers on their own


@pytest.mark.skipif(not sandbox._plan().drop_uid, reason="uid drop, network namespace and RLIMIT_NPROC need root")
def test_os_layers_hold_without_the_audit_hook(tmp_path, server):
    """The child's preexec alone (no hook): uid nobody, no network, no fork, no root-owned writes."""
    host_file = tmp_path / "host.txt"
    host_file.write_text("host")
    host_file.chmod(0o644)
    port = server.getsockname()[1]
    script = f"""
import json, os, socket
out = {{"uid": os.getuid()}}
try:
    open({str(host_file)!r}, "a").write("changed")
except OSError as exc:
    out["write"] = exc.errno
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=1)
except OSError as exc:
    out["connect"] = exc.errno
try:
    if os.fork() == 0:
        os._exit(0)
except OSError as exc:
    out["fork"] = exc.errno
print(json.dumps(out))
"""
    preexec = functools.partial(sandbox._preexec, FAST, sandbox._plan())
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        cwd=tmp_path,
        preexec_fn=preexec,
        start_new_session=True,
        capture_output=True,
        text=True,
        timeout=10,
    )
    out = json.loads(proc.stdout)
    assert out["uid"] == 65534
    assert {"write", "connect", "fork"} <= out.keys(), out  # each raised OSError
    assert host_file.read_text() == "host"
    assert not accepted_connection(server)
