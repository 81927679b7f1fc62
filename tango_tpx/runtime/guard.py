"""The orphan guard: a child process of tango-tpx ends when its parent is gone.

Two mechanisms, both set up by :func:`die_with_parent` in the child:

* ``PR_SET_PDEATHSIG`` (Linux): the kernel sends SIGKILL when the parent *thread* that
  started the child ends. Use it only when that thread lives as long as the child (the
  main thread); a pool started from a short-lived thread relies on the watchdog alone;
* a watchdog thread that polls :func:`os.getppid` every ``period_s`` and exits the process
  when the parent changed (it was re-parented to init or a subreaper).

Loops that poll anyway (the pipeline stages, the train-ID receiver) call
:meth:`OrphanGuard.orphaned` instead of running the watchdog.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time

#: prctl option that sets the parent-death signal
_PR_SET_PDEATHSIG = 1


def parent_alive(parent_pid: int) -> bool:
    """True while this process's parent is still ``parent_pid``."""
    return os.getppid() == parent_pid


class OrphanGuard:
    """Remembers the parent's pid; :meth:`orphaned` is True once that parent is gone.

    parent_pid: the pid of the process that started this one (default: the current parent;
    pass the creator's ``os.getpid()`` recorded before the start, so that a parent that
    died before the child ran is noticed too). ``None``: never orphaned (no parent to watch).
    """

    def __init__(self, parent_pid: int | None = -1) -> None:
        self.parent_pid = os.getppid() if parent_pid == -1 else parent_pid

    def orphaned(self) -> bool:
        """True when the parent process is gone (this process should end)."""
        return self.parent_pid is not None and not parent_alive(self.parent_pid)

    def start_watchdog(self, period_s: float = 1.0, exit_code: int = 1) -> threading.Thread:
        """A daemon thread that ends this process (``os._exit``) once :meth:`orphaned`."""
        def watch() -> None:
            while True:
                time.sleep(period_s)
                if self.orphaned():
                    os._exit(exit_code)

        t = threading.Thread(target=watch, name="tango-tpx-orphan-guard", daemon=True)
        t.start()
        return t


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent thread ends (Linux);
    False where not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig)) == 0
    except (OSError, AttributeError):
        return False


def die_with_parent(parent_pid: int | None = -1, pdeathsig: bool = True,
                    period_s: float = 1.0) -> OrphanGuard:
    """Call first in a worker process: exit now if the parent is already gone, else arm
    ``PR_SET_PDEATHSIG`` (when ``pdeathsig``) and the watchdog. Ctrl-C is the parent's
    business (SIGINT ignored here); SIGTERM ends the worker at once (default action).
    Returns the guard."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    guard = OrphanGuard(parent_pid)
    if pdeathsig:
        set_pdeathsig(signal.SIGKILL)
    if guard.orphaned():
        os._exit(1)
    guard.start_watchdog(period_s)
    return guard


__all__ = ["parent_alive", "OrphanGuard", "set_pdeathsig", "die_with_parent"]
