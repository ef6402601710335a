"""The operating system's boundary around a sandboxed program (``task.env.sandbox.isolation: os``).

``thinkflow.envs.sandbox`` starts each candidate program in a child process; with OS isolation the
child, before it execs the interpreter (``enter``, run as ``preexec_fn``):

1. gets its own **mount, network, IPC and UTS namespaces** (``unshare``); mounts stop propagating;
2. builds a new root on an empty tmpfs that holds only the interpreter, the standard library (its
   ``site-packages`` covered by an empty tmpfs) and the shared libraries they link, bound **read-only**
   at their host paths; the runner at ``/sandbox/child.py`` (read-only); ``/sandbox/work`` and a
   private ``/tmp``, both small tmpfs mounts of its own; ``/dev/null``, ``zero``, ``random``,
   ``urandom``; no ``/proc``, ``/sys``, ``/etc``, ``/home`` or anything else of the host. The new root
   is remounted read-only and ``pivot_root`` makes it ``/``; the host's root is detached;
3. drops **every capability** (bounding set, ambient set; permitted, effective and inheritable are
   verified empty after the uid change), becomes a **uid of its own** (not shared with any other
   process, so it can signal nothing else), sets ``no_new_privs``;
4. loads a **seccomp** filter (built once with libseccomp through ``pyseccomp``) that kills the process
   on ``mknod``, ``ptrace``, ``mount``, ``unshare``, ``setns``, ``bpf``, ``keyctl`` and the rest of
   ``DENIED_SYSCALLS``, and on ``clone`` with namespace flags; ``clone3`` answers ENOSYS (its flags
   sit behind a pointer the filter cannot read; libc falls back to ``clone``).

``setup_problem()`` says why this machine cannot set the boundary up (not Linux, not root, a missing
capability or binding); ``sandbox.os_problem()`` adds one program run inside it end to end, and the
sandbox refuses to run model code where either fails unless the user chose ``isolation: hook``
(resource limits and the audit hook only).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import glob
import itertools
import os
import platform
import resource
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass

CHILD_HOST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_child.py")
CHILD = "/sandbox/child.py"  # where the runner is bound inside the new root
WORK = "/sandbox/work"
TMP = "/tmp"
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
HOSTNAME = b"sandbox"
# Killed on sight (SIGSYS): what a program that broke out of the interpreter would reach for next.
_DENIED = """
    mknod mknodat ptrace process_vm_readv process_vm_writev mount umount2 pivot_root chroot unshare
    setns bpf keyctl add_key request_key perf_event_open kexec_load kexec_file_load init_module
    finit_module delete_module reboot swapon swapoff acct userfaultfd open_by_handle_at
    name_to_handle_at io_uring_setup io_uring_enter io_uring_register fsopen fsmount fsconfig fspick
    move_mount open_tree mount_setattr iopl ioperm syslog quotactl settimeofday clock_settime adjtimex
    clock_adjtime sethostname setdomainname lookup_dcookie vhangup fanotify_init personality
