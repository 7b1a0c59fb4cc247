"""The Prefect server the flows talk to: the one at PREFECT_API_URL, checked before a run; or
else Prefect's temporary server; or, for `siamese serve` without PREFECT_API_URL, a local
`prefect server start` with its scheduler. Either of the last two is this process's child and
dies with it, kill -9 included."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from siamese.atomic import running
from siamese.errors import PipelineError
from siamese.processes import children_of, with_parent

# How long a server may not answer before a run gives it up: gone (connection refused), or
# there but silent (timeouts; a busy machine answers slowly, and a false alarm costs a stage).
GONE_AFTER_S = 5.0
SILENT_AFTER_S = 60.0
HEALTH_TIMEOUT_S = 5.0


def check_api() -> None:
    """With PREFECT_API_URL set, fail early and clearly when that server does not answer;
    without it, start Prefect's temporary server now (start_temporary_server). Call it from the
    main thread, first thing."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    url = settings.api.url
    if not url:
        if settings.server.ephemeral.enabled:
            start_temporary_server()
        return
    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise PipelineError(
            f"PREFECT_API_URL={url}: the Prefect server does not answer ({type(error).__name__}: "
            f"{error}). Start it (`prefect server start`), fix the URL, or unset PREFECT_API_URL "
            "to run with a temporary local server."
        )


def start_temporary_server() -> None:
    """Start the temporary server that Prefect's clients in this process use (its one
    instance), as a child that gets SIGTERM when this process ends, however it ends: kill -9
    of a run leaves no server behind. Prefect's own would outlive such a kill (it stops at
    exit only). The parent-death signal follows the thread that started the child, so this
    starts it from the caller's thread, the main one, before Prefect might from another."""
    from prefect.server.api.server import SubprocessASGIServer

    class DiesWithThisProcess(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            assert self.port is not None
            return temporary_uvicorn(self.port)

    DiesWithThisProcess().start()  # the instance already there, if Prefect started one


def temporary_uvicorn(port: int) -> subprocess.Popen:
    """Prefect's temporary server on `port`, started as Prefect 3.9 starts it (its uvicorn
    command and environment: SubprocessASGIServer._run_uvicorn_command), dying with this
    process."""
    import prefect
    from prefect.settings import get_current_settings

    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
               "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1",
           **get_current_settings().to_environment_variables(exclude_unset=True)}
    return subprocess.Popen(with_parent(command), env=env)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def schedule_server(root: Path, timeout: float = 120.0) -> Iterator[str]:
    """The API URL of the server that keeps `siamese serve`'s schedule: PREFECT_API_URL's, or
    else a local one that this starts as its child, `prefect server start` (its log
    PREFECT_HOME/server.log), and stops when it ends: SIGTERM or Ctrl-C, and kill -9 too, since
    the child gets SIGTERM when this process dies. One it did not start it leaves."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        yield url
        return
    home = Path(get_current_settings().home).resolve()
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    port = free_port()  # Prefect's default, 4200, may be another server's
    url = f"http://127.0.0.1:{port}/api"
    log_path = home / "server.log"
    print(f"starting a local Prefect server for the schedule: {url} (`prefect server start`, "
          f"its log {log_path})")
    home.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            with_parent([sys.executable, "-m", "prefect", "server", "start", "--host",
                         "127.0.0.1", "--port", str(port)]),
            cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_server(url, server.pid, log_path, timeout)
        yield url
    finally:
        stop(server, 30.0)


def alive(pid: int) -> bool:
    """Running, and not a zombie waiting for its parent."""
    if not running(pid):
        return False
    state = Path(f"/proc/{pid}/stat")
    return not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_server(url: str, pid: int, log_path: Path, timeout: float) -> None:
    """Until `url` answers; a PipelineError when the server's process `pid` ends first or it
    takes longer than `timeout` seconds."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            if not alive(pid) or time.monotonic() > deadline:
                raise PipelineError(f"the local Prefect server (pid {pid}) did not start: "
                                    f"its log {log_path} says why") from None
            time.sleep(0.5)


def stop(server: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to `server`, then SIGKILL if it has not ended within `timeout` seconds."""
    server.terminate()
    try:
        server.wait(timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@contextmanager
def watch_server(url: str, stop_work: Callable[[], None], every_s: float = 1.0) -> Iterator[None]:
    """While the block runs, poll `url`'s health in a thread. A run whose server is lost can
    record nothing more, and Prefect's client would retry each call for a minute, so once the
    server is gone (GONE_AFTER_S) or silent (SILENT_AFTER_S): `stop_work()`, SIGTERM to this
    process's children (a temporary server among them), one line on stderr, exit status 1."""
    done = threading.Event()
    thread = threading.Thread(target=watch, args=(url, stop_work, every_s, done),
                              name="watch-prefect-server", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def watch(url: str, stop_work: Callable[[], None], every_s: float, done: threading.Event) -> None:
    answered, refused_since = time.monotonic(), None
    while not done.wait(every_s):
        now, answer = time.monotonic(), health(url)
        if answer == "answers":
            answered, refused_since = now, None
        elif answer == "refused":
            refused_since = refused_since or now
        gone = refused_since is not None and now - refused_since >= GONE_AFTER_S
        if gone or now - answered >= SILENT_AFTER_S:
            give_up(url, "gone" if gone else f"silent for {now - answered:.0f} s", stop_work)


def health(url: str) -> str:
    """'answers' (any HTTP status: a server that wants credentials is there), 'refused' (no
    process listens), or 'silent'."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S):
            return "answers"
    except urllib.error.HTTPError:
        return "answers"
    except OSError as e:
        refused = isinstance(e, ConnectionRefusedError) or isinstance(
            getattr(e, "reason", None), ConnectionRefusedError)
        return "refused" if refused else "silent"


def give_up(url: str, why: str, stop_work: Callable[[], None]) -> None:
    stop_work()
    for child in children_of(os.getpid()):
        with suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)
    # On a line of its own: Prefect's log handler may have left one unfinished.
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:2]])
    print(f"\n{command}: error: lost the Prefect server at {url.rstrip('/')} ({why}): stopped "
          "the running stage; the stages that finished are kept, rerun when a server answers",
          file=sys.stderr, flush=True)
    os._exit(1)
