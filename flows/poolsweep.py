"""Sweeps over workers: each grid point a flow run of its own on a Prefect work pool, run by
whichever worker takes it as a DVC experiment in that worker's checkout, and pushed.

`siamese sweep --pool omniglot --set train.lr=0.001,0.002 ...` expands the grid as DVC does
(DVC's own hydra sweep parser: `dvc exp run -S` would make the same points), checks every point
against params.yaml as DVC will, and creates one flow run per point of the deployment of
`omniglot-sweep-point` on that pool (prefect.yaml's `sweep-point`), tagged with the sweep's
name; it does not wait. A worker's run (the deployment's pull step enters its checkout) checks
that the checkout is at the sweep's commit, restores what the DVC remote holds, runs
`dvc exp run --temp -n NAME-i -S ...` (in a copy: the workspace stays as it was) and
`dvc exp push GIT_REMOTE NAME-i` (the experiment's commit to the git remote, its outputs to the
DVC remote).

`siamese sweep --collect NAME` in any checkout reads the sweep's flow runs from the server,
pulls the experiments of the completed ones (`dvc exp pull`) and ranks them as a local sweep's
(flows/sweep.py); a point that failed, or has not run yet, is one row saying so.
`dvc exp apply NAME-i` then brings one into the workspace, outputs from the DVC cache.
"""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.states import Failed, State

from flows import remote
from flows.dvcstages import dvc, run_logged
from flows.guard import checkout_slot
from flows.report import PAGE, read_all
from flows.server import check_api
from flows.sweep import (
    check_metrics_tracked,
    comparison,
    dvc_error,
    experiments,
    grid_points,
    new_sweep_id,
    set_args,
    store_table,
)
from flows.worker import git
from siamese.errors import PipelineError
from siamese.provenance import changed_files

POINT_FLOW = "omniglot-sweep-point"
TAG = "omniglot-sweep:"  # + the sweep's name: the tag of its flow runs


def check_points(root: Path, points: list[list[str]]) -> None:
    """Each point's overrides applied, as DVC will apply them, to a copy of its parameter files:
    a key the file lacks (without `+`) fails here, before any flow run exists."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as tmp:
        for point in points:
            for file, overrides in to_path_overrides(point).items():
                copy = Path(tmp) / Path(file).name
                shutil.copyfile(root / file, copy)
                try:
                    apply_overrides(copy, overrides)
                except Exception as e:  # noqa: BLE001 - DVC's and hydra's errors
                    reason = f"{e}: {e.__cause__}" if e.__cause__ else str(e)  # hydra's, in DVC's
                    raise PipelineError(f"{file}: {' '.join(reason.split())}") from None


def committed_revision(root: Path) -> str:
    """HEAD, once the tracked files are as committed: workers run the commit, not this tree."""
    head = git(root, "rev-parse", "HEAD").strip()
    changed = changed_files(root)
    if changed:
        raise PipelineError(f"{root}: uncommitted changes to {', '.join(changed[:3])}: the "
                            "workers run the sweep from a commit; commit (and push) them first")
    return head


def server_url() -> str:
    """The Prefect server's URL: a sweep over workers needs one that they share."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise PipelineError("a sweep over workers needs the Prefect server the workers poll: "
                            "set PREFECT_API_URL (e.g. http://HOST:4200/api)")
    check_api()
    return str(url)


def point_deployment(pool: str) -> Any:
    """The id of a deployment of the point flow on work pool `pool`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        WorkPoolFilter,
        WorkPoolFilterName,
    )

    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[POINT_FLOW])),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])))
    if not found:
        raise PipelineError(f"no deployment of the flow {POINT_FLOW} on work pool '{pool}': "
                            "`prefect deploy --name sweep-point` (prefect.yaml) deploys one")
    return found[0].id


def dispatch_sweep(grid: list[str], pool: str, repo: Path | str = ".", name: str = "",
                   git_remote: str = "origin") -> list[str]:
    """`siamese sweep --pool POOL --set ...`: one flow run per point on the pool; their names."""
    from prefect.deployments import run_deployment

    root = Path(repo).resolve()
    if not grid:
        raise PipelineError("no parameters given (--set KEY=V1,V2)")
    check_metrics_tracked(root)
    rev = committed_revision(root)
    points = grid_points(grid)
    check_points(root, points)
    server_url()
    deployment = point_deployment(pool)
    sweep = name or new_sweep_id()
    names = [f"{sweep}-{i}" for i in range(1, len(points) + 1)]
    for point, overrides in zip(names, points, strict=True):
        run_deployment(deployment, parameters={"name": point, "overrides": overrides,
                                               "rev": rev, "git_remote": git_remote},
                       flow_run_name=point, tags=[TAG + sweep], timeout=0, as_subflow=False)
        print(f"{point}: {' '.join(overrides)}")
    print(f"sweep {sweep}: {len(points)} points of {rev[:10]} sent to work pool '{pool}'; "
          f"`siamese sweep --collect {sweep}` ranks them once they ran")
    return names


@task(name="dvc-exp-run", task_run_name="{name}")
def run_point(name: str, overrides: list[str], root: str) -> None:
    """`dvc exp run --temp`: the point in a copy of the checkout (its workspace is untouched);
    its output is this task's log."""
    args = dvc("exp", "run", "--temp", "-n", name, *set_args(overrides))
    status, lines = run_logged(args, Path(root), get_run_logger())
    if status != 0:
        raise PipelineError(f"dvc exp run -n {name} {' '.join(overrides)}: exit status {status}: "
                            f"{dvc_error(lines)}")


