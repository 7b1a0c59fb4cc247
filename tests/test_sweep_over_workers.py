"""A sweep over workers: the session's Prefect server, the omniglot work pool, `prefect deploy`
of prefect.yaml's `sweep-point`, and two real `prefect worker start` in two clones of a project
(the tiny four-stage pipeline of tests/flowkit.py, with this project's code beside it for the
deployment's entrypoint and pull step) that share a bare git remote and a local-folder DVC
remote. Four points go to the pool, each worker runs at least one as a DVC experiment in its
own checkout and pushes it; a third clone collects the four, ranked by holdout accuracy, and
`dvc exp apply` brings the best into its workspace without running a stage. A point that fails
on its worker is one row saying why."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from siamese.errors import PipelineError
from tests import REPO
from tests.flowkit import BIN, STAGES_PY, api, cli_env, git_commit_all, make_tiny_project, run

pytestmark = pytest.mark.slow
PREFECT = [sys.executable, "-m", "prefect", "--no-prompt"]
# The tiny evaluate stage's metrics, plus a holdout set whose 20-way accuracy is the lr (so the
# largest lr ranks first) and a test set, which the table hides.
TINY_METRICS = 'metrics = {"valid": {"20-way": {"accuracy": round(1 - lr, 4), "ci95": [0.1, 0.2]}}}'
MORE_METRICS = ('\n    metrics.update({"holdout": {"20-way": {"accuracy": lr}}, '
                '"evaluation": {"20-way": {"accuracy": 0.5}}})')
CODE = ("flows/", "siamese/", "tools/", "prefect.yaml")  # what a worker's run imports
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def copy_code(dest: Path) -> None:
    """This project's code, as in the working tree, into `dest`."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in listed.splitlines():
        if name.startswith(CODE) and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


@pytest.fixture(scope="module")
def remotes(tmp_path_factory) -> tuple[Path, Path]:
    """(the bare git remote, the DVC remote's folder): the tiny pipeline built, its outputs
    pushed, committed with this project's code."""
    base = tmp_path_factory.mktemp("fleet")
    storage, bare = base / "storage", base / "remote.git"
    storage.mkdir()
    origin = make_tiny_project(base / "origin")
    assert TINY_METRICS in STAGES_PY
    (origin / "stages.py").write_text(STAGES_PY.replace(TINY_METRICS, TINY_METRICS + MORE_METRICS))
    copy_code(origin)
    run(["dvc", "remote", "add", "-d", "storage", str(storage)], origin)
    run(["dvc", "repro"], origin)
    run(["dvc", "push"], origin)
    git_commit_all(origin, "built, with the project's code and a shared remote")
    run(["git", "clone", "-q", "--bare", str(origin), str(bare)], base)
    return bare, storage


def clone(bare: Path, dest: Path) -> Path:
    run(["git", "clone", "-q", str(bare), str(dest)], dest.parent)
    return dest


def machine_env(checkout: Path, home: Path, url: str, **extra: str) -> dict[str, str]:
    return cli_env(home, PREFECT_API_URL=url, PYTHONPATH=str(checkout),
                   SIAMESE_REPO=str(checkout), PREFECT_WORKER_QUERY_SECONDS="1", **extra)


