"""Child side of :mod:`thinkflow.envs.sandbox`: runs untrusted code against test expressions.

Started by path as ``python -I -S -B _sandbox_child.py`` inside the sandbox's work directory,
with the OS limits already applied by the parent. Stdlib only, and everything it needs is
imported before the audit hook is armed. Protocol:

- stdin: one JSON object ``{code, tests, result_fd, events_fd, allow_fork, write_roots}`` (an unlinked
  temp file, so there is nothing on disk to read back by path);
- ``events_fd``: one line per blocked audit event, ``reason<TAB>event<TAB>what``, written by
  the hook at the moment it blocks, so the record survives whatever the code does next;
- ``result_fd``: one JSON object ``{passed, failures, error, memory, efbig, denied}`` at the end;
  ``denied`` (``reason<TAB>what``) names the first error the *OS* raised into the code for an
  access outside the sandbox (a path it cannot see, no network, no process): what the hook reports
  when the hook itself has been disabled.

The process ends with ``os._exit`` so no atexit handler or finaliser of the candidate runs
after the report.
"""

from __future__ import annotations

import ast
import errno
import json
import operator
import os
import pathlib
import sys
from contextlib import suppress

NAMESPACE_NAME = "__sandbox__"  # not "__main__": an `if __name__ == "__main__":` block stays off
MAX_MESSAGE = 300
MAX_FAILURES_CHARS = 64_000  # the result file is under RLIMIT_FSIZE too
BLOCKED_IMPORTS = frozenset(
    {"ctypes", "_ctypes", "cffi", "_cffi_backend", "_posixsubprocess", "_testcapi", "_testinternalcapi"}
)
NEW_PROGRAM_EVENTS = frozenset(
    {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile", "subprocess.Popen", "pty.spawn"}
)
FORK_EVENTS = frozenset({"os.fork", "os.forkpty"})
SIGNAL_EVENTS = frozenset({"os.kill", "os.killpg"})
# event -> ((path arg index, dir_fd arg index or None), ...): every such path must lie in the work dir.
WRITE_EVENTS: dict[str, tuple[tuple[int, int | None], ...]] = {
    "os.remove": ((0, 1),),
    "os.rmdir": ((0, 1),),
    "os.mkdir": ((0, 2),),
    "os.rename": ((0, 2), (1, 3)),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.utime": ((0, 3),),
    "os.truncate": ((0, None),),
    "os.chdir": ((0, None),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
    "os.getxattr": ((0, None),),
    "os.listxattr": ((0, None),),
}
READ_EVENTS = frozenset({"os.listdir", "os.scandir"})
LINK_EVENTS = frozenset({"os.link", "os.symlink"})  # a hard link defeats any path check: never allowed
READABLE_DEVICES = frozenset({"/dev/null", "/dev/urandom", "/dev/random", "/dev/zero"})
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
COMPARE_OPS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


class SandboxBlocked(PermissionError):
    """Raised by the audit hook; the candidate sees an ordinary PermissionError."""


def make_hook(
    work: str,
    read_roots: tuple[str, ...],
    events_fd: int,
    reserved_fds: frozenset[int],
    allow_fork: bool,
    write_roots: tuple[str, ...] = (),
):
    """The audit hook, as a closure over private copies of its tables and functions, so that
    rebinding names in this module (``import __main__``) does not change what it checks."""
    realpath, join, isabs, getcwd, readlink = os.path.realpath, os.path.join, os.path.isabs, os.getcwd, os.readlink
    fsdecode, write, quietly, blocked_error = os.fsdecode, os.write, suppress, SandboxBlocked
    write_events, read_events, link_events, fork_events = dict(WRITE_EVENTS), READ_EVENTS, LINK_EVENTS, FORK_EVENTS
    process_events, blocked_imports, devices = NEW_PROGRAM_EVENTS | SIGNAL_EVENTS, BLOCKED_IMPORTS, READABLE_DEVICES
    write_flags, max_message = WRITE_FLAGS, MAX_MESSAGE
    path_types = (str, bytes, pathlib.PurePosixPath, pathlib.PosixPath, os.DirEntry)
    shutil_path_types = (str, bytes, pathlib.PurePath)
    function_type = type(make_hook)
    hook_code: list = []  # filled below: the code objects whose __code__/__defaults__ must not change

    def resolve(path, dir_fd) -> str | None:
        # Only exact, known path types: a custom __fspath__ could answer differently to the hook
        # than to the open() that follows.
        if type(path) not in path_types:
            return None
        text = fsdecode(path if isinstance(path, str | bytes) else str(path))
        relative_to_fd = dir_fd not in (None, -1) and not isabs(text)
        base = readlink(f"/proc/self/fd/{dir_fd}") if relative_to_fd else getcwd()
        return realpath(join(base, text))

    def inside(path: str, roots: tuple[str, ...]) -> bool:
        return any(path == root or path.startswith(root + "/") for root in roots)

    def path_reason(path, dir_fd, write_access: bool) -> str | None:
        if isinstance(path, int):  # an fd: it came through an audited open (or is stdio)
            return "tamper" if path in reserved_fds else None
        if path is None:
            path = "."
        try:
            resolved = resolve(path, dir_fd)
        except (OSError, ValueError, TypeError):
            return "filesystem"
        if resolved is None:
            return "filesystem"
        if resolved == "/dev/null" or (not write_access and resolved in devices):
            return None
        roots = (work, *write_roots) if write_access else (work, *write_roots, *read_roots)
        return None if inside(resolved, roots) else "filesystem"

    def reason_for(event: str, args: tuple) -> str | None:
        if event == "open":
            path, mode, flags = args
            writing = bool(flags & write_flags) or (isinstance(mode, str) and any(c in mode for c in "wax+"))
            return path_reason(path, None, writing)
        if event in read_events:
            return path_reason(args[0], None, False)
        if event in write_events:
            for path_i, fd_i in write_events[event]:
                reason = path_reason(args[path_i], None if fd_i is None else args[fd_i], True)
                if reason:
                    return reason
            return None
        if event.startswith("shutil."):  # the calls below it are audited too; this names the intent
            paths = [a for a in args if isinstance(a, shutil_path_types)]
            return next((r for p in paths if (r := path_reason(p, None, True))), None)
        if event in link_events:
            return "filesystem"
        if event.startswith("socket."):
            return "network"
        if event in process_events or event.startswith(("os.exec", "os.spawn")):
            return "process"
        if event in fork_events:
            return None if allow_fork else "process"
        if event == "import":
            return "forbidden_import" if args[0].partition(".")[0] in blocked_imports else None
        if event.startswith("ctypes."):
            return "forbidden_import"
        if event == "sys.addaudithook":
            return "tamper"
        if event == "object.__setattr__" and type(args[0]) is function_type and args[0].__code__ in hook_code:
            return "tamper"
        return None

    def describe(args: tuple) -> str:
        # repr of plain values only: calling the candidate's __repr__ from inside the hook
        # would hand it a frame of the hook.
        plain = (str, bytes, int, float, bool, type(None))
        return ", ".join(repr(a) for a in args if type(a) in plain)[:max_message]

    def hook(event: str, args: tuple) -> None:
        reason = reason_for(event, args)
        if reason is None:
            return
        what = describe(args)
        with quietly(OSError):  # events file at its size limit: the first lines are already there
            write(events_fd, f"{reason}\t{event}\t{what}\n".encode("utf-8", "replace"))
        raise blocked_error(f"sandbox blocked {event}({what}): {reason}")

    hook_code.extend(f.__code__ for f in (hook, reason_for, path_reason, resolve, inside, describe))
    return hook


def short_repr(value) -> str:
    try:
        text = repr(value)
    except BaseException as exc:  # noqa: BLE001 - the candidate's __repr__ may raise anything
        return f"<repr raised {type(exc).__name__}>"
    return text if len(text) <= 200 else text[:200] + "..."


def describe_exception(exc: BaseException) -> str:
    try:
        message = str(exc)
    except BaseException:  # noqa: BLE001
        message = "<str() raised>"
    return f"{type(exc).__name__}: {message}"[:MAX_MESSAGE] if message else type(exc).__name__


def compile_test(test: str):
    """(whole, left, right, op): a single comparison is evaluated side by side so a failure can
    say what the left side returned; anything else is evaluated whole."""
    tree = ast.parse(test, mode="eval")
    body = tree.body
    if isinstance(body, ast.Compare) and len(body.ops) == 1 and type(body.ops[0]) in COMPARE_OPS:
        left = compile(ast.Expression(body.left), "<test>", "eval")
        right = compile(ast.Expression(body.comparators[0]), "<test>", "eval")
        return None, left, right, COMPARE_OPS[type(body.ops[0])]
    return compile(tree, "<test>", "eval"), None, None, None


def run_one(test: str, compiled, namespace: dict, state: dict) -> str | None:
    """None when the test passes, else the failure message."""
    whole, left, right, op = compiled
    try:
        if whole is not None:
            value = eval(whole, namespace)
            return None if value else f"{test}: got {short_repr(value)}"
        lhs = eval(left, namespace)
        if op(lhs, eval(right, namespace)):
            return None
        return f"{test}: returned {short_repr(lhs)}"
    except MemoryError:
        state["memory"] = True
        return f"{test}: MemoryError"
    except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt... all fail the test
        note_efbig(exc, state)
        return f"{test}: raised {describe_exception(exc)}"


def note_efbig(exc: BaseException, state: dict) -> None:
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        state["efbig"] = True
    note_denied(exc, state)


NETWORK_ERRNOS = frozenset({errno.ENETUNREACH, errno.ENETDOWN, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})
PATH_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.EXDEV})


