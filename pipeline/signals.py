"""The one signal policy of every command, search and DDP process:
- SIGTERM (a scheduler pre-empting the job, torchrun stopping its ranks) is Ctrl-C: it reaches
  whatever handles SIGINT at that moment (Python's KeyboardInterrupt, Ray Tune's graceful stop);
- a few writes that belong together hold both off until they are done;
- a DDP rank ends when the launcher that started it dies;
- an interrupted command says one of two things, written here."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

# Set for the ranks `ffl train` starts: an interrupt is said once, by `ffl train`, not by each rank.
RANK_OF_LAUNCHER = "FFL_RANK_OF_LAUNCHER"
INTERRUPTED_TRAINING = "interrupted; run the same command again to resume from the last finished epoch"
INTERRUPTED = "interrupted; no output is left half-written or mixed with another run's; run it again"


def _terminate_is_interrupt(signum, frame):
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):  # Python's default (KeyboardInterrupt) or a library's (Ray Tune's)
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored (a background job): SIGTERM must still end the command
        raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_is_interrupt() -> Iterator[None]:
    """For the block, SIGTERM does what Ctrl-C does; the previous handler comes back after."""
    previous = signal.signal(signal.SIGTERM, _terminate_is_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def take_back_terminate() -> None:
    """SIGTERM is Ctrl-C again after a library took it over (Ray's init installs a handler that
    dumps a C++ stack and leaves a search's state as it was)."""
    signal.signal(signal.SIGTERM, _terminate_is_interrupt)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done, then reach their usual handler. (Python's
    handlers, not a signal mask: a mask holds for one thread, and torch's threads would take them.)"""
    caught: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            else:  # the default action (SIGTERM ends the process)
                os.kill(os.getpid(), caught[0])


def end_with_parent() -> None:
    """This process gets SIGTERM when the process that launched it (torchrun's agent) dies, even by
    SIGKILL: without it the ranks of a killed launcher train on unseen, holding the run's lock.
    Linux only (prctl); elsewhere a no-op."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the launcher died before the call
        os.kill(os.getpid(), signal.SIGTERM)
