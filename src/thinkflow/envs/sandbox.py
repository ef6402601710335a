"""Run untrusted Python (a model's proposed solution) against unit tests, for code environments.

``run_tests(code, tests, limits, isolation)`` executes ``code`` in a fresh process, evaluates each
test expression (``"f(2) == 7"``) in the same namespace and returns how many were truthy; the RL
reward is ``passed / total``, or 0 when the run broke a rule (``SandboxResult.violation``).
Nothing the candidate code does makes ``run_tests`` raise; bad arguments raise ``SandboxError``, and
a machine that cannot give the requested isolation raises ``SandboxUnavailable`` before any code runs.

The boundary is the operating system (``isolation="os"``, the default; ``envs.isolation``):

1. **Process.** ``python -I -S -B`` (no site-packages, no environment, no bytecode writes) in its own
   session and process group, a minimal environment (no secrets of the parent), stdin consumed. The
   parent enforces the wall-clock limit and then kills the whole process group.
2. **Resource limits** (``setrlimit`` before exec): CPU seconds (SIGXCPU), address space
   (``MemoryError``), file size (any file, stdout/stderr included: printing 100 MB ends as violation
   "output" with at most ``file_mb`` on disk), open files, processes (per uid), no core dumps.
3. **Namespaces and a root of its own**: mount, network (empty: no route even to 127.0.0.1), IPC and
   UTS namespaces; a new root holding only the interpreter, the stdlib and their shared libraries
   (read-only), ``/sandbox/work`` and a private ``/tmp`` (small tmpfs mounts, gone with the process),
   four ``/dev`` nodes. No ``/proc``, no ``/etc``, nothing else of the host to read, write or exec.
4. **No privileges**: every capability dropped (bounding, ambient, permitted, effective,
   inheritable), a uid no other process has, ``no_new_privs``.
5. **seccomp**: ``mknod``, ``ptrace``, ``mount``, ``unshare``, ``setns``, ``bpf``, ``keyctl`` and
   friends kill the process (violation "syscall"); once the runner is up, so does ``execve``.
6. **An audit hook** (PEP 578, ``_sandbox_child.py``): a tripwire that names what a program tried
   (file access outside its dirs, sockets, processes, ``ctypes``) and refuses it early. It lives in
   the candidate's interpreter and can be disabled from there; layers 1-5 do not depend on it. When
   the OS refuses something the hook did not stop, the runner reports that as the violation.

``isolation="hook"`` is the weaker sandbox for machines without root: layers 1, 2 and 6 (as root
also a network namespace and uid ``nobody``, keeping ``CAP_DAC_READ_SEARCH`` when ``nobody`` cannot
reach the interpreter). It is never chosen silently: the caller asks for it
(``task.env.sandbox.isolation=hook``, logged with the run's params).

What this does NOT promise: the test report is produced inside the candidate's process, so a
program can forge it (write to the report's file descriptor, disable the hook and rewrite the
runner's state) or game the tests (an object whose ``__eq__`` is always true). The sandbox keeps the
host safe; it does not make the reward unhackable. ``total`` always comes from the parent.

Practical consequences: only the stdlib is importable (``-S``); ``max_processes=1`` also rules out
threads (``RLIMIT_NPROC`` counts them), and ``max_processes > 1`` lets the hook allow ``os.fork``
(never exec). ``tempfile`` points at the private ``/tmp``, ``~`` at the work dir.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass

from thinkflow.envs import isolation as os_isolation

_CHILD = os_isolation.CHILD_HOST
ISOLATION_MODES = ("os", "hook")
_NOBODY = 65534
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C"}  # plus TMPDIR/HOME = the work dir
_MAX_OPEN_FILES = 64
_REPORT_MAX_BYTES = 4 << 20
_EVENTS_MAX_BYTES = 4096
_STDERR_TAIL = 500
_HOOK_REASONS = frozenset({"filesystem", "network", "process", "forbidden_import", "tamper"})  # _sandbox_child
_DISK_MB_PER_FILE_MB = 16  # /sandbox/work and /tmp (tmpfs, OS isolation): room for several files at the limit
# Linux constants (linux/sched.h, linux/prctl.h, linux/capability.h).
_CLONE_NEWNET = 0x40000000
_PR_SET_KEEPCAPS = 8
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 47, 2
_CAP_CHOWN, _CAP_DAC_READ_SEARCH, _CAP_SETGID, _CAP_SETUID, _CAP_SYS_ADMIN = 0, 2, 6, 7, 21


@dataclass(frozen=True)
class SandboxLimits:
    cpu_s: float = 2.0  # RLIMIT_CPU (rounded up to whole seconds)
    wall_s: float = 5.0  # parent-side wall timeout; the whole process group is killed
    memory_mb: int = 512  # RLIMIT_AS
    file_mb: float = 1.0  # RLIMIT_FSIZE: any file written, stdout/stderr files included
    max_processes: int = 1  # no fork/spawn beyond the sandbox process itself
    output_chars: int = 2000  # how much stdout text is returned in the result


@dataclass
class SandboxResult:
    passed: int
    total: int
    violation: str | None  # None, or "cpu_time", "wall_time", "memory", "output", "file_size",
    # "process", "network", "filesystem", "forbidden_import", "tamper", "syscall", "crash", "no_report"
    detail: str  # the violation, the code's error, or the first failing test
    failures: list[str]  # one per failed test: "f(2) == 7: returned 6", "f(0): raised ..."
    stdout: str  # the code's stdout, truncated to output_chars
    seconds: float  # wall seconds

    @property
    def reward(self) -> float:
        if self.violation is not None or self.total == 0:
            return 0.0
        return self.passed / self.total


class SandboxError(ValueError):
    """Bad arguments to run_tests (never raised for anything the candidate code does)."""


class SandboxUnavailable(RuntimeError):
    """``isolation="os"`` asked for, and this machine cannot give it: no model code is run."""


def run_tests(
    code: str, tests: list[str], limits: SandboxLimits = SandboxLimits(), isolation: str = "os"
) -> SandboxResult:
    """Run ``code``, then each test expression in its namespace; see the module docstring.
    ``isolation="os"`` (the default) refuses to run anything where the OS boundary cannot be had."""
    _validate(code, tests, limits)
    require(isolation)
    return _execute(code, list(tests), limits, isolation)


def require(isolation: str) -> None:
    """Raise ``SandboxUnavailable`` (saying why and what to do) unless ``isolation`` can be had here."""
    if isolation not in ISOLATION_MODES:
        raise SandboxError(f"isolation must be one of {ISOLATION_MODES}, got {isolation!r}")
    why = os_problem() if isolation == "os" else None
    if why:
        raise SandboxUnavailable(
            f"the code sandbox cannot isolate programs at the OS level here: {why}. Model code is not run "
            "without it. Run as root on Linux, or accept the weaker sandbox (resource limits and an in-process "
            "audit hook, which a hostile program can disable) with task.env.sandbox.isolation=hook; that "
            "setting is logged on the run."
        )


@functools.cache
def os_problem() -> str | None:
    """None when this machine gives the OS boundary, else why not (one sentence): ``isolation.setup_problem()``,
    then one program run inside the boundary that must see what it should (the first run also surfaces what a
    kernel or container refuses: no unshare, no pivot_root, ...)."""
    why = os_isolation.setup_problem()
    if why:
        return why
    code = "import os\nuid = os.getuid()\n"
    hidden = "not any(os.path.exists(p) for p in ('/proc/self', '/etc', '/home', '/root/.ssh'))"
    work = os_isolation.WORK
    tests = ["uid >= 1000", f"os.getcwd() == {work!r}", "os.path.isdir('/tmp') and os.path.exists('/dev/null')", hidden]
    try:
        result = _execute(code, tests, SandboxLimits(cpu_s=5, wall_s=20), "os")
    except RuntimeError as err:
        return f"setting up the OS boundary failed: {err}"
    if result.reward != 1.0:
        return f"a probe program inside the OS boundary did not see what it should: {result.detail}"
    return None


def _execute(code: str, tests: list[str], limits: SandboxLimits, isolation: str) -> SandboxResult:
    root = tempfile.mkdtemp(prefix="thinkflow-sandbox-")
    try:
        return _run_in(root, code, tests, limits, isolation)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _validate(code: str, tests: list[str], limits: SandboxLimits) -> None:
    if not isinstance(code, str):
        raise SandboxError(f"code must be a str, got {type(code).__name__}")
    if isinstance(tests, str) or not tests:
        raise SandboxError("tests must be a non-empty list of expression strings")
    for i, test in enumerate(tests):
        if not isinstance(test, str):
            raise SandboxError(f"tests[{i}] must be a str, got {type(test).__name__}")
        try:
            compile(test, f"<tests[{i}]>", "eval")  # compiling runs nothing
        except (SyntaxError, ValueError) as exc:
            raise SandboxError(f"tests[{i}] is not a valid expression: {test!r} ({exc})") from None
    for name, value in vars(limits).items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise SandboxError(f"SandboxLimits.{name} must be a positive number, got {value!r}")
    for name in ("memory_mb", "max_processes", "output_chars"):
        if not isinstance(getattr(limits, name), int):
            raise SandboxError(f"SandboxLimits.{name} must be an int, got {getattr(limits, name)!r}")


# ---------------------------------------------------------------- privileges (decided once)


@dataclass(frozen=True)
class _Plan:
    """What the OS can do for us here: decided once per process, applied in each child."""

    libc: ctypes.CDLL | None  # for unshare/prctl/capset (root only)
    drop_uid: bool  # run as nobody
    read_search: bool  # ...keeping CAP_DAC_READ_SEARCH, because nobody cannot reach the interpreter
    cap_header: object = None  # prebuilt capset arguments: the forked child should not build them
    cap_data: object = None


@functools.cache
def _plan() -> _Plan:
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return _Plan(libc=None, drop_uid=False, read_search=False)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        libc = None
    caps = os_isolation.effective_caps()
    if not all(caps >> cap & 1 for cap in (_CAP_CHOWN, _CAP_SETGID, _CAP_SETUID)):
        return _Plan(libc=libc, drop_uid=False, read_search=False)
    if all(_others_can_use(path) for path in _interpreter_files()):
        return _Plan(libc=libc, drop_uid=True, read_search=False)
    if libc is None or not caps >> _CAP_DAC_READ_SEARCH & 1:
        return _Plan(libc=libc, drop_uid=False, read_search=False)  # nobody could not start Python at all
    data = (os_isolation.CapData * 2)()
    data[0].effective = data[0].permitted = data[0].inheritable = 1 << _CAP_DAC_READ_SEARCH
    return _Plan(
        libc=libc,
        drop_uid=True,
        read_search=True,
        cap_header=os_isolation.CapHeader(os_isolation.CAP_VERSION_3, 0),
        cap_data=data,
    )


def _interpreter_files() -> list[str]:
    """What uid nobody must be able to open to run the child: interpreter, stdlib, runner."""
    files = [sys.executable, os.path.dirname(os.__file__), _CHILD]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        files.append(
            os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("LDLIBRARY") or "")
        )
    return files


def _others_can_use(path: str) -> bool:
    """o+x on every directory on the way (symlinked or resolved), o+r on the target."""
    real = os.path.realpath(path)
    dirs = {*_parents(os.path.abspath(path)), *_parents(real)}
    try:
        return bool(os.stat(real).st_mode & stat.S_IROTH) and all(os.stat(d).st_mode & stat.S_IXOTH for d in dirs)
    except OSError:
        return False


def _parents(path: str) -> list[str]:
    parents = []
    while (parent := os.path.dirname(path)) != path:
        parents.append(parent)
        path = parent
    return parents


def _preexec(limits: SandboxLimits, plan: _Plan) -> None:
    """In the forked child, after setsid and before exec: our code, not the candidate's."""
    _set_limits(limits)
    if plan.libc is not None:
        # Failure (no CAP_SYS_ADMIN, a seccomp profile) leaves the audit hook as the network layer.
        plan.libc.unshare(_CLONE_NEWNET)
    if plan.drop_uid:
        _become_nobody(plan)
        # After setuid: the count is nobody's processes, and exec is not checked against it.
        _lower_limit(resource.RLIMIT_NPROC, limits.max_processes)


