"""run_tests against real attacks, in real processes: each must end with reward 0, the right
violation, no effect on the host, no process left behind, and the next call still working.

The attacks run three ways: with OS isolation (the default), with OS isolation after the program
has disabled the audit hook first (``BYPASS``: the hook lives in the program's own interpreter,
so the OS alone must hold), and with the audit hook alone (``isolation="hook"``, as a user who
opted into the weaker sandbox gets), so a hole in any of them shows up here.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from thinkflow.envs import isolation, sandbox
from thinkflow.envs.sandbox import SandboxError, SandboxLimits, SandboxResult, run_tests

ROOT = Path(__file__).resolve().parents[2]
FAST = SandboxLimits(cpu_s=1, wall_s=3, memory_mb=256)
ADD = "def add(a, b):\n    return a + b\n"
ADD_TESTS = ["add(1, 2) == 3", "add(-1, 1) == 0"]
# The published way past an in-process audit hook: find its closure through gc and swap its check.
BYPASS = """
import gc
for _o in gc.get_objects():
    if type(_o).__name__ == "function" and _o.__name__ == "hook" and "reason_for" in _o.__code__.co_freevars:
        _o.__closure__[_o.__code__.co_freevars.index("reason_for")].cell_contents = lambda event, args: None
"""
OS_ONLY = pytest.mark.skipif(sandbox.os_problem() is not None, reason=f"no OS isolation here: {sandbox.os_problem()}")


def sandbox_processes() -> list[str]:
    """Command lines of live sandbox children of this checkout (zombies excluded: they hold nothing; other
    checkouts' pipelines running sandboxes on the same machine are none of these tests' business)."""
    children = (sandbox._CHILD.encode(), isolation.CHILD.encode())
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if any(c in cmdline for c in children) and state != "Z":
            found.append(cmdline.replace(b"\0", b" ").decode())
    return found


def assert_contained(result: SandboxResult, violation: str) -> None:
    assert result.violation == violation, result
    assert result.reward == 0.0
    assert violation in result.detail
    assert sandbox_processes() == []
    after = run_tests(ADD, ADD_TESTS, FAST)  # the rollout goes on
    assert after.reward == 1.0 and after.violation is None, after


class Sandboxed:
    """run_tests in one of the three ways (see the module docstring)."""

    def __init__(self, way: str) -> None:
        self.way = way

    def __call__(self, code: str, tests: list[str] | None = None, limits: SandboxLimits = FAST) -> SandboxResult:
        prefix = BYPASS if self.way == "os_bypassed" else ""
        return run_tests(prefix + code, tests or ["True"], limits, "hook" if self.way == "hook" else "os")


@pytest.fixture(params=["os", "os_bypassed", "hook"])
def sandboxed(request, monkeypatch) -> Sandboxed:
    """hook: no namespaces, no uid drop, no RLIMIT_NPROC, as for a non-root caller who chose isolation=hook."""
    if request.param.startswith("os") and sandbox.os_problem():
        pytest.skip(f"no OS isolation here: {sandbox.os_problem()}")
    if request.param == "hook":
        monkeypatch.setattr(sandbox, "_plan", lambda: sandbox._Plan(libc=None, drop_uid=False, read_search=False))
    return Sandboxed(request.param)


@pytest.fixture
def host_secret(monkeypatch) -> Path:
    """A root-only file outside /tmp (the sandbox has a /tmp of its own), and an API key in this process's
    environment: what a program that broke out would be after."""
    folder = Path(tempfile.mkdtemp(prefix="thinkflow-secret-", dir="/var/tmp"))
    secret = folder / "key.txt"
    secret.write_text("s3cr3t-host-file")
    secret.chmod(0o600)
    folder.chmod(0o700)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-s3cr3t-parent-env")
    yield secret
    shutil.rmtree(folder)


@pytest.fixture
def host_dir() -> Path:
    """A world-writable host folder outside /tmp, so that only the sandbox stops a write there."""
    folder = Path(tempfile.mkdtemp(prefix="thinkflow-target-", dir="/var/tmp"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


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


def test_fork_bomb_ends_as_process_and_leaves_nothing(sandboxed):
    # Hook-only has no RLIMIT_NPROC behind it, so there a single fork is tried, not a bomb.
    code = "import os\nos.fork()" if sandboxed.way == "hook" else "import os\nwhile True:\n    os.fork()"
    assert_contained(sandboxed(code), "process")


@pytest.mark.parametrize("way", ["os", "os_bypassed"])
def test_huge_allocation_ends_as_memory(way):
    assert_contained(Sandboxed(way)("x = bytearray(10 * 2**30)"), "memory")


def test_the_bypass_really_disables_the_hook():
    """Without this the bypassed runs below would prove nothing: creating a socket is one of the hook's events."""
    if sandbox.os_problem():
        pytest.skip(sandbox.os_problem())
    assert run_tests("import socket\nsocket.socket()", ["True"], FAST).violation == "network"
    result = run_tests(BYPASS + "import socket\nsocket.socket()", ["True"], FAST)
    assert result.violation is None and result.reward == 1.0, result