def note_denied(exc: BaseException, state: dict) -> None:
    """Remember the first error the OS raised for reaching outside the sandbox (``denied``)."""
    if state.get("denied") or not isinstance(exc, OSError) or isinstance(exc, SandboxBlocked):
        return
    what = f"{type(exc).__name__} errno {exc.errno}"
    if exc.errno in NETWORK_ERRNOS:
        state["denied"] = f"network\t{what} (no network in the sandbox)"
    elif exc.errno == errno.EAGAIN and exc.filename is None:
        state["denied"] = f"process\t{what} (no new processes in the sandbox)"
    elif exc.errno in PATH_ERRNOS and exc.filename is not None and outside(exc.filename, state["roots"]):
        state["denied"] = f"filesystem\t{what} on {str(exc.filename)[:MAX_MESSAGE]!r} (outside the sandbox's files)"


def outside(path, roots: tuple[str, ...]) -> bool:
    try:
        text = os.fsdecode(path) if isinstance(path, str | bytes) else str(path)
        resolved = os.path.realpath(os.path.join(os.getcwd(), text))  # a symlink counts where it points
    except (TypeError, ValueError, OSError):
        return True
    return not any(resolved == r or resolved.startswith(r + "/") for r in roots)


def run_code(code: str, tests: list[str], state: dict) -> tuple[int, list[str], str | None]:
    """(passed, failures, error): error is set when the code itself did not compile or run."""
    try:
        program = compile(code, "<candidate>", "exec")
    except SyntaxError as exc:
        return 0, [f"{t}: not run" for t in tests], f"SyntaxError: {exc.msg} (line {exc.lineno})"
    except (ValueError, MemoryError, RecursionError) as exc:
        return 0, [f"{t}: not run" for t in tests], f"code did not compile: {describe_exception(exc)}"
    namespace: dict = {"__name__": NAMESPACE_NAME, "__builtins__": __builtins__}
    try:
        exec(program, namespace)
    except MemoryError:
        state["memory"] = True
        return 0, [f"{t}: not run" for t in tests], "MemoryError while running the code"
    except BaseException as exc:  # noqa: BLE001
        note_efbig(exc, state)
        return 0, [f"{t}: not run" for t in tests], f"code raised {describe_exception(exc)}"
    compiled = [compile_test(t) for t in tests]  # parsed after exec: no candidate code runs here
    failures = [msg for t, c in zip(tests, compiled, strict=True) if (msg := run_one(t, c, namespace, state))]
    return len(tests) - len(failures), failures, None


