"""One run at a time per checkout, across every deployment (the pipeline flow, a sweep, a
sweep's point on a worker): two runs in one checkout would meet at DVC's lock, and the second
would fail there.

The guard is a lock on a file of the checkout, `.dvc/tmp/checkout-run.lock` (`flock`): the
kernel releases it when its holder ends, however it ends (kill -9 included), so it cannot
leak. Its holder writes who it is into it (pid, command, flow run, since when); a second run
says in one line whom it waits for, and gives up after `wait_s` seconds in one line.

A run killed by a signal cannot report its end, so Prefect would show it Running for ever.
Each run in the checkout, holding or waiting, keeps a record (`.dvc/tmp/checkout-runs/PID`:
its process and its flow run) and removes it when it ends; the next run to start finds the
records of processes no longer running and sets their flow runs, if not yet final, Crashed.

Prefect's own concurrency limits stay for what needs a real server: the `nightly`
deployment's `concurrency_limit: 1` in prefect.yaml queues its runs on the server, across
workers.
"""

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from siamese.errors import PipelineError

LOCK = Path(".dvc/tmp/checkout-run.lock")
RECORDS = Path(".dvc/tmp/checkout-runs")
WAIT_S = 4 * 3600.0  # as long as the nightly run may take (its timeout_s)
POLL_S = 0.5


@contextmanager
def checkout_slot(root: Path, wait_s: float = WAIT_S) -> Iterator[None]:
    """The checkout, held by this flow run while the `with` block runs; first, the flow runs of
    this checkout's killed runs are marked Crashed."""
    flow_run = current_flow_run()
    crash_dead_runs(root)
    with run_record(root, flow_run), hold_checkout(root, wait_s, holder(flow_run)):
        yield


@contextmanager
def hold_checkout(root: Path, wait_s: float, who: str) -> Iterator[None]:
    """`flock` on the checkout's lock file while the block runs; `who` and since when are
    written into it. If another process holds it: one line naming that one, then a wait of at
    most `wait_s` seconds, then a PipelineError in one line."""
    path = root / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        wait_for_lock(fd, path, wait_s)
        since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{who} since {since}".encode(), 0)
        yield
    finally:
        os.close(fd)  # the lock goes with it


def wait_for_lock(fd: int, path: Path, wait_s: float) -> None:
    if try_lock(fd):
        return
    other = held_by(path)
    print(f"{command()}: waiting for {other}, which holds this checkout ({path}); "
          f"giving up after {wait_s:.0f} s", flush=True)
    deadline = time.monotonic() + wait_s
    while not try_lock(fd):
        if time.monotonic() >= deadline:
            raise PipelineError(f"this checkout is still held by {held_by(path)}; gave up "
                                f"after {wait_s:.0f} s of waiting (--wait): rerun once it ends")
        time.sleep(POLL_S)


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def held_by(path: Path) -> str:
    """What the holder wrote into the lock file (it writes just after it takes the lock)."""
    for _ in range(10):
        with suppress(OSError):
            if text := path.read_text().strip():
                return text
        time.sleep(0.1)
    return "a run that has not said who it is"


def holder(flow_run: dict[str, str] | None) -> str:
    run = f", flow run '{flow_run['name']}' {flow_run['id']}" if flow_run else ""
    return f"pid {os.getpid()} (`{command()}`{run})"


def command() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"


def current_flow_run() -> dict[str, str] | None:
    """The id and name of the flow run this process runs, if any."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return {"id": str(context.flow_run.id), "name": context.flow_run.name}


@contextmanager
def run_record(root: Path, flow_run: dict[str, str] | None) -> Iterator[None]:
    """This process's record in the checkout while the block runs (also while it waits)."""
    path = root / RECORDS / str(os.getpid())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": os.getpid(), "started": process_start(os.getpid()),
                                "flow_run": flow_run}))
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def process_start(pid: int) -> str | None:
    """When `pid` started, in clock ticks since boot (Linux), so that a reused pid is not taken
    for the process that had it; None where that is unknown or `pid` is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def still_running(record: dict) -> bool:
    from siamese.atomic import running  # with numpy: not for `siamese --help`, which reads WAIT_S

    started = process_start(record["pid"])
    return running(record["pid"]) and (started is None or started == record["started"])


def crash_dead_runs(root: Path) -> None:
    """Mark Crashed the flow runs, not yet final, of the records whose process is gone."""
    for path in sorted((root / RECORDS).glob("[0-9]*")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if still_running(record):
            continue
        if record.get("flow_run"):
            mark_crashed(record["flow_run"], record["pid"])
        path.unlink(missing_ok=True)


def mark_crashed(flow_run: dict[str, str], pid: int) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    message = (f"its process (pid {pid}) ended without reporting an end (killed by a signal?); "
               f"marked by pid {os.getpid()}, the next run in this checkout")
    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(UUID(flow_run["id"])).state
        except ObjectNotFound:  # recorded by another Prefect server
            return
        if state is None or not state.is_final():
            client.set_flow_run_state(flow_run["id"], Crashed(message=message), force=True)
            print(f"flow run '{flow_run['name']}' {flow_run['id']}: marked Crashed: {message}",
                  flush=True)
