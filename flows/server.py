"""The Prefect server the flows talk to: the one at PREFECT_API_URL, checked before a run, or,
for `siamese serve` without one, a local server that serve starts and stops."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
def local_server(timeout: float = 120.0) -> Iterator[str]:
    """Start `prefect server start` on a free local port, yield its API URL, stop it after."""
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path = Path(os.environ.get("PREFECT_HOME", ".prefect")) / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"starting a local Prefect server for the schedule: {url} (log: {log_path})")
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    message = f"the local Prefect server did not start; see {log_path}"
                    raise PipelineError(message) from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
