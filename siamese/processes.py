"""Processes that do not outlive the one that started them."""

import os
import signal
import sys


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies, kill -9 included (prctl's
    PR_SET_PDEATHSIG, kept across exec); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0 and os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # orphaned before the call: init adopted it