def prefect(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run([*PREFECT, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, f"prefect {args}:\n{done.stdout}\n{done.stderr}"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        time.sleep(1)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")


def ended(url: str, sweep: str, count: int) -> list[dict]:
    """The flow runs of `sweep` once there are `count` and all have ended; else []."""
    found = api(url, "/flow_runs/filter", {"flow_runs": {"tags": {"all_": [
        f"omniglot-sweep:{sweep}"]}}})
    return found if len(found) == count and all(r["state_type"] in FINAL for r in found) else []


def exp_refs(checkout: Path) -> set[str]:
    listed = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], checkout).stdout
    return {ref.rsplit("/", 1)[1] for ref in listed.split()}


@pytest.fixture(scope="module")
def workers(server, remotes, tmp_path_factory):
    """Two clones, each with a `prefect worker start --pool omniglot --limit 1` of its own, and
    the sweep-point deployment on the server; stopped at the end."""
    home = tmp_path_factory.mktemp("workers")
    clones = [clone(remotes[0], home / f"worker{i}") for i in (1, 2)]
    deployer = machine_env(clones[0], home / "deployer", server)
    prefect(["work-pool", "create", "omniglot", "--type", "process", "--overwrite"], clones[0],
            deployer)
    prefect(["deploy", "--name", "sweep-point"], clones[0], deployer)
    procs = [subprocess.Popen([*PREFECT, "worker", "start", "--pool", "omniglot", "--limit", "1",
                               "--name", checkout.name], cwd=home,
                              env=machine_env(checkout, home / checkout.name, server),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for checkout in clones]
    try:
        wait_for(lambda: {w["name"] for w in api(server, "/work_pools/omniglot/workers/filter")
                          if w["status"] == "ONLINE"} >= {"worker1", "worker2"}, 120,
                 "both workers online")
        yield clones
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def test_four_points_over_two_workers_then_a_third_clone_collects_and_applies_the_best(
    server, remotes, workers, tmp_path, prefect_session
):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import poolsweep

    third = clone(remotes[0], tmp_path / "third")
    start = time.monotonic()
    sent = subprocess.run([str(BIN / "siamese"), "sweep", "--pool", "omniglot", "--name", "fleet",
                           "--set", "train.lr=0.1,0.2,0.3,0.4"], cwd=third, capture_output=True,
                          text=True, env=cli_env(tmp_path / "home", PREFECT_API_URL=server))
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert sent.stdout.splitlines()[:4] == [f"fleet-{i}: train.lr=0.{i}" for i in range(1, 5)]
    names = [f"fleet-{i}" for i in range(1, 5)]
    with temporary_settings(updates={PREFECT_API_URL: server}):
        poolsweep.dispatch_sweep(["train.fail=true"], "omniglot", repo=third, name="broken")
        fleet = wait_for(lambda: ended(server, "fleet", 4), 240, "the four points to end")
        assert {r["state_type"] for r in fleet} == {"COMPLETED"}, [r["state"] for r in fleet]
        ran = time.monotonic() - start
        by_worker = [{n for n in exp_refs(checkout) if n.startswith("fleet-")}
                     for checkout in workers]
        assert all(by_worker) and set().union(*by_worker) == set(names), by_worker
        wait_for(lambda: ended(server, "broken", 1), 120, "the failing point to end")

        rows = poolsweep.collect_sweep("fleet", repo=third)
        [broken] = poolsweep.collect_sweep("broken", repo=third)
        with pytest.raises(PipelineError, match="no flow runs of sweep 'nothing' on the Prefect"):
            poolsweep.collect_sweep("nothing", repo=third)
    assert broken["state"] == "failed" and "\n" not in broken["error"]
    assert broken["error"].startswith("dvc exp run -n broken-1 train.fail=True: exit status ")
    assert broken["error"].endswith(": failed to reproduce 'train': failed to run: python "
                                    "stages.py train, exited with 1")
    assert [(r["experiment"], r["train.lr"], r["state"]) for r in rows] == [
        ("fleet-4", "0.4", "success"), ("fleet-3", "0.3", "success"),
        ("fleet-2", "0.2", "success"), ("fleet-1", "0.1", "success")]
    assert [r["holdout/20-way/accuracy"] for r in rows] == [0.4, 0.3, 0.2, 0.1]
    assert [r["valid/20-way/accuracy"] for r in rows] == [0.6, 0.7, 0.8, 0.9]
    assert not any(k.startswith("evaluation/") for r in rows for k in r)
    assert "| fleet-4 | success |" in (third / "reports/sweep/fleet.md").read_text()

    run(["dvc", "exp", "apply", "fleet-4"], third)
    assert (third / "models/model.txt").read_text() == "lr=0.4"
    assert "up to date" in run(["dvc", "status"], third).stdout
    assert "Running stage" not in run(["dvc", "repro"], third).stdout  # nothing trains
    print(f"\nfour points over two workers: {ran:.1f} s; "
          f"points per worker: {[len(refs) for refs in by_worker]}")


def test_a_point_that_did_not_complete_is_one_row_and_the_others_stand(prefect_session):
    from flows.poolsweep import Point, point_rows

    points = [Point("s-1", ["train.lr=0.1"], "abc", "COMPLETED", ""),
              Point("s-2", ["train.lr=0.2"], "abc", "FAILED",
                    "dvc exp run -n s-2 train.lr=0.2: exit status 1:\ntrain: boom"),
              Point("s-3", ["train.lr=0.3"], "abc", "SCHEDULED", "")]
    found = {"s-1": {"rev": "0123456789", "state": "success", "data": {"metrics": {
        "reports/metrics.json": {"data": {"holdout": {"20-way": {"accuracy": 0.5}}}}}}}}
    assert point_rows(points, found) == [
        {"experiment": "s-1", "state": "success", "train.lr": "0.1", "rev": "0123456",
         "holdout/20-way/accuracy": 0.5},
        {"experiment": "s-2", "state": "failed", "train.lr": "0.2",
         "error": "dvc exp run -n s-2 train.lr=0.2: exit status 1: train: boom"},
        {"experiment": "s-3", "state": "scheduled", "train.lr": "0.3", "error": ""}]


def test_the_grid_expands_as_dvc_does_and_an_unknown_key_fails_before_any_run(
    prefect_session, tmp_path
):
    from flows.poolsweep import check_points, dispatch_sweep, grid_points

    points = grid_points(["train.lr=0.1,0.2", "fetch.content=a,b,c"])
    assert len(points) == 6 and points[0] == ["train.lr=0.1", "fetch.content=a"]
    project = make_tiny_project(tmp_path / "tiny")
    check_points(project, points)
    with pytest.raises(PipelineError, match="train.momentum"):
        check_points(project, grid_points(["train.momentum=0.9"]))
    check_points(project, grid_points(["+train.momentum=0.9"]))
    with pytest.raises(PipelineError, match="needs the Prefect server the workers poll"):
        dispatch_sweep(["train.lr=0.1,0.2"], "omniglot", repo=project)  # no PREFECT_API_URL


def test_cli_sweep_modes():
    from tools.cli import build_parser, sweep

    args = build_parser().parse_args(["sweep", "--pool", "omniglot", "--set", "train.lr=1,2"])
    assert (args.pool, args.grid, args.collect, args.git_remote) == (
        "omniglot", ["train.lr=1,2"], None, "origin")
    with pytest.raises(PipelineError, match="--collect NAME goes alone"):
        sweep(build_parser().parse_args(["sweep", "--collect", "s", "--set", "a.b=1"]))
