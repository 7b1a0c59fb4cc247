"""Timing helpers: calls timed in this process, commands timed (and their memory) in a child."""

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from siamese.errors import PipelineError


def durations(fn: Callable[[], Any], calls: int, warmup: int = 1) -> list[float]:
    """Wall seconds of each of `calls` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(calls, 1)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def per_second(items: float, times: list[float]) -> float:
    """Items per second of one call, from the median call (robust to a busy machine)."""
    return items / max(statistics.median(times), 1e-9)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 2)


def run_child(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run a command; its wall seconds, exit status and peak RSS (MiB, from os.wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = output.decode(errors="replace")[-2000:]
        raise PipelineError(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return {"seconds": round(seconds, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def child_env() -> dict[str, str]:
    """The environment of a child: this interpreter's bin first on PATH (dvc calls `siamese`).
    Prefect's settings come from prefect.toml (children run in the repository root)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