def bounded(failures: list[str]) -> list[str]:
    out, size = [], 0
    for message in failures:
        size += len(message)
        if size > MAX_FAILURES_CHARS:
            out.append(f"... {len(failures) - len(out)} more")
            break
        out.append(message)
    return out


def flush_stdio(state: dict) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException as exc:  # noqa: BLE001 - the candidate may have replaced the stream
            note_efbig(exc, state)


def deny_exec(program: bytes) -> None:
    """Load the parent's second seccomp filter (``execve`` kills), then forget ctypes, so that importing
    it again is an import the hook sees. Runs before the hook and before any candidate code."""
    import ctypes

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        os.write(2, f"sandbox: the exec filter could not be loaded: errno {ctypes.get_errno()}\n".encode())
        os._exit(125)
    for name in [m for m in sys.modules if m.partition(".")[0] in ("ctypes", "_ctypes")]:
        del sys.modules[name]


def main() -> None:
    pid = os.getpid()
    job = json.loads(sys.stdin.buffer.read())
    if job.get("exec_filter"):
        deny_exec(bytes.fromhex(job["exec_filter"]))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # input() sees EOF, not the job
    os.close(devnull)
    result_fd, events_fd = job["result_fd"], job["events_fd"]
    work = os.path.realpath(os.getcwd())
    read_roots = tuple(os.path.realpath(p) for p in sys.path if p)  # the stdlib: -I -S leave nothing else
    write_roots = tuple(os.path.realpath(p) for p in job.get("write_roots", []))
    reserved = frozenset({result_fd, events_fd})
    hook = make_hook(work, read_roots, events_fd, reserved, job["allow_fork"], write_roots)
    sys.addaudithook(hook)
    del hook
    state = {"memory": False, "efbig": False, "denied": None, "roots": (work, *write_roots, *read_roots)}
    passed, failures, error = run_code(job["code"], job["tests"], state)
    if os.getpid() != pid:  # a forked child (max_processes > 1) that came back here: only the parent reports
        os._exit(0)
    flush_stdio(state)
    state.pop("roots")
    report = {"passed": passed, "failures": bounded(failures), "error": error, **state}
    try:
        os.write(result_fd, json.dumps(report).encode())
    finally:
        os._exit(0)


if __name__ == "__main__":
    main()