def test_writing_outside_its_dir_ends_as_filesystem(sandboxed, host_dir):
    target = host_dir / "escape.txt"
    assert_contained(sandboxed(f"open({str(target)!r}, 'w').write('escaped')"), "filesystem")
    assert list(host_dir.iterdir()) == []


def test_writing_to_its_private_tmp_works_and_stays_private():
    if sandbox.os_problem():
        pytest.skip(sandbox.os_problem())
    name = f"thinkflow-private-{os.getpid()}.txt"
    code = f"import tempfile\nopen('/tmp/{name}', 'w').write('x')\nprint(tempfile.gettempdir())"
    result = run_tests(code, [f"open('/tmp/{name}').read() == 'x'"], FAST)
    assert result.reward == 1.0 and result.stdout == "/tmp\n", result
    assert not Path("/tmp", name).exists()


# The hook sees no mknod(2) at all: only the OS layers stop these (the weaker sandbox's documented gap).
@pytest.mark.parametrize("sandboxed", ["os", "os_bypassed"], indirect=True)
@pytest.mark.parametrize(
    "attack",
    [
        "import os\nos.mkfifo({target!r})",
        "import os, stat\nos.mknod({target!r}, stat.S_IFREG | 0o644)",
        "import os\nos.mkfifo('/tmp/fifo')",
    ],
    ids=["mkfifo_host", "mknod_host", "mkfifo_private_tmp"],
)
def test_making_nodes_ends_as_syscall(sandboxed, host_dir, attack):
    assert_contained(sandboxed(attack.format(target=str(host_dir / "node"))), "syscall")
    assert list(host_dir.iterdir()) == []


@pytest.mark.parametrize(
    "attack",
    [
        "import os\nos.symlink({secret!r}, 'link')\nprint(open('link').read())",
        "import os\nos.link({secret!r}, 'hard')\nprint(open('hard').read())",
        "import os\nos.symlink({target!r}, 'out')\nopen('out', 'w').write('escaped')",
    ],
    ids=["symlink_read", "hardlink_read", "symlink_write"],
)
def test_link_tricks_end_as_filesystem(sandboxed, host_secret, host_dir, attack):
    result = sandboxed(attack.format(secret=str(host_secret), target=str(host_dir / "escape.txt")))
    assert_contained(result, "filesystem")
    assert "s3cr3t" not in result.stdout + result.detail
    assert list(host_dir.iterdir()) == []


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "/etc/shadow", str(ROOT / "pyproject.toml"), "SECRET", "/proc/PPID/environ"],
    ids=["etc_passwd", "etc_shadow", "project_file", "root_only_file", "parent_environ"],
)
def test_reading_host_files_ends_as_filesystem(sandboxed, host_secret, path):
    path = path.replace("SECRET", str(host_secret))
    code = "import os\n" + f"print(open({path!r}.replace('PPID', str(os.getppid())), 'rb').read())"
    result = sandboxed(code)
    if sandboxed.way.startswith("os") and Path(path).is_relative_to("/tmp"):
        # a checkout under /tmp: the sandbox's /tmp is a private, empty tmpfs, so the host file is simply not
        # in it (reading it fails; nothing outside the sandbox was touched, so there is no violation to report)
        assert result.reward == 0.0 and result.violation is None and "FileNotFoundError" in result.detail
    else:
        assert_contained(result, "filesystem")
    assert result.stdout == "" and "s3cr3t" not in result.detail


def test_exec_of_a_host_binary_ends_as_process_or_syscall(sandboxed, host_secret):
    result = sandboxed(f"import os\nos.execv('/bin/cat', ['cat', {str(host_secret)!r}])")
    assert_contained(result, "syscall" if sandboxed.way == "os_bypassed" else "process")
    assert "s3cr3t" not in result.stdout


