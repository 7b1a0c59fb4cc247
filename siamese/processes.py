"""Processes that do not outlive the one that started them, and only those: a command run by
hand (nohup, setsid, a container's `sh -c` or tini as PID 1, a systemd unit) just runs."""

import os
import select
import signal
import sys
import threading
from pathlib import Path

SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ash", "ksh", "busybox"})
# `python -c WITH_PARENT STARTER_PID COMMAND...` runs COMMAND, dying with STARTER_PID.
WITH_PARENT = ("import os, sys; from siamese.processes import die_with_parent; "
               "die_with_parent(int(sys.argv[1])); os.execvp(sys.argv[2], sys.argv[2:])")


def with_parent(args: list[str]) -> list[str]:
    """`args` as a command that dies with this process, kill -9 included (start it from the
    main thread: see die_with_parent); the flow's `dvc repro`, the temporary Prefect server."""
    return [sys.executable, "-c", WITH_PARENT, str(os.getpid()), *args]


def die_with_parent(parent: int) -> None:
    """Linux: SIGTERM to this process when `parent`, the process that started it, dies (kill -9
    included; prctl's PR_SET_PDEATHSIG, kept across exec), or now if it is gone already. For
    the children this project starts itself: the flow's `dvc repro`, the temporary Prefect
    server. (The signal follows the starter's thread that forked it: start them from the main
    thread.)"""
    if set_parent_death_signal() and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # it died before the call: its child goes too


def die_with_dvc() -> None:
    """A stage command that DVC started (DVC sets DVC_STAGE): SIGTERM when that `dvc repro`
    exits, kill -9 included, so that no orphan runs on beside a rerun. Its parent is DVC, or a
    shell DVC started that did not exec the command (dash's `sh -c`, which DVC runs when $SHELL
    is unset): then the first ancestor above the shells, DVC, is watched through a pidfd.
    Without DVC_STAGE (run by hand, under nohup, setsid, a container or systemd) nothing is
    watched: the command's parent is no one that must take it down."""
    if "DVC_STAGE" not in os.environ or not set_parent_death_signal():
        return
    child, starter = os.getpid(), os.getppid()
    while starter > 1 and command_name(starter) in SHELLS:
        child, starter = starter, parent_of(starter)
    if starter <= 1 and not runs_dvc(starter):  # its DVC died before this looked: init adopted it
        os.kill(os.getpid(), signal.SIGTERM)
    elif starter != os.getppid():
        watch_starter(starter, child)


def set_parent_death_signal() -> bool:
    """PR_SET_PDEATHSIG with SIGTERM on this process (Linux); whether it was set."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0) == 0


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


def runs_dvc(pid: int) -> bool:
    """Whether `pid` runs DVC (`dvc ...`, or `python -m dvc ...`: DVC as a container's PID 1)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3]
    except OSError:
        return False
    return any(os.path.basename(arg) == b"dvc" for arg in args)


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