"""
DENIED_SYSCALLS = tuple(_DENIED.split())
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_UID_BASE = 1_500_000_000  # far above login and container (subuid) ranges; one uid per run

# linux/mount.h, linux/sched.h, linux/prctl.h, linux/capability.h
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
MNT_DETACH = 2
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME = 0x10000000, 0x20000000, 0x40000000, 0x00000080
NAMESPACE_FLAGS = (CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC)
NAMESPACE_FLAGS += (CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME)
PR_SET_KEEPCAPS, PR_SET_SECCOMP, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 8, 22, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SECCOMP_MODE_FILTER = 2
CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_SYS_ADMIN = 6, 7, 8, 21
CAP_VERSION_3 = 0x20080522


class IsolationError(RuntimeError):
    """The OS boundary could not be set up (in the parent's checks, or in the child before exec)."""


@dataclass(frozen=True)
class Layout:
    """What of the host the new root shows, computed once: read-only binds at their host paths, the
    symlinks on the way to them (``/lib64 -> usr/lib64``), and directories covered by an empty tmpfs."""

    python: str  # the real interpreter (not a venv's symlink: -I -S needs no venv)
    binds: tuple[str, ...]
    symlinks: tuple[tuple[str, str], ...]
    hidden: tuple[str, ...]


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@dataclass(frozen=True)
class Boundary:
    """Everything ``enter`` needs for one run, built in the parent (the forked child only applies it)."""

    new_root: str  # an empty host directory; the tmpfs root is mounted on it in the child's namespace
    uid: int
    disk_mb: int  # size of /sandbox/work and of /tmp
    max_processes: int
    layout: Layout
    seccomp: _SockFprog
    last_cap: int


_uids = itertools.count()


def boundary(new_root: str, disk_mb: int, max_processes: int) -> Boundary:
    """The plan for one run; call ``sandbox.os_problem()`` first (this assumes the machine can do it)."""
    uid = _UID_BASE + (os.getpid() % 100_000) * 1000 + next(_uids) % 1000
    return Boundary(new_root, uid, disk_mb, max_processes, layout(), _seccomp_program(), _last_cap())


# ---------------------------------------------------------------- decided once per process


@functools.cache
def setup_problem() -> str | None:
    """None when this machine can set the OS boundary up, else why not (one sentence). Whether a program then
    sees what it should inside it is ``sandbox.os_problem()`` (the sandbox runner builds on this module)."""
    if not sys.platform.startswith("linux"):
        return f"it needs Linux namespaces, and this is {sys.platform}"
    if platform.machine() not in SYS_PIVOT_ROOT:
        return f"pivot_root is wired up for {', '.join(SYS_PIVOT_ROOT)} only, and this machine is {platform.machine()}"
    if os.geteuid() != 0:
        return "it needs root to create mount and network namespaces and switch to an unprivileged uid"
    caps = effective_caps()
    needed = {"CAP_SYS_ADMIN": CAP_SYS_ADMIN, "CAP_SETUID": CAP_SETUID, "CAP_SETGID": CAP_SETGID}
    missing = [name for name, cap in (needed | {"CAP_SETPCAP": CAP_SETPCAP}).items() if not caps >> cap & 1]
    if missing:
        return f"this root process lacks {', '.join(missing)} (a container without privileges?)"
    try:
        warm()
    except (ImportError, OSError, IsolationError, subprocess.SubprocessError) as err:
        return str(err)
    return None


def effective_caps() -> int:
    try:
        with open("/proc/self/status") as status:
            line = next(row for row in status if row.startswith("CapEff:"))
        return int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        return 0


@functools.cache
def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63  # dropping a capability the kernel does not know fails with EINVAL: ignored in enter


@functools.cache
def _seccomp_program() -> _SockFprog:
    """The filter loaded before exec, as a ``sock_fprog`` ready for prctl."""
    program = _compile_filter(DENIED_SYSCALLS, namespaces=True)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    fprog._buffer = buffer  # keep the instructions alive as long as the program
    return fprog


@functools.cache
def exec_filter() -> bytes:
    """A second filter the runner loads once the interpreter is up, before the program runs: from then
    on ``execve`` kills the process (the first filter cannot deny it: the interpreter is exec'd after)."""
    return _compile_filter(("execve", "execveat"), namespaces=False)


def _compile_filter(denied: tuple[str, ...], namespaces: bool) -> bytes:
    """Classic BPF compiled by libseccomp for this machine's architecture (a foreign architecture's
    syscall numbers, x32 included, kill the process too)."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, AttributeError) as err:  # AttributeError: no libseccomp.so.2 to bind to
        raise IsolationError(
            f"the seccomp binding is not usable ({type(err).__name__}: {err}); it needs pyseccomp and libseccomp.so.2"
        ) from None
    filt = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in denied:
        try:
            filt.add_rule(seccomp.KILL_PROCESS, name)
        except (OSError, ValueError):
            continue  # not a syscall on this architecture
    if namespaces:
        filt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        for flag in NAMESPACE_FLAGS:
            filt.add_rule(seccomp.KILL_PROCESS, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    with tempfile.TemporaryFile() as out:
        filt.export_bpf(out)
        out.seek(0)
        program = out.read()
    if not program or len(program) % 8:
        raise IsolationError(f"libseccomp exported a malformed filter ({len(program)} bytes)")
    return program


@functools.cache
def layout() -> Layout:
    python = os.path.realpath(sys.executable)
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    dynload = sysconfig.get_config_var("DESTSHARED") or os.path.join(stdlib, "lib-dynload")
    objects = [python, *sorted(glob.glob(os.path.join(dynload, "*.so")))]
    libpython = _libpython()
    if libpython:
        objects.append(libpython)
    needed = {python, stdlib, dynload, *objects, *_shared_libraries(objects)}
    symlinks: dict[str, str] = {}
    targets: set[str] = set()
    for path in needed:
        _follow(os.path.abspath(path), symlinks, targets)
    binds = _outermost(targets)
    links = tuple(sorted((p, t) for p, t in symlinks.items() if not any(_inside(p, b) for b in binds)))
    hidden = tuple(d for d in (os.path.join(stdlib, "site-packages"),) if os.path.isdir(d))
    return Layout(python, binds, links, hidden)


def _libpython() -> str | None:
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        return None
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    for name in (sysconfig.get_config_var("INSTSONAME"), sysconfig.get_config_var("LDLIBRARY")):
        if name and os.path.exists(os.path.join(libdir, name)):
            return os.path.join(libdir, name)
    return None


def _shared_libraries(objects: list[str]) -> set[str]:
    """Every shared library (and the ELF interpreter) the given binaries load, as ``ldd`` resolves them."""
    try:
        env = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
        out = subprocess.run(["ldd", *objects], capture_output=True, text=True, timeout=60, env=env).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise IsolationError(f"ldd could not list the interpreter's shared libraries: {err}") from None
    libs = set()
    for line in out.splitlines():
        words = line.split("=>", 1)[-1].split()
        if words and words[0].startswith("/") and not words[0].endswith(":"):
            libs.add(words[0])
    if not libs:
        raise IsolationError("ldd listed no shared libraries for the interpreter")
    return libs


def _follow(path: str, symlinks: dict[str, str], targets: set[str], depth: int = 0) -> None:
    """Record each symlink on the way to ``path`` and the real path it ends at."""
    if depth > 40:
        raise IsolationError(f"too many symlinks resolving {path}")
    current = "/"
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            target = os.readlink(candidate)
            symlinks[candidate] = target
            rest = "/".join(parts[i + 1 :])
            resolved = os.path.normpath(os.path.join(current, target))
            _follow(os.path.join(resolved, rest) if rest else resolved, symlinks, targets, depth + 1)
            return
        current = candidate
    if os.path.exists(current):
        targets.add(current)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _outermost(paths: set[str]) -> tuple[str, ...]:
    kept: list[str] = []
    for path in sorted(paths, key=lambda p: (p.count("/"), p)):
        if not any(_inside(path, k) for k in kept):
            kept.append(path)
    return tuple(sorted(kept))


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.syscall.argtypes = [ctypes.c_long, ctypes.c_char_p, ctypes.c_char_p]
    libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.capset.argtypes = libc.capget.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return libc


def warm() -> None:
    """Resolve everything ``enter`` uses in the parent, so the forked child only makes system calls."""
    _libc()
    _seccomp_program()
    exec_filter()
    layout()
    _last_cap()


# ---------------------------------------------------------------- in the forked child, before exec


def enter(b: Boundary) -> None:
    """Build the namespaces and the new root, drop every privilege and load the filter. Runs as
    ``preexec_fn`` (after fork, before exec of the interpreter); any failure stops the exec."""
    try:
        _namespaces()
        _build_root(b)
        _pivot(b.new_root)
        _check(_libc().sethostname(HOSTNAME, len(HOSTNAME)), "sethostname")
        _drop_privileges(b)
        _check(_libc().prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(b.seccomp), 0, 0), "seccomp")
    except BaseException as err:
        os.write(2, f"sandbox: OS isolation failed before the program ran: {err}\n".encode())
        raise


def _namespaces() -> None:
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount reaches the host, nor the reverse


def _build_root(b: Boundary) -> None:
    new, lay = b.new_root, b.layout
    _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for path, target in lay.symlinks:
        os.makedirs(new + os.path.dirname(path), exist_ok=True)
        os.symlink(target, new + path)
    for path in lay.binds:
        _bind(path, new + path, read_only=True)
    for path in lay.hidden:
        _mount("tmpfs", new + path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0755")
    _bind(CHILD_HOST, new + CHILD, read_only=True)
    size = f"size={b.disk_mb}m"
    os.makedirs(new + WORK)
    _mount("tmpfs", new + WORK, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode=0700,uid={b.uid},gid={b.uid}")
    os.makedirs(new + TMP)
    _mount("tmpfs", new + TMP, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode=1777")
    for device in DEVICES:
        _bind(device, new + device, read_only=False)
    _mount(None, new, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _bind(source: str, target: str, read_only: bool) -> None:
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount(source, target, None, MS_BIND)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (MS_RDONLY | MS_NODEV if read_only else MS_NOEXEC)
    _mount(None, target, None, flags)


def _pivot(new_root: str) -> None:
    """``pivot_root(".", ".")``, then detach the old root stacked on top (as container runtimes do)."""
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY)
    try:
        os.chdir(new_root)
        _check(_libc().syscall(SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
        os.fchdir(old)
        _check(_libc().umount2(b".", MNT_DETACH), "umount2 of the old root")
    finally:
        os.close(old)
    os.chdir(WORK)


def _drop_privileges(b: Boundary) -> None:
    libc = _libc()
    for cap in range(b.last_cap + 1):  # the bounding set: nothing can be regained through exec
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            _check(-1, f"dropping capability {cap} from the bounding set")
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
    _check(libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "PR_SET_KEEPCAPS")
    os.setgroups([])
    os.setresgid(b.uid, b.uid, b.uid)
    os.setresuid(b.uid, b.uid, b.uid)  # clears permitted and effective capabilities (no keepcaps)
    header, data = CapHeader(CAP_VERSION_3, 0), (CapData * 2)()
    _check(libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")  # inheritable too
    _check(libc.capget(ctypes.byref(header), ctypes.byref(data)), "capget")
    if any(d.effective or d.permitted or d.inheritable for d in data):
        raise IsolationError("capabilities are still held after the uid change")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    # Counted per uid, and the uid is this run's alone: max_processes is exactly what it can have.
    resource.setrlimit(resource.RLIMIT_NPROC, (b.max_processes, b.max_processes))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc().mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise IsolationError(f"{what} failed: {os.strerror(err)} (errno {err})")
