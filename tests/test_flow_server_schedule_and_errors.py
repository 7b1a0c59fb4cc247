"""`siamese run`/`serve` as users start them: against a Prefect server, on a schedule, and
with the mistakes they make (a bad cron, a server that is not there)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from flows.server import health
from tests import REPO
from tests.flowkit import (
    BIN,
    OFFLINE,
    alive,
    api,
    cli_env,
    cmdline,
    descendants,
    make_tiny_project,
    run,
    set_param,
)

pytestmark = pytest.mark.slow
COMPLETED_FLOW = re.compile(r"Flow run '[^']+' - Finished in state Completed\(\)")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def session_processes(sid: int) -> list[str]:
    """The processes (pid and command) still alive in session `sid`."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(f"{stat.parent.name}: {cmdline}")
    return alive


def stop_session(proc: subprocess.Popen, timeout: float) -> list[str]:
    """SIGTERM `proc` (a session leader), wait; return what of its session was left running
    (then killed, so a failing test leaves nothing behind)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while (left := session_processes(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    return left


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(1)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")


def test_prefect_toml_sets_the_offline_defaults_an_environment_variable_wins(tmp_path):
    """prefect.toml (read from the current directory, the repository root) puts PREFECT_HOME
    in its .prefect/ and turns analytics off; importing the flows changes no environment."""
    (tmp_path / "prefect.toml").write_bytes((REPO / "prefect.toml").read_bytes())
    show = "import os, flows; from prefect.settings import get_current_settings as g; " \
        "s = g(); print(s.home.resolve(), s.server.analytics_enabled, " \
        "s.server.ephemeral.startup_timeout_seconds, os.environ.get('PREFECT_HOME'))"
    env = cli_env(tmp_path, PYTHONPATH=str(REPO))
    for name in ("PREFECT_HOME", *OFFLINE):
        env.pop(name)
    done = subprocess.run([sys.executable, "-c", show], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(tmp_path.resolve() / ".prefect"), "False", "120", "None"]
    env.update(PREFECT_HOME="/somewhere/else", PREFECT_SERVER_ANALYTICS_ENABLED="true")
    done = subprocess.run([sys.executable, "-c", show], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["/somewhere/else", "True", "120", "/somewhere/else"]
    assert "analytics = false" in (REPO / ".dvc" / "config").read_text()


def test_bad_cron_and_unreachable_server_fail_clearly(tmp_path):
    project = make_tiny_project(tmp_path / "tiny")
    env = cli_env(tmp_path / "home")
    bad = subprocess.run([str(BIN / "siamese"), "serve", "--cron", "61 * * *"], cwd=project,
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "'61 * * *' is not a valid cron schedule" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout

    nowhere = f"http://127.0.0.1:{free_port()}/api"
    start = time.monotonic()
    done = subprocess.run([str(BIN / "siamese"), "run"], cwd=project, capture_output=True,
                          text=True, env=cli_env(tmp_path / "home", PREFECT_API_URL=nowhere))
    assert done.returncode == 1
    assert f"PREFECT_API_URL={nowhere}: the Prefect server does not answer" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) <= 3
    assert not (project / "dvc.lock").exists()  # nothing ran
    assert time.monotonic() - start < 60


def test_flow_run_on_a_started_server_is_visible_in_its_api(server, tmp_path):
    project = make_tiny_project(tmp_path / "tiny")
    since = datetime.now(UTC).isoformat()  # the server holds other tests' runs too
    done = subprocess.run([str(BIN / "siamese"), "run"], cwd=project, capture_output=True,
                          text=True, env=cli_env(tmp_path / "home", PREFECT_API_URL=server))
    assert done.returncode == 0, done.stderr
    assert "Starting temporary server" not in done.stdout + done.stderr
    runs = api(server, "/flow_runs/filter", {"flows": {"name": {"any_": ["omniglot-pipeline"]}},
                                             "flow_runs": {"start_time": {"after_": since}}})
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
    tasks = api(server, "/task_runs/filter", {"flow_runs": {"id": {"any_": [runs[0]["id"]]}}})
    assert sorted(t["name"] for t in tasks) == ["evaluate", "fetch", "index", "train"]
    assert {t["state_type"] for t in tasks} == {"COMPLETED"}

    set_param(project, "train", "fail", True)  # a failing stage: its log, then a short error
    failed = subprocess.run([str(BIN / "siamese"), "run"], cwd=project, capture_output=True,
                            text=True, env=cli_env(tmp_path / "home", PREFECT_API_URL=server))
    assert failed.returncode == 1
    assert "siamese run: error: stage 'train' failed" in failed.stderr
    assert "train: boom" in failed.stderr and "Traceback" not in failed.stdout + failed.stderr
    runs = api(server, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_DESC"})
    assert runs[0]["state_type"] == "FAILED" and "train: boom" in runs[0]["state"]["message"]
    tasks = api(server, "/task_runs/filter", {"flow_runs": {"id": {"any_": [runs[0]["id"]]}}})
    assert {t["name"]: t["state_type"] for t in tasks} == {
        "fetch": "COMPLETED", "index": "COMPLETED", "train": "FAILED"}


def test_prefect_yaml_deploys_to_a_work_pool(server, tmp_path):
    for name in ("prefect.yaml", "params.yaml", "dvc.yaml"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    for package in ("flows", "tasks"):
        (tmp_path / package).symlink_to(REPO / package)
    env = cli_env(tmp_path / "home", PREFECT_API_URL=server)
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    subprocess.run([*prefect, "work-pool", "create", "omniglot", "--type", "process",
                    "--overwrite"], cwd=tmp_path, env=env, check=True, capture_output=True)
    deployed = subprocess.run([*prefect, "deploy", "--all"], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    found = {d["name"]: d for d in api(server, "/deployments/filter")}
    assert set(found) == {"nightly", "sweep", "sweep-point"}
    assert found["sweep-point"]["entrypoint"] == "flows/poolsweep.py:sweep_point_flow"
    nightly = found["nightly"]
    assert nightly["work_pool_name"] == "omniglot"
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 3 * * *"]
    assert nightly["entrypoint"] == "flows/pipeline.py:pipeline_flow"
    assert found["sweep"]["parameters"]["grid"] == ["train.lr=0.001,0.002"]
    assert nightly["parameters"]["push"] is True
    # Each worker's own checkout: the pull step names the variable, read where the run starts.
    assert nightly["pull_steps"] == [{"flows.worker.enter_checkout": {"variable": "SIAMESE_REPO"}}]


def start_serve(tmp_path: Path, *args: str, **env: str) -> tuple[Path, subprocess.Popen, Path]:
    """`siamese serve ARGS` on the tiny project in a session of its own, its output logged:
    (the project, the process, the log)."""
    project = make_tiny_project(tmp_path / "tiny")
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(BIN / "siamese"), "serve", *args], cwd=project, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env=cli_env(tmp_path / "home", **env))
    return project, proc, log_path


def test_served_schedule_starts_runs_and_sigterm_stops_everything(tmp_path):
    project, proc, log_path = start_serve(tmp_path, "--interval", "2", "--name", "test-schedule",
                                          PREFECT_RUNNER_POLL_FREQUENCY="1")
    try:
        wait_for(lambda: len(COMPLETED_FLOW.findall(log_path.read_text())) >= 2, 240,
                 "two scheduled runs")
    finally:
        left = stop_session(proc, 60)
    output = log_path.read_text()
    assert not left, f"left running after SIGTERM: {left}\n{output[-3000:]}"
    assert "starting a local Prefect server" in output
    # `siamese lineage --runs` reads them back from the same Prefect home's database.
    listed = run([str(BIN / "siamese"), "lineage", "--runs", "--json"], project,
                 **cli_env(tmp_path / "home"))
    served = [r for r in json.loads(listed.stdout)["runs"] if r["state"] == "Completed"]
    assert len(served) >= 2 and all(r["deployment"] for r in served)
    assert {r["stages"]["train"] for r in served[:2]} == {"ran", "up to date"}
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == ["evaluate", "fetch", "index", "train"]  # a run built all
    # SIGTERM cancels a run in flight (DVC may have removed that stage's outputs already);
    # DVC is left consistent: `dvc repro` restores or rebuilds what the cancelled run lost.
    run(["dvc", "repro"], project)
    assert "up to date" in run(["dvc", "status"], project).stdout


def test_kill_9_of_serve_takes_its_server_with_it(tmp_path):
    """The schedule's server is `siamese serve`'s child, which dies with it: no server is left
    to a rerun after kill -9."""
    _, proc, log_path = start_serve(tmp_path, "--cron", "0 0 1 1 *", "--name", "test-kill")
    try:
        url = wait_for(lambda: re.search(r"schedule: (http\S+)", log_path.read_text()), 60,
                       "the server's URL")[1]
        wait_for(lambda: health(url) == "answers", 120, "the server")
        below = {pid: cmdline(pid) for pid in descendants(proc.pid)}
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while health(url) != "refused" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert health(url) == "refused", "the server still answers after kill -9 of serve"
        assert not [command for pid, command in below.items() if alive(pid)]
    finally:
        stop_session(proc, 10)