@task(name="dvc-exp-push", task_run_name="{name}")
def push_point(name: str, root: str, git_remote: str) -> None:
    """The experiment's commit to the git remote, its outputs to the default DVC remote."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(root) as repo, remote.quiet_dvc():
            repo.experiments.push(git_remote, [name], push_cache=True)
    except DvcException as e:
        raise PipelineError(f"dvc exp push {git_remote} {name}: {' '.join(str(e).split())}"
                            ) from None
    print(f"{name}: pushed to git remote '{git_remote}' and the default DVC remote")


@flow(name=POINT_FLOW, log_prints=True)
def sweep_point_flow(name: str, overrides: list[str], rev: str, repo: str = ".",
                     git_remote: str = "origin") -> str | State:
    """One point of a sweep over workers in this worker's checkout: the DVC experiment `name`,
    from commit `rev` with `overrides`, pushed; a failure ends the run in one line."""
    root = Path(repo).resolve()
    try:
        head = git(root, "rev-parse", "HEAD").strip()
        if head != rev:
            raise PipelineError(f"{root} is at commit {head[:10]}, the sweep at {rev[:10]}: "
                                "update that checkout (git pull) for the next sweep")
        with checkout_slot(root):  # not beside another run in this checkout
            if remote.configured(root, "dvc pull") is not None:
                remote.pull(root)  # what the remote holds is not rebuilt
            run_point(name, overrides, str(root))
            push_point(name, str(root), git_remote)
    except PipelineError as e:
        return Failed(message=str(e))
    return name


@dataclass(frozen=True)
class Point:
    """A point of a sweep over workers, as its flow run on the server has it."""

    name: str
    overrides: list[str]
    rev: str
    state: str  # Prefect's state type: COMPLETED, FAILED, CRASHED, SCHEDULED, RUNNING, ...
    message: str


def sweep_points(sweep: str) -> list[Point]:
    """The flow runs of sweep `sweep` on the server, in the grid's order."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    tagged = FlowRunFilter(tags=FlowRunFilterTags(all_=[TAG + sweep]))
    with get_client(sync_client=True) as client:  # page by page: the server caps a read
        runs = read_all(lambda offset: client.read_flow_runs(
            flow_run_filter=tagged, sort=FlowRunSort.ID_DESC, limit=PAGE, offset=offset))
    points = [Point(run.parameters["name"], list(run.parameters["overrides"]),
                    run.parameters["rev"], run.state.type.value if run.state else "UNKNOWN",
                    (run.state.message or "") if run.state else "") for run in runs]
    return sorted(points, key=lambda p: int(p.name.rsplit("-", 1)[1]))


def pull_points(root: Path, names: list[str], git_remote: str) -> None:
    """`dvc exp pull GIT_REMOTE NAME ...`: the experiments' commits and their outputs."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    if not names:
        return
    try:
        with Repo(str(root)) as repo, remote.quiet_dvc():
            repo.experiments.pull(git_remote, names, pull_cache=True)
    except DvcException as e:
        raise PipelineError(f"dvc exp pull {git_remote}: {' '.join(str(e).split())}") from None


def point_rows(points: list[Point], found: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The table's rows (flows.sweep.comparison); a point whose run did not complete has its
    run's state, and its message on one line as `error`."""
    rows = comparison([(p.name, p.overrides) for p in points], found)
    for row, point in zip(rows, points, strict=True):
        if point.state != "COMPLETED":
            row["state"] = point.state.lower()
            row["error"] = " ".join(point.message.split())
    return rows


@flow(name="omniglot-sweep-collect", log_prints=True)
def collect_flow(sweep: str, points: list[Point], repo: str, git_remote: str = "origin",
                 show_test: bool = False) -> list[dict[str, Any]]:
    """Pull the experiments of the sweep's completed points; store and print the table."""
    root = Path(repo)
    completed = [p.name for p in points if p.state == "COMPLETED"]
    pull_points(root, completed, git_remote)
    found = experiments(root, completed, revs=sorted({p.rev for p in points}))
    rows = store_table(root, sweep, point_rows(points, found), show_test,
                       f"{sweep}: {len(points)} points over workers")
    best = next((row for row in rows if row["state"] == "success"), None)
    if best:
        print(f"`dvc exp apply {best['experiment']}` brings the best into the workspace (its "
              "outputs from the DVC cache: no training)")
    return rows


def collect_sweep(sweep: str, repo: Path | str = ".", git_remote: str = "origin",
                  show_test: bool = False) -> list[dict[str, Any]]:
    """`siamese sweep --collect NAME`: the table of the sweep's points (ranked by holdout
    accuracy; a point that did not complete is one row with its state), as a flow run."""
    url = server_url()
    points = sweep_points(sweep)
    if not points:
        raise PipelineError(f"no flow runs of sweep '{sweep}' on the Prefect server at {url}")
    return collect_flow(sweep, points, str(Path(repo).resolve()), git_remote, show_test)
