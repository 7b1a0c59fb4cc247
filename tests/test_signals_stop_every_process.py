"""Stopping is prompt and complete: kill -9 of `dvc repro` takes its stage with it, and SIGTERM
to `siamese run` stops the running stage and the temporary Prefect server at once.

The stage is a real `siamese fetch` from a server that accepts the connection and never
answers, so it would wait a minute on its own."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import REPO
from tests.flowkit import alive, cmdline, descendants, wait_for

pytestmark = pytest.mark.slow  # a Prefect server starts for `siamese run` (~20 s)

BIN = Path(sys.executable).parent


@pytest.fixture
def hanging_fetch(tmp_path):
    """A DVC project whose one stage is `siamese fetch` from a server that never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    params = (REPO / "params.yaml").read_text()
    start = params.index("  source: ", params.index("\nfetch:"))
    end = params.index("\n", start)
    (tmp_path / "params.yaml").write_text(params[:start] + f"  source: {url}" + params[end:])
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  fetch:\n    cmd: siamese fetch\n    params: [fetch]\n    outs: [data/raw]\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMNIGLOT_SOURCE", "PREFECT_API_URL")}
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", PREFECT_HOME=str(tmp_path / ".prefect"),
               DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(args, cwd=tmp_path, env=env, check=True)
    yield tmp_path, env
    server.close()


def fetch_under(pid: int) -> int | None:
    return next((p for p in descendants(pid) if "siamese fetch" in cmdline(p)), None)


@pytest.mark.parametrize("shell", [None, "/bin/bash"], ids=["no-SHELL-so-sh-c", "bash"])
def test_kill_9_of_dvc_repro_takes_the_stage_with_it(hanging_fetch, shell):
    """DVC runs a stage through $SHELL, or /bin/sh when it is unset (cron, CI); dash's `sh -c`
    stays between DVC and the stage instead of exec'ing it, bash does not."""
    root, env = hanging_fetch
    env = {k: v for k, v in env.items() if k != "SHELL"} | ({"SHELL": shell} if shell else {})
    dvc = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=root, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    try:
        assert wait_for(lambda: fetch_under(dvc.pid), 60), "the stage never started"
        stage = fetch_under(dvc.pid)
        dvc.kill()
        dvc.wait()
        assert wait_for(lambda: not alive(stage), 10), f"{cmdline(stage)} outlived dvc repro"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dvc.pid, signal.SIGKILL)


def test_sigterm_to_siamese_run_stops_the_stage_and_the_prefect_server(hanging_fetch):
    root, env = hanging_fetch
    run = subprocess.Popen([str(BIN / "siamese"), "run"], cwd=root, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        assert wait_for(lambda: fetch_under(run.pid), 180), "the stage never started"
        everything = descendants(run.pid)
        assert any("uvicorn" in cmdline(p) or "prefect" in cmdline(p) for p in everything)
        started = time.monotonic()
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=60)
        assert time.monotonic() - started < 20, output
        assert run.returncode != 0
        assert wait_for(lambda: not any(alive(p) for p in everything), 10), [
            cmdline(p) for p in everything if alive(p)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)


def server_under(pid: int) -> int | None:
    return next((p for p in descendants(pid) if "uvicorn" in cmdline(p)), None)


def test_a_lost_prefect_server_ends_the_run_in_one_line_within_seconds(hanging_fetch):
    root, env = hanging_fetch
    run = subprocess.Popen([str(BIN / "siamese"), "run"], cwd=root, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        assert wait_for(lambda: fetch_under(run.pid), 180), "the stage never started"
        everything = descendants(run.pid)
        server = server_under(run.pid)
        assert server, [cmdline(p) for p in everything]
        started = time.monotonic()
        os.kill(server, signal.SIGKILL)
        output, _ = run.communicate(timeout=120)
        took = time.monotonic() - started
        assert run.returncode == 1, output
        assert "Traceback" not in output, output
        last = output.strip().splitlines()[-1]
        assert last.startswith("siamese run: error: lost the Prefect server"), output
        assert took < 30, output
        assert wait_for(lambda: not any(alive(p) for p in everything), 10), [
            cmdline(p) for p in everything if alive(p)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
