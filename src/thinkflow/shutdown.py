"""Stopping the pipeline on SIGTERM (``kill``, ``docker stop``, a Prefect cancellation) or Ctrl-C.

A stage runs in a Prefect worker thread while the main thread waits for it; the signal is turned into an
exception in the main thread (Prefect's ``TerminationSignal``, or ``KeyboardInterrupt``), which calls
``stop``:

1. a stop is *requested*: training stages running in this process save ``last.ckpt`` at their next step
   boundary and end with ``StopRequested`` (``CheckpointOnStop``); processes a stage started in their own
   process group (a multi-process launch) get the signal passed on (``on_stop(now=...)``);
2. ``stop`` waits up to ``stop_grace_s`` for the running stage to end;
3. what is still running is ended (``on_stop(last=...)``: the launched ranks' group, a vLLM server), and the
   caller marks the MLflow runs KILLED;
4. the entry point stops the temporary Prefect server and ends the process as killed by the signal
   (``exit_by_signal``), not waiting for a stage thread that did not stop in time.

From the request until the process exits, a further SIGTERM or Ctrl-C raises nothing (an exception in the main
thread would cut steps 2-4 short: runs left RUNNING, the stage's processes and the Prefect server behind); during
the grace period it ends the wait at once (step 3 follows), afterwards it is ignored. The flow itself returns only
once the stage's thread has ended (Prefect joins its task threads): step 3 is what ends a stage that waits on its
processes (launched ranks, Ray actors); an in-process stage ends at its next step boundary.

Rerunning the same command resumes from the saved checkpoints.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from thinkflow import logs

log = logs.get("stop")

_requested = threading.Event()
_hooks: dict[int, tuple[str, Callable[[], None] | None, Callable[[], None] | None]] = {}
_ids = itertools.count()
_lock = threading.Lock()
_again: list[int] = []  # signals received while stopping (appended by a signal handler: no lock, no I/O there)
_held: dict[int, object] = {}  # signal -> its handler before the stop took it over (given back by ``reset``)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Terminated(BaseException):  # noqa: N818 - like KeyboardInterrupt
    """SIGTERM, raised by the entry point's handler (``raise_terminated``) outside a flow."""


def raise_terminated(signum, frame) -> None:
    if _requested.is_set():  # already stopping (Prefect hands SIGTERM back here once the flow has ended)
        _while_stopping(signum, frame)
        return
    raise Terminated()


def _while_stopping(signum, frame) -> None:
    """SIGTERM / SIGINT once a stop is under way: noted (it ends the grace period), never raised."""
    _again.append(signum)


def _hold_signals() -> None:
    """Until the process exits (or ``reset``), SIGTERM and SIGINT no longer raise; only the main thread can."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _STOP_SIGNALS:
        previous = signal.signal(sig, _while_stopping)
        _held.setdefault(sig, signal.SIG_DFL if previous is None else previous)  # None: not set from Python


def exit_by_signal(sig: int) -> None:
    """End this process as killed by ``sig`` (what supervisors expect), without waiting for worker threads a
    stage may still be running in; call once the runs are closed and the helper servers stopped."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    time.sleep(5)
    os._exit(128 + sig)  # pragma: no cover - only if the signal did not end the process


class StopRequested(Exception):  # noqa: N818 - it is a request, not an error
    """Raised in a stage's thread once it has saved its state after a stop request."""


def requested() -> bool:
    return _requested.is_set()


def reset() -> None:
    """Forget an earlier request (a new pipeline in the same process, e.g. a test or a served flow), and give
    SIGTERM / SIGINT their handlers back."""
    _requested.clear()
    _again.clear()
    if threading.current_thread() is threading.main_thread():
        while _held:
            sig, handler = _held.popitem()
            signal.signal(sig, handler)


def is_stop_signal(exc: BaseException) -> bool:
    """Ctrl-C, or SIGTERM as Prefect raises it inside a flow (or Lightning in a launched rank's process)."""
    from prefect.exceptions import TerminationSignal
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    return isinstance(exc, KeyboardInterrupt | Terminated | TerminationSignal | SIGTERMException)


def register(name: str, *, now: Callable[[], None] | None = None, last: Callable[[], None] | None = None) -> int:
    """Until ``unregister(key)``: a stop calls ``now`` at once and ``last`` after the grace period."""
    key = next(_ids)
    with _lock:
        _hooks[key] = (name, now, last)
    return key


def unregister(key: int | None) -> None:
    with _lock:
        _hooks.pop(key, None)


@contextmanager
def on_stop(
    name: str, *, now: Callable[[], None] | None = None, last: Callable[[], None] | None = None
) -> Iterator[None]:
    """``register`` for the duration of the block."""
    key = register(name, now=now, last=last)
    try:
        yield
    finally:
        unregister(key)


def _call(which: int) -> None:
    with _lock:
        hooks = list(_hooks.values())
    for name, *fns in hooks:
        fn = fns[which]
        if fn is None:
            continue
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - stopping goes on with the others
            log.warning("ending %s failed: %s: %s", name, type(err).__name__, err)


def stop(grace_s: float, running: Callable[[], bool]) -> bool:
    """Request a stop, wait up to ``grace_s`` while ``running()``, then end what is left; True if the
    running work ended within the grace period."""
    _requested.set()
    _hold_signals()
    log.info("requested; the running stage saves its state at its next step (up to %.0f s)", grace_s)
    try:
        _call(0)
        deadline = time.monotonic() + grace_s
        while running() and time.monotonic() < deadline and not _again:
            time.sleep(0.1)
        ended = not running()
        if _again and not ended:
            log.info(
                "%s again: not waiting for the stage any longer; ending what it started", signal.Signals(_again[0]).name
            )
    finally:
        _call(1)
    return ended
