"""DVC's side of the flows: the stages of dvc.yaml in DVC's order, which of them changed, what
`dvc repro` is about to do with one, and DVC commands run in a process of their own whose
output streams line by line.

DVC alone decides whether a stage is up to date (dvc.lock is the one lock file, the DVC cache
the one cache), so the flow and `dvc repro` skip what the other built.
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

from flows import remote
from siamese.errors import PipelineError
from siamese.processes import with_parent


def read_pipeline(root: Path, force: bool = False) -> tuple[list[str], set[str] | None]:
    """The stages of dvc.yaml in DVC's order (see `ordered_stages`) and those whose status DVC
    reports, from one opening of the repository. `force`: every stage counts as changed."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # DVC's own, about its trie
            stages = ordered_stages(repo)
            return stages, set(stages) if force else changed_stages(repo)
    except DvcException as e:
        raise PipelineError(f"{root / 'dvc.yaml'}: DVC cannot read the pipeline: {e}") from None


def pipeline_stages(root: Path) -> list[str]:
    """The stages of dvc.yaml, upstream first (a broken dvc.yaml is a PipelineError)."""
    return read_pipeline(root, force=True)[0]


def ordered_stages(repo: Any) -> list[str]:
    """The stages in an order that runs each after the stages it depends on; among stages free
    to run, the order of dvc.yaml decides, so the order is stable."""
    import networkx as nx
    from dvc.stage import PipelineStage

    index = repo.index
    position = {stage: i for i, stage in enumerate(index.stages)}
    # DVC's graph points from a stage to the stages it depends on.
    upstream_first = index.graph.reverse(copy=False)
    ordered = nx.lexicographical_topological_sort(upstream_first, key=position.get)
    return [address(s, repo.root_dir) for s in ordered if isinstance(s, PipelineStage)]


def changed_stages(repo: Any) -> set[str] | None:
    """The stages whose status DVC reports (changed deps, params, code or outputs), asked under
    DVC's repository lock; None when DVC cannot tell (the lock held by another DVC process,
    say): then every stage asks `dvc repro`, which reports the problem."""
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.repo import lock_repo
    from dvc.stage import PipelineStage

    try:
        with lock_repo(repo), remote.quiet_dvc():
            return {address(stage, repo.root_dir) for stage in repo.index.stages
                    if isinstance(stage, PipelineStage) and stage.status()}
    except (LockError, DvcException):
        return None


def address(stage: Any, root_dir: str) -> str:
    """How `dvc repro`, run in the repository root, names `stage`."""
    dvcfile = os.path.relpath(stage.dvcfile.path, root_dir)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def dvc(*args: str) -> list[str]:
    """The command line of `dvc ARGS` with this interpreter's DVC."""
    return [sys.executable, "-m", "dvc", *args]


def dvc_env() -> dict[str, str]:
    """The environment for DVC and the stage commands: this interpreter's bin first on PATH
    (dvc.yaml calls `siamese`), and unbuffered Python so that output streams line by line."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


RUNNING: set[int] = set()  # the process groups of the stage commands running now


def stream_command(args: list[str], cwd: Path,
                   timeout_s: float = 0) -> Generator[str, None, int | None]:
    """Run `args` in `cwd` in a process group of its own, yield its output (stdout and
    stderr) line by line; the generator's return value is the exit status, or None when
    `timeout_s` (> 0) ran out first and the group was killed."""
    with subprocess.Popen(
        with_parent(args), cwd=cwd, env=dvc_env(),  # kill -9 of the flow takes it along
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        errors="replace", start_new_session=True,
    ) as proc:
        RUNNING.add(proc.pid)
        timer = threading.Timer(timeout_s, kill_group, (proc.pid,))
        if timeout_s > 0:
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                yield line.rstrip("\n")
            status = proc.wait()
            return None if timeout_s > 0 and not timer.is_alive() else status
        finally:
            timer.cancel()
            RUNNING.discard(proc.pid)


def kill_group(group: int, signum: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signum)


def stop_running(signum: int, _frame: Any) -> None:
    """SIGTERM or SIGINT: pass it to the running stage commands' process groups, then end this
    process (SystemExit or KeyboardInterrupt, so that `finally` and atexit run: a temporary
    Prefect server stops with it)."""
    for group in list(RUNNING):
        kill_group(group, signal.SIGTERM)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def forward_signals() -> None:
    """From now on (main thread only), SIGTERM and SIGINT stop the running stage at once."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop_running)


def run_logged(args: list[str], cwd: Path, logger: Any,
               timeout_s: float = 0) -> tuple[int | None, list[str]]:
    """Run `args`, logging each output line; return the exit status (None: timed out) and all
    the lines."""
    lines: list[str] = []
    output = stream_command(args, cwd, timeout_s)
    while True:
        try:
            line = next(output)
        except StopIteration as done:
            return done.value, lines
        logger.info(line)
        lines.append(line)


def stage_outcome(root: Path, stage: str, force: bool = False) -> str:
    """What `dvc repro --single-item STAGE [--force]` in `root` is about to do (ran, restored
    or up to date), asked of DVC's API just before it runs, under DVC's lock: in a checkout
    that runs one flow at a time (flows/guard.py) nothing else changes it in between.
    "unknown" where DVC cannot tell (its lock held by another DVC process, say)."""
    if force:
        return "ran"
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.repo import Repo, lock_repo

    try:
        # In the repository root, as DVC's commands run: its run cache makes stages from paths
        # relative to the working directory. (The flow's tasks run one at a time.)
        with (contextlib.chdir(root), Repo(str(root)) as repo, lock_repo(repo),
              remote.quiet_dvc(), warnings.catch_warnings()):
            warnings.simplefilter("ignore", DeprecationWarning)  # DVC's own, about its trie
            named = {address(s, repo.root_dir): s for s in repo.index.stages}
            return planned_outcome(repo, named[stage]) if stage in named else "unknown"
    except (LockError, DvcException):
        return "unknown"


def planned_outcome(repo: Any, stage: Any) -> str:
    """DVC's reproduce's own checks, in its order: a stage that did not change is up to date;
    one whose outputs the run cache holds for its deps (or the DVC cache, where only its
    outputs are missing) is restored from there; any other runs."""
    from dvc.stage.cache import RunCacheNotFoundError

    if not stage.changed():
        return "up to date"
    try:
        repo.stage_cache.restore(stage, dry=True)
    except RunCacheNotFoundError:
        return "ran"
    return "restored"
