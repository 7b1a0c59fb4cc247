"""Processes that do not outlive the one that started them."""

import os
import select
import signal
import sys
import threading

SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ash", "ksh", "busybox"})


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its starter dies, kill -9 included; elsewhere
    nothing.

    The starter is the parent (prctl's PR_SET_PDEATHSIG, kept across exec) or, when the parent
    is a shell that did not exec the command (dash's `sh -c`, which DVC runs when $SHELL is
    unset), the first ancestor above the shells, watched through a pidfd."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:
        return
    child, starter = os.getpid(), os.getppid()
    while starter > 1 and command_name(starter) in SHELLS:
        child, starter = starter, parent_of(starter)
    if starter <= 1:
        os.kill(os.getpid(), signal.SIGTERM)  # orphaned before the call: init adopted it
    elif starter != os.getppid():
        watch_starter(starter, child)


def watch_starter(starter: int, child: int) -> None:
    """SIGTERM to this process once `starter` exits; `child` is the shell it started."""
    try:
        pidfd = os.pidfd_open(starter)
    except ProcessLookupError:
        pidfd = None
    except OSError:  # a kernel without pidfds: the shell's own parent-death signal is all
        return
    if pidfd is None or parent_of(child) != starter:  # gone, and its pid may be reused
        os.kill(os.getpid(), signal.SIGTERM)
        return

    def wait_then_terminate() -> None:
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait_then_terminate, name="die-with-starter", daemon=True).start()


def parent_of(pid: int) -> int:
    """The parent's pid from /proc; 0 when `pid` is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def command_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc (Linux; elsewhere none)."""
    found = []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if entry.name.isdigit() and parent_of(int(entry.name)) == pid:
            found.append(int(entry.name))
    return found
