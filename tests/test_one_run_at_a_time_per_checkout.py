"""One run at a time per checkout (flows/guard.py), with real `siamese` commands and Prefect:
`siamese run` (the nightly pipeline) and `siamese sweep` started together take turns, neither
failing at DVC's lock; kill -9 of a `siamese run` on Prefect's temporary server leaves no
server, no held checkout and no flow run Running behind it."""

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.flowkit import (
    BIN,
    OFFLINE,
    alive,
    cli_env,
    cmdline,
    descendants,
    git_commit_all,
    make_tiny_project,
    run,
    wait_for,
)

pytestmark = pytest.mark.slow  # a Prefect server, a flow run and a sweep

SLOW_TRAIN = 'elif stage == "train":\n'


def test_run_and_sweep_together_take_turns(prefect_api, tmp_path):
    project = make_tiny_project(tmp_path / "tiny")
    spans = tmp_path / "train-spans.txt"
    stages = (project / "stages.py").read_text()
    assert SLOW_TRAIN in stages
    (project / "stages.py").write_text(stages.replace(SLOW_TRAIN, SLOW_TRAIN + (
        "    import time\n"
        f"    open({str(spans)!r}, 'a').write(f'start {{time.time()}}\\n')\n"
        "    time.sleep(6)\n"
        f"    open({str(spans)!r}, 'a').write(f'end {{time.time()}}\\n')\n")))
    run(["dvc", "repro"], project)
    git_commit_all(project, "built")
    spans.unlink()
    env = {**OFFLINE, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "home")}
    commands = [[str(BIN / "siamese"), "run", "--force"],
                [str(BIN / "siamese"), "sweep", "--set", "train.lr=0.5"]]
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    procs = []
    for command in commands:
        procs.append(subprocess.Popen(command, cwd=project, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT,
                                      env={**os.environ, **env, "PATH": path}))
        time.sleep(0.5)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not any("lock" in out and "held" in out for out in outputs)
    times = [float(line.split()[1]) for line in spans.read_text().splitlines()]
    starts, ends = times[0::2], times[1::2]
    assert len(starts) == 2 and len(ends) == 2
    assert ends[0] <= starts[1]  # one training at a time: the second began after the first


def flow_run_states(home: Path) -> list[str]:
    """The state of each flow run in a Prefect home's database, oldest first."""
    with contextlib.closing(sqlite3.connect(home / "prefect.db")) as db:
        return [row[0] for row in db.execute(
            "SELECT state_type FROM flow_run ORDER BY created")]


def test_kill_9_of_a_run_leaves_no_server_no_held_checkout_and_no_running_flow_run(tmp_path):
    """Prefect's temporary server (no PREFECT_API_URL), as an operator runs it: a second run
    says whom it waits for and gives up, a third waiting one ends at SIGTERM; after kill -9 of
    the first, its server and stage end, the next run completes, and no run is left Running."""
    project = make_tiny_project(tmp_path / "tiny")
    started, go = tmp_path / "train-started", tmp_path / "go"
    stages = (project / "stages.py").read_text()
    (project / "stages.py").write_text(stages.replace(SLOW_TRAIN, SLOW_TRAIN + (
        "    import time\n"
        "    from siamese.processes import die_with_dvc\n"
        "    die_with_dvc()  # as the project's stage commands do\n"
        f"    open({str(started)!r}, 'w').close()\n"
        f"    while not os.path.exists({str(go)!r}):\n"
        "        time.sleep(0.2)\n")))
    git_commit_all(project, "train waits")
    home = tmp_path / "home"
    env = cli_env(home)
    first = subprocess.Popen([str(BIN / "siamese"), "run"], cwd=project, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        assert wait_for(started.exists, 240), "train never started"
        below = {pid: cmdline(pid) for pid in descendants(first.pid)}
        server = [pid for pid, command in below.items() if "uvicorn" in command]
        stage = [pid for pid, command in below.items() if "stages.py train" in command]
        assert server and stage, below

        second = subprocess.run([str(BIN / "siamese"), "run", "--wait", "2"], cwd=project,
                                env=env, capture_output=True, text=True, timeout=300)
        said = second.stdout + second.stderr
        assert second.returncode == 1, said
        waiting = [line for line in said.splitlines() if "waiting for" in line]
        assert len(waiting) == 1 and f"pid {first.pid} (`siamese run`" in waiting[0], said
        assert " since " in waiting[0] and waiting[0].endswith("giving up after 2 s"), said
        assert "Traceback" not in said, said
        errors = [line for line in said.splitlines() if line.startswith("siamese run: error:")]
        assert len(errors) == 1 and errors[0].startswith(
            f"siamese run: error: this checkout is still held by pid {first.pid} ") and \
            errors[0].endswith("; gave up after 2 s of waiting (--wait): rerun once it ends"), said

        waiter = subprocess.Popen([str(BIN / "siamese"), "run", "--wait", "120"], cwd=project,
                                  env=env, text=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        assert waiter.stdout is not None
        said = next((line for line in waiter.stdout if "waiting for" in line), "")
        assert f"pid {first.pid} (`siamese run`" in said, said
        signalled = time.monotonic()
        waiter.send_signal(signal.SIGTERM)  # a waiting run stops at once
        said += waiter.communicate(timeout=60)[0]
        assert waiter.returncode != 0 and time.monotonic() - signalled < 15, said

        first.kill()  # kill -9 of `siamese run` itself, not of its process group
        first.wait()
        assert wait_for(lambda: not any(alive(p) for p in server + stage), 20), [
            command for pid, command in below.items() if alive(pid)]
        go.touch()
        third = subprocess.run([str(BIN / "siamese"), "run", "--wait", "60"], cwd=project,
                               env=env, capture_output=True, text=True, timeout=300)
        assert third.returncode == 0, third.stdout + third.stderr
        assert "marked Crashed" in third.stdout + third.stderr
        assert flow_run_states(home) == ["CRASHED", "FAILED", "CRASHED", "COMPLETED"]
    finally:
        go.touch()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)
