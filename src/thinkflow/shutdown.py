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

_requested = threading.Event()
_hooks: dict[int, tuple[str, Callable[[], None] | None, Callable[[], None] | None]] = {}
_ids = itertools.count()
_lock = threading.Lock()


class Terminated(BaseException):  # noqa: N818 - like KeyboardInterrupt
    """SIGTERM, raised by the entry point's handler (``raise_terminated``) outside a flow."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


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
    """Forget an earlier request (a new pipeline in the same process, e.g. a test or a served flow)."""
    _requested.clear()


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
            print(f"stop: ending {name} failed: {type(err).__name__}: {err}")


def stop(grace_s: float, running: Callable[[], bool]) -> bool:
    """Request a stop, wait up to ``grace_s`` while ``running()``, then end what is left; True if the
    running work ended within the grace period."""
    _requested.set()
    print(f"stop requested: the running stage saves its state at its next step (up to {grace_s:.0f} s)", flush=True)
    _call(0)
    deadline = time.monotonic() + grace_s
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    ended = not running()
    _call(1)
    return ended