def _set_limits(limits: SandboxLimits) -> None:
    cpu = max(1, math.ceil(limits.cpu_s))
    _lower_limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # soft: SIGXCPU; hard: SIGKILL if that is ignored
    _lower_limit(resource.RLIMIT_AS, limits.memory_mb << 20)
    _lower_limit(resource.RLIMIT_FSIZE, _file_limit_bytes(limits))
    _lower_limit(resource.RLIMIT_NOFILE, _MAX_OPEN_FILES)
    _lower_limit(resource.RLIMIT_CORE, 0)


def _lower_limit(which: int, soft: int, hard: int | None = None) -> None:
    """setrlimit without ever asking above the current hard limit (that would need privileges)."""
    current = resource.getrlimit(which)[1]
    hard = soft if hard is None else hard
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


def _become_nobody(plan: _Plan) -> None:
    libc = plan.libc
    if plan.read_search:
        _check_libc(libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    os.setgroups([])
    os.setgid(_NOBODY)
    os.setuid(_NOBODY)
    if plan.read_search:
        _check_libc(libc.capset(ctypes.byref(plan.cap_header), plan.cap_data), "capset")
        # Ambient: the capability survives exec of the (non-setuid) interpreter.
        _check_libc(libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _CAP_DAC_READ_SEARCH, 0, 0), "ambient cap")
    if libc is not None:
        _check_libc(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _check_libc(rc: int, what: str) -> None:
    if rc != 0:
        raise OSError(ctypes.get_errno(), f"{what} failed")


def _file_limit_bytes(limits: SandboxLimits) -> int:
    return max(1, int(limits.file_mb * (1 << 20)))


# ---------------------------------------------------------------- one run


def _run_in(root: str, code: str, tests: list[str], limits: SandboxLimits, isolation: str) -> SandboxResult:
    names = ("stdout", "stderr", "result", "events")
    fds = {
        name: os.open(os.path.join(root, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        for name in names
    }
    start = time.monotonic()
    try:
        job = {"code": code, "tests": tests, "result_fd": fds["result"], "events_fd": fds["events"]}
        job["allow_fork"] = limits.max_processes > 1
        launch = _os_launch(root, limits) if isolation == "os" else _hook_launch(root, limits, _plan())
        job["write_roots"] = launch.write_roots
        job["exec_filter"] = os_isolation.exec_filter().hex() if isolation == "os" else None
        proc = _start(launch, job, fds, root)
    finally:
        for fd in fds.values():
            os.close(fd)
    timed_out, returncode, cpu_used = _wait(proc, limits.wall_s)
    seconds = time.monotonic() - start
    return _result(root, len(tests), limits, timed_out, returncode, cpu_used, seconds)


@dataclass(frozen=True)
class _Launch:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    preexec: functools.partial
    write_roots: list[str]  # beside the cwd, where the hook lets the program write


def _os_launch(root: str, limits: SandboxLimits) -> _Launch:
    """Namespaces, a new root, no capabilities, a uid of its own, seccomp (``envs.isolation``)."""
    new_root = os.path.join(root, "fs")
    os.mkdir(new_root, 0o700)
    disk_mb = max(4, math.ceil(limits.file_mb * _DISK_MB_PER_FILE_MB))
    boundary = os_isolation.boundary(new_root, disk_mb, limits.max_processes)
    argv = [boundary.layout.python, "-I", "-S", "-B", os_isolation.CHILD]
    env = {**_ENV, "TMPDIR": os_isolation.TMP, "HOME": os_isolation.WORK}
    preexec = functools.partial(_preexec_os, limits, boundary)
    return _Launch(argv, root, env, preexec, [os_isolation.TMP])


def _hook_launch(root: str, limits: SandboxLimits, plan: _Plan) -> _Launch:
    """The weaker sandbox (``isolation="hook"``): whatever of layer 3 the process may do, and the hook."""
    work = os.path.join(root, "work")
    os.mkdir(work, 0o700)
    if plan.drop_uid:
        os.chown(work, _NOBODY, _NOBODY)
        os.chmod(root, 0o711)  # nobody may pass through root to its work dir, not list or write it
    env = {**_ENV, "TMPDIR": work, "HOME": work}  # tempfile and ~ land in the work dir
    preexec = functools.partial(_preexec, limits, plan)
    return _Launch([sys.executable, "-I", "-S", "-B", _CHILD], work, env, preexec, [])


def _preexec_os(limits: SandboxLimits, boundary: os_isolation.Boundary) -> None:
    _set_limits(limits)
    os_isolation.enter(boundary)


def _start(launch: _Launch, job: dict, fds: dict[str, int], root: str) -> subprocess.Popen:
    # The job goes in through an unnamed temp file as stdin: no pipe to deadlock on, no path to read back.
    with tempfile.TemporaryFile() as stdin:
        stdin.write(json.dumps(job).encode())
        stdin.seek(0)
        try:
            return subprocess.Popen(
                launch.argv,
                cwd=launch.cwd,
                env=launch.env,
                stdin=stdin,
                stdout=fds["stdout"],
                stderr=fds["stderr"],
                pass_fds=(fds["result"], fds["events"]),
                start_new_session=True,
                preexec_fn=launch.preexec,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            why = _read_tail(os.path.join(root, "stderr"), _STDERR_TAIL).strip() or str(exc)
            raise RuntimeError(f"sandbox could not start its child process: {why}") from exc


def _wait(proc: subprocess.Popen, wall_s: float) -> tuple[bool, int, float]:
    """(timed_out, returncode, cpu seconds). The group is killed while the leader is still an
    unreaped zombie, so its process-group id cannot have been recycled."""
    deadline = time.monotonic() + wall_s
    delay, timed_out = 0.001, False
    try:
        while not _exited(proc.pid):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.02)
    finally:  # even on KeyboardInterrupt: nothing of the run may outlive the call
        _kill_group(proc.pid)  # also takes any straggler the code left behind
        returncode, cpu_used = _reap(proc.pid)
        proc.returncode = returncode  # reaped here, so Popen must not wait again
    return timed_out, returncode, cpu_used


def _exited(pid: int) -> bool:
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by someone else (a SIGCHLD handler in the caller)
        return True
    return info is not None and info.si_pid != 0


def _reap(pid: int) -> tuple[int, float]:
    try:
        _, status, usage = os.wait4(pid, 0)
    except ChildProcessError:
        return 0, 0.0  # status lost: the report, if any, decides
    return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# ---------------------------------------------------------------- reading the outcome


def _result(
    root: str, total: int, limits: SandboxLimits, timed_out: bool, returncode: int, cpu_used: float, seconds: float
) -> SandboxResult:
    report = _read_report(os.path.join(root, "result"), total)
    violation, why = _violation(root, limits, timed_out, returncode, cpu_used, report)
    stdout = _read_text(os.path.join(root, "stdout"), limits.output_chars * 4)[: limits.output_chars]
    passed = report["passed"] if report else 0
    failures = report["failures"] if report else []
    if violation is not None:
        detail = f"{violation}: {why}"
    elif report["error"]:
        detail = report["error"]
    else:
        detail = failures[0] if failures else f"all {total} tests passed"
    return SandboxResult(passed, total, violation, detail, failures, stdout, seconds)


def _violation(
    root: str, limits: SandboxLimits, timed_out: bool, returncode: int, cpu_used: float, report: dict | None
) -> tuple[str | None, str]:
    """The first rule broken, most specific first: what the hook blocked, then what the OS stopped."""
    events = _read_text(os.path.join(root, "events"), _EVENTS_MAX_BYTES)
    if events:
        return _hook_violation(events)
    if timed_out:
        return "wall_time", f"still running after wall_s={limits.wall_s}s; process group killed"
    cpu_limit = max(1, math.ceil(limits.cpu_s))
    if returncode == -signal.SIGXCPU or (returncode == -signal.SIGKILL and cpu_used >= cpu_limit):
        return "cpu_time", f"CPU time limit of {cpu_limit}s exceeded ({cpu_used:.1f}s used)"
    stderr_tail = _read_tail(os.path.join(root, "stderr"), _STDERR_TAIL)
    if (report and report["memory"]) or (report is None and "MemoryError" in stderr_tail):
        return "memory", f"MemoryError under the {limits.memory_mb} MB address-space limit"
    file_limit = _file_limit_bytes(limits)
    if any(_size(os.path.join(root, name)) >= file_limit for name in ("stdout", "stderr")):
        return "output", f"stdout/stderr reached the {limits.file_mb} MB file-size limit"
    if returncode == -signal.SIGXFSZ or (report and report["efbig"]):
        return "file_size", f"a file write hit the {limits.file_mb} MB file-size limit"
    if returncode == -signal.SIGSYS:
        return "syscall", "killed by SIGSYS: a system call the seccomp filter denies (mknod, ptrace, mount, exec, ...)"
    if report and report.get("denied"):  # the OS refused what the hook did not stop (it may have been disabled)
        reason, _, what = report.get("denied").partition("\t")
        return (reason if reason in _HOOK_REASONS else "tamper"), f"the OS refused {what}"[:_STDERR_TAIL]
    if returncode < 0:
        return "crash", f"killed by signal {_signal_name(-returncode)}"
    if report is None:
        return "no_report", f"exit code {returncode} without a valid report; stderr: {stderr_tail.strip()!r}"
    return None, ""


def _hook_violation(events: str) -> tuple[str, str]:
    """The hook's first line is ``reason<TAB>event<TAB>args``. Anything else in that file was
    written by the code itself (it can reach the fd), which is tampering in its own right."""
    fields = events.split("\n", 1)[0].split("\t")
    if len(fields) == 3 and fields[0] in _HOOK_REASONS:
        reason, event, what = fields
        return reason, f"blocked {event}({what})"
    return "tamper", f"the audit record was overwritten: {events[:100]!r}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _read_report(path: str, total: int) -> dict | None:
    """The child's report, or None when missing or malformed (a crash, or tampering)."""
    try:
        report = json.loads(_read_text(path, _REPORT_MAX_BYTES))
        ok = (
            isinstance(report, dict)
            and type(report.get("passed")) is int
            and isinstance(report.get("failures"), list)
            and all(isinstance(f, str) for f in report["failures"])
            and isinstance(report.get("error"), str | None)
            and all(type(report.get(k)) is bool for k in ("memory", "efbig"))
            and isinstance(report.get("denied"), str | None)
        )
    except ValueError:
        return None
    if not ok:
        return None
    report["passed"] = min(max(report["passed"], 0), total)  # total is ours, not the child's
    return report


def _read_tail(path: str, max_bytes: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - max_bytes))
            return f.read(max_bytes).decode("utf-8", "replace")
    except OSError:
        return ""


def _read_text(path: str, max_bytes: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes).decode("utf-8", "replace")
    except OSError:
        return ""


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
