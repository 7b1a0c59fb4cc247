"""The Prefect server the flows talk to: the one at PREFECT_API_URL, checked before a run, or,
for `siamese serve` without one, a local server started with Prefect's own
`prefect server start --background` (its PID file PREFECT_HOME/server.pid) and stopped with
`prefect server stop`."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from siamese.atomic import running
from siamese.errors import PipelineError


def check_api() -> None:
    """With PREFECT_API_URL set, fail early and clearly when that server does not answer."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        return
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise PipelineError(
            f"PREFECT_API_URL={url}: the Prefect server does not answer ({type(error).__name__}: "
            f"{error}). Start it (`prefect server start`), fix the URL, or unset PREFECT_API_URL "
            "to run with a temporary local server."
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def schedule_server(root: Path, timeout: float = 120.0) -> Iterator[str]:
    """The API URL of the server that keeps `siamese serve`'s schedule: PREFECT_API_URL's, or
    else a local one that this starts with `prefect server start --background` and stops with
    `prefect server stop` when it ends (SIGTERM included); one it did not start it leaves."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        yield url
        return
    env = {**os.environ, "PREFECT_HOME": str(Path(get_current_settings().home).resolve())}
    env.pop("PREFECT_API_URL", None)
    port = free_port()  # Prefect's default, 4200, may be another server's
    url = f"http://127.0.0.1:{port}/api"
    pid_file = Path(env["PREFECT_HOME"]) / "server.pid"  # where `prefect server` keeps it
    print(f"starting a local Prefect server for the schedule: {url} "
          f"(`prefect server start --background`, its PID in {pid_file})")
    started = prefect_cli(root, env, "server", "start", "--background", "--host", "127.0.0.1",
                          "--port", str(port))
    if started.returncode != 0:
        reason = " ".join(started.stdout.split()[-40:] + started.stderr.split()[-40:])
        raise PipelineError(f"`prefect server start --background` failed: {reason}")
    pid = int(pid_file.read_text())
    try:
        wait_for_server(url, pid, timeout)
        yield url
    finally:
        prefect_cli(root, env, "server", "stop")
        wait_for_exit(pid, 30.0)


def prefect_cli(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prefect", *args], cwd=root, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    if not running(pid):
        return False
    state = Path(f"/proc/{pid}/stat")
    return not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_server(url: str, pid: int, timeout: float) -> None:
    """Until `url` answers; a PipelineError when the server's process `pid` ends first or it
    takes longer than `timeout` seconds (a background server logs nowhere)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            if not alive(pid) or time.monotonic() > deadline:
                raise PipelineError(
                    f"the local Prefect server (pid {pid}) did not start; a background server "
                    "logs nowhere: run `prefect server start` in the foreground to see why"
                ) from None
            time.sleep(0.5)


def wait_for_exit(pid: int, timeout: float) -> None:
    """`prefect server stop` sends SIGTERM and returns; wait for the server to end, else kill."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.2)
