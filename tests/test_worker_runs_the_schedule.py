"""A real Prefect worker runs the nightly deployment of prefect.yaml, and its results travel
through a DVC remote: a Prefect server (the session's), the omniglot work pool, `prefect deploy`,
`prefect deployment run`, and `prefect worker start` in a second clone of the project (the
tiny profile of tests/flowkit.py, as in tests/test_pipeline_flow_end_to_end.py) that runs the
pipeline and pushes to a shared local-folder remote; a third fresh clone then pulls and has
everything, without training. The worker's checkout comes from its own SIAMESE_REPO, read
when the run starts."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.flowkit import (
    BIN,
    HOLD_LOCK,
    api,
    cli_env,
    copy_project,
    git_commit_all,
    init_repo,
    run,
    tiny_params,
)

pytestmark = pytest.mark.slow
PREFECT = [sys.executable, "-m", "prefect", "--no-prompt"]


@pytest.fixture(scope="module")
def origin(tmp_path_factory, synthetic_source) -> tuple[Path, Path]:
    """The project's files, tiny profile, in a git repo whose default DVC remote is a shared
    local folder (committed in .dvc/config)."""
    base = tmp_path_factory.mktemp("worker")
    root, storage = base / "origin", base / "storage"
    root.mkdir()
    storage.mkdir()
    copy_project(root)
    tiny_params(root, synthetic_source)
    init_repo(root)
    run(["dvc", "remote", "add", "-d", "storage", str(storage)], root)
    git_commit_all(root, "tiny profile, shared remote")
    return root, storage


def clone(source: Path, dest: Path) -> Path:
    run(["git", "clone", "-q", str(source), str(dest)], dest.parent)
    return dest


def env_for(checkout: Path, home: Path, url: str, **extra: str) -> dict[str, str]:
    """A shell of one machine: its Prefect home, the server, its checkout's code; the data
    comes from params.yaml (the tiny profile's synthetic source)."""
    env = cli_env(home, PREFECT_API_URL=url, PYTHONPATH=str(checkout), **extra)
    env.pop("OMNIGLOT_SOURCE", None)
    return env


def prefect(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 180):
    done = subprocess.run([*PREFECT, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"prefect {args}:\n{done.stdout}\n{done.stderr}"
    return done


def deploy(checkout: Path, home: Path, url: str) -> None:
    """Create the pool and deploy the nightly run, from a shell whose SIAMESE_REPO is wrong
    (the worker's own must count)."""
    deployer = env_for(checkout, home / "deployer", url, SIAMESE_REPO="/deployer/not/here")
    prefect(["work-pool", "create", "omniglot", "--type", "process", "--overwrite"], checkout,
            deployer)  # tests/test_flow_server_schedule_and_errors.py may have created it
    prefect(["deploy", "--name", "nightly"], checkout, deployer)


def run_once(checkout: Path, home: Path, url: str) -> dict:
    """Start the nightly deployment once and let a worker whose SIAMESE_REPO is `checkout`
    execute it; the flow run, as the API has it."""
    deployer = env_for(checkout, home / "deployer", url)
    started = prefect(["deployment", "run", "omniglot-pipeline/nightly"], checkout, deployer)
    worker = env_for(checkout, home / "worker", url, SIAMESE_REPO=str(checkout),
                     PREFECT_WORKER_QUERY_SECONDS="1")
    done = subprocess.run(
        [*PREFECT, "worker", "start", "--pool", "omniglot", "--run-once", "--limit", "1"],
        cwd=home, env=worker, capture_output=True, text=True, timeout=300,
    )
    runs = api(url, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_DESC",
                                          "deployments": {"name": {"any_": ["nightly"]}}})
    ran = [r for r in runs if r["state_type"] != "SCHEDULED"]
    assert ran, f"no run started:\n{started.stdout}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return ran[0]


@pytest.fixture(scope="module")
def machines(server, origin, tmp_path_factory) -> tuple[Path, Path]:
    """Clone #2, the worker's checkout, with the nightly deployment on the server; and the
    folder of the machines' Prefect homes."""
    home = tmp_path_factory.mktemp("machines")
    second = clone(origin[0], home / "second")
    deploy(second, home, server)
    return second, home


def character(path: Path, strokes: list[tuple[int, int, int, int]]) -> Path:
    image = Image.new("L", (105, 105), 255)
    draw = ImageDraw.Draw(image)
    for stroke in strokes:
        draw.line(stroke, fill=0, width=4)
    image.save(path)
    return path


def test_a_worker_runs_the_nightly_deployment_and_a_third_clone_pulls_its_results(
    server, origin, machines, tmp_path
):
    (_, storage), (second, home) = origin, machines
    flow_run = run_once(second, home, server)
    assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
    tasks = api(server, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    states = {t["name"]: t["state_type"] for t in tasks}
    assert states.get("dvc-push") == "COMPLETED" and states.get("train") == "COMPLETED", states
    assert any(storage.rglob("*")), "the run pushed nothing"
    git_commit_all(second, "nightly results")  # dvc.lock and metrics travel through git
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", "siamese-model@v0.1.0",
         "-m", "nightly model"], second)  # GTO's form: dvc artifacts get finds it

    third = clone(second, tmp_path / "third")
    start = time.monotonic()
    pulled = run([str(BIN / "siamese"), "pull"], third, PYTHONPATH=str(third))
    seconds = time.monotonic() - start
    assert "restored from DVC remote 'storage'" in pulled.stdout
    assert "lacks" not in pulled.stdout
    assert "up to date" in run(["dvc", "status"], third).stdout
    repro = run(["dvc", "repro"], third, PYTHONPATH=str(third)).stdout
    assert "Running stage" not in repro  # nothing trains
    assert (third / "models/model.pt").read_bytes() == (second / "models/model.pt").read_bytes()
    support = [character(tmp_path / "a.png", [(20, 20, 85, 85)]),
               character(tmp_path / "b.png", [(52, 10, 52, 95), (10, 52, 95, 52)])]
    query = character(tmp_path / "q.png", [(22, 18, 84, 86)])
    answer = run([str(BIN / "siamese"), "classify", "--support", *map(str, support),
                  "--query", str(query)], third, PYTHONPATH=str(third)).stdout.splitlines()
    assert answer[0].startswith("query,prediction,score") and len(answer) == 2
    assert answer[1].split(",")[1] in {str(p) for p in support}

    run(["dvc", "artifacts", "get", str(third), "siamese-model", "-o",
         str(tmp_path / "artifact.pt")], tmp_path)
    assert (tmp_path / "artifact.pt").read_bytes() == (third / "models/model.pt").read_bytes()
    print(f"\nrestore from the remote in a fresh clone (siamese pull): {seconds:.1f} s")


def test_a_held_dvc_lock_or_a_dirty_checkout_fails_the_run_saying_why_and_a_retry_completes(
    server, machines
):
    second, home = machines
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK], cwd=second, text=True,
                              stdout=subprocess.PIPE, env=env_for(second, home, server))
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked = run_once(second, home, server)
    finally:
        holder.kill()
        holder.wait()
    assert locked["state_type"] == "FAILED"
    assert f"DVC's lock {second / '.dvc/tmp/lock'} is held by pid {holder.pid}" in \
        locked["state"]["message"]
    retry = run_once(second, home, server)
    assert retry["state_type"] == "COMPLETED"
    # A deployment's run says what changed since the previous completed one: here the first
    # test's run, at the origin's commit, which has no dvc.lock yet to compare with.
    changes = api(server, "/artifacts/filter", {"artifacts": {"key": {"any_": [
        "omniglot-changes"]}}, "flow_runs": {"id": {"any_": [retry["id"]]}}})
    first = run(["git", "rev-parse", "HEAD~1"], second).stdout.strip()
    assert [c["data"] for c in changes] == [
        f"# Changes since the previous run ({first[:10]})\n\n"
        f"Not compared: dvc.lock: not in revision {first}\n"]

    with open(second / "params.yaml", "a") as f:
        f.write("# an uncommitted edit\n")
    dirty = run_once(second, home, server)
    run(["git", "checkout", "params.yaml"], second)
    assert dirty["state_type"] == "FAILED"
    assert dirty["state"]["message"] == (
        f"SIAMESE_REPO={second}: the checkout has uncommitted changes to tracked files "
        "(params.yaml); commit or stash them, runs use committed code")