def test_the_environment_holds_no_secret_of_the_parent(host_secret):
    if sandbox.os_problem():
        pytest.skip(sandbox.os_problem())
    result = run_tests("import os\nprint(dict(os.environ))", ["True"], FAST)
    assert result.reward == 1.0 and "s3cr3t" not in result.stdout and "PATH" in result.stdout


def test_connecting_to_localhost_ends_as_network(sandboxed, server):
    port = server.getsockname()[1]
    code = f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))"
    assert_contained(sandboxed(code), "network")
    assert not accepted_connection(server)


# With the hook disabled ctypes loads: test_ctypes_past_the_hook_meets_seccomp covers what it can do then.
@pytest.mark.parametrize("sandboxed", ["os", "hook"], indirect=True)
@pytest.mark.parametrize("code", ["import ctypes", "__import__('_ctypes')"])
def test_ctypes_ends_as_forbidden_import(sandboxed, code):
    assert_contained(sandboxed(code), "forbidden_import")


@pytest.mark.parametrize(
    "call",
    [
        f"libc.unshare({isolation.CLONE_NEWUSER})",  # a user namespace would hand back capabilities
        "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)",
        "libc.ptrace(16, os.getppid(), 0, 0)",  # PTRACE_ATTACH to the parent
        "libc.chroot(b'/tmp')",
    ],
    ids=["unshare", "mount", "ptrace", "chroot"],
)
def test_ctypes_past_the_hook_meets_seccomp(call):
    if sandbox.os_problem():
        pytest.skip(sandbox.os_problem())
    code = BYPASS + f"import ctypes, os\nlibc = ctypes.CDLL(None)\nprint({call})"
    assert_contained(run_tests(code, ["True"], FAST), "syscall")


def test_code_runs_as_a_uid_of_its_own_with_no_capabilities():
    if sandbox.os_problem():
        pytest.skip(sandbox.os_problem())
    code = BYPASS + (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "data = (ctypes.c_uint32 * 6)()\nheader = (ctypes.c_uint32 * 2)(0x20080522, 0)\n"
        "assert libc.capget(header, data) == 0\ncaps = list(data)\n"
        "bounding = [c for c in range(41) if libc.prctl(23, c, 0, 0, 0) == 1]\n"  # PR_CAPBSET_READ
        "nnp = libc.prctl(39, 0, 0, 0, 0)\nuid = os.getresuid()\n"
    )
    tests = ["caps == [0] * 6", "bounding == []", "nnp == 1", "uid[0] == uid[1] == uid[2] >= 1000", "uid[0] != 65534"]
    result = run_tests(code, tests, FAST)
    assert result.reward == 1.0, result
    first, second = (run_tests(code + "print(uid[0])", ["True"], FAST).stdout for _ in range(2))
    assert first.strip().isdigit() and first != second  # nothing else runs as a run's uid, not even another run


def test_without_os_isolation_model_code_is_refused_unless_the_user_opts_into_the_hook():
    """A real root process without CAP_SYS_ADMIN (a container without privileges, in effect): run_tests and
    the code task's pre-compute check refuse, saying why and how to opt in; isolation=hook still runs."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop a capability from a root process")
    script = """
from thinkflow.envs.code import CodeTask
from thinkflow.envs.sandbox import SandboxUnavailable, run_tests
from thinkflow.tasks.base import TaskError
try:
    run_tests("def f(x):\\n    return x", ["f(1) == 1"])
    print("RAN")
except SandboxUnavailable as err:
    print("REFUSED:", err)
try:
    CodeTask(5, isolation="os").check()
    print("CHECKED")
except TaskError as err:
    print("TASK REFUSED:", err)
CodeTask(5, isolation="hook").check()
print("HOOK:", run_tests("def f(x):\\n    return x", ["f(1) == 1"], isolation="hook").reward)
"""
    drop = functools.partial(isolation._libc().prctl, isolation.PR_CAPBSET_DROP, isolation.CAP_SYS_ADMIN, 0, 0, 0)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, preexec_fn=drop, capture_output=True, text=True, timeout=120
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RAN" not in out and "CHECKED" not in out
    for line in ("REFUSED:", "TASK REFUSED:"):
        said = next(row for row in out.splitlines() if row.startswith(line))
        assert "CAP_SYS_ADMIN" in said and "task.env.sandbox.isolation=hook" in said
    assert "isolation=hook (task.env.sandbox.isolation)" in out and "HOOK: 1.0" in out


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
