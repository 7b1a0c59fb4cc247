"""Sweeps: a grid of parameter overrides, each point a DVC experiment, compared in one table.

`run_sweep(["train.lr=0.001,0.002", "train.steps=500,1000"], jobs)` hands the grid to DVC:
`dvc exp run --queue -n SWEEP -S train.lr=0.001,0.002 -S train.steps=500,1000` queues the
cartesian product (here four points, SWEEP-1 ... SWEEP-4; DVC refuses a key that params.yaml
lacks, `+key=...` adds one), then `dvc exp run --run-all -j jobs` runs the queue, `jobs` at a
time, and waits for it (experiments queued before run too). Experiments start from HEAD plus
the workspace's changes. Stages a point does not change come from the DVC cache. The
workspace and params.yaml are left as they are; `dvc exp apply NAME` brings a point into the
workspace.

The table ranks the points by the holdout trial set's accuracy at its largest n-way, best
first (the set that chooses hyperparameters); the test trial sets' columns (evaluation, lake,
vinyals) are left out unless asked for (`--show-test`), so that a sweep does not choose by them.
"""

import csv
import io
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows import remote
from flows.dvcstages import dvc, run_logged
from flows.guard import checkout_slot
from flows.report import flatten
from flows.server import check_api
from siamese.atomic import write_text
from siamese.errors import PipelineError

SWEEPS = Path("reports/sweep")
# Trial sets of reports/metrics.json drawn from test images, kept for the end
TEST_SETS = ("evaluation", "lake", "vinyals")
HOLDOUT = re.compile(r"holdout/(?P<n>\d+)-way/accuracy")


def metrics_files(root: Path) -> list[str]:
    """The metrics files that dvc.yaml declares (paths relative to the repository)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return sorted({out.def_path for stage in repo.index.stages for out in stage.outs
                       if out.metric})


def check_metrics_tracked(root: Path) -> None:
    """DVC keeps an experiment's uncached metrics in its git commit: a metrics file that git
    ignores is lost with the experiment's temporary copy, and the table would be empty."""
    files = metrics_files(root)
    done = subprocess.run(["git", "check-ignore", "--no-index", *files], cwd=root,
                          capture_output=True, text=True)
    ignored = done.stdout.split()
    if ignored:
        raise PipelineError(
            f".gitignore: the metrics file(s) {', '.join(ignored)} are ignored by git, so DVC "
            "experiments cannot keep them and the sweep would compare nothing; un-ignore them "
            "(e.g. `!/reports/metrics.json`)"
        )


def set_args(grid: list[str]) -> list[str]:
    return [arg for item in grid for arg in ("-S", item)]


@task(name="queue-grid", task_run_name="queue-{sweep_id}")
def queue_grid(sweep_id: str, grid: list[str], root: str) -> list[tuple[str, list[str]]]:
    """Queue every point of the grid (`dvc exp run --queue -S ...`, DVC expands the grid);
    [(experiment name, its overrides), ...] in DVC's order. A key that params.yaml lacks, or
    a value DVC cannot parse, is a PipelineError with DVC's own message."""
    status, lines = run_logged(dvc("exp", "run", "--queue", "-n", sweep_id, *set_args(grid)),
                               Path(root), get_run_logger())
    if status != 0:
        raise PipelineError(f"dvc exp run --queue {' '.join(set_args(grid))}: {dvc_error(lines)}")
    return queued_points(Path(root), sweep_id, grid)


def dvc_error(lines: list[str]) -> str:
    """A failed DVC command's error on one line: its first ERROR and the lines that go on
    with it (up to 6, up to the next ERROR: `dvc exp run --temp` reports each twice), else
    its last lines."""
    starts = [i for i, line in enumerate(lines) if line.startswith("ERROR")] or [-5]
    end = starts[1] if len(starts) > 1 else len(lines)
    taken = lines[starts[0]:end][:6]
    return " ".join(" ".join(taken).removeprefix("ERROR: ").split())


def grid_points(grid: list[str]) -> list[list[str]]:
    """The points of the grid, each its list of overrides, in the order `dvc exp run -S`
    queues them: DVC's own parser and expansion ("FILE:key=value" for a file other than
    params.yaml)."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    try:
        sweeps = get_hydra_sweeps(to_path_overrides(grid))
    except Exception as e:  # noqa: BLE001 - DVC's and hydra's parse errors
        raise PipelineError(f"--set {' '.join(grid)}: {' '.join(str(e).split())}") from None
    return [[o if file == "params.yaml" else f"{file}:{o}" for file, items in point.items()
             for o in items] for point in sweeps]


def queued_points(root: Path, sweep_id: str, grid: list[str]) -> list[tuple[str, list[str]]]:
    """The points `dvc exp run --queue -n SWEEP -S ...` queued: [(name, overrides), ...] in
    DVC's order. DVC names a grid's points SWEEP-1, SWEEP-2, ... as it expands it (grid_points),
    a single point SWEEP; the names are checked against DVC's queue."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        queued = {entry.name for entry in repo.experiments.celery_queue.iter_queued()}
    points = grid_points(grid)
    names = [sweep_id] if sweep_id in queued else [f"{sweep_id}-{i}"
                                                     for i in range(1, len(points) + 1)]
    missing = sorted(set(names) - queued)
    if missing:
        raise PipelineError(f"dvc exp run --queue: DVC's queue lacks {', '.join(missing)}")
    return list(zip(names, points, strict=True))


@task(name="run-queue")
def run_queue(jobs: int, root: str) -> int:
    """Run the queued experiments, `jobs` at a time, and wait for them (their logs stream)."""
    status, _ = run_logged(dvc("exp", "run", "--run-all", "-j", str(jobs)), Path(root),
                           get_run_logger())
    return -1 if status is None else status  # None: a timeout, and run_logged has none here


def experiments(root: Path, names: list[str],
                revs: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """DVC's experiments of the baseline commits `revs` (default HEAD), as `dvc exp show --json`
    has them, reduced to the named experiments: name -> its record."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo, remote.quiet_dvc():
            shown = [state.dumpd() for state in repo.experiments.show(revs=revs, force=True)]
    except DvcException as e:
        raise PipelineError(f"dvc exp show: {' '.join(str(e).split())}") from None
    found: dict[str, dict[str, Any]] = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs", []):
                if rev.get("name") in names:
                    state = (exp.get("executor") or {}).get("state") or "success"
                    found[rev["name"]] = {**rev, "state": "failed" if rev.get("error") else state}
    return found


def metric_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalar metrics of every metrics file; those of reports/metrics.json by their own path,
    the others prefixed by their file (reports/train/metrics.json -> train/...)."""
    columns: dict[str, Any] = {}
    for file, content in (metrics or {}).items():
        prefix = "" if file == "reports/metrics.json" else file.removeprefix("reports/")
        prefix = prefix.removesuffix("/metrics.json").removesuffix(".json")
        for key, value in flatten(content.get("data") or {}):
            if isinstance(value, (int, float)):
                columns[f"{prefix}/{key}" if prefix else key] = value
    return columns


def comparison(points: list[tuple[str, list[str]]],
               found: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, overrides in points:
        exp = found.get(name)
        row: dict[str, Any] = {"experiment": name, "state": exp["state"] if exp else "failed"}
        row.update(dict(o.split("=", 1) for o in overrides))
        if exp:
            row["rev"] = exp["rev"][:7]
            row.update(metric_columns((exp.get("data") or {}).get("metrics") or {}))
        rows.append(row)
    return rows


def ranking_metric(rows: list[dict[str, Any]]) -> str | None:
    """The column the table is ranked by: holdout accuracy at the largest n-way (None when no
    point has a holdout accuracy)."""
    found = {int(m["n"]): key for row in rows for key in row if (m := HOLDOUT.fullmatch(key))}
    return found[max(found)] if found else None


def ranked_table(rows: list[dict[str, Any]], show_test: bool = False) -> list[dict[str, Any]]:
    """The rows best first by ranking_metric (points without it last, in DVC's order), without
    the columns of the test trial sets (TEST_SETS/...) unless `show_test`."""
    metric = ranking_metric(rows)
    if metric is not None:
        rows = sorted(rows, key=lambda row: (metric not in row, -row.get(metric, 0)))
    if show_test:
        return list(rows)
    return [{key: value for key, value in row.items() if key.split("/")[0] not in TEST_SETS}
            for row in rows]


def to_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def new_sweep_id() -> str:
    """sweep-DATE-TIME to the millisecond: names of experiments must be new."""
    now = time.time()
    return time.strftime("sweep-%Y%m%d-%H%M%S", time.localtime(now)) + f"{now % 1:.3f}"[2:]


def store_table(root: Path, sweep_id: str, rows: list[dict[str, Any]], show_test: bool,
                about: str) -> list[dict[str, Any]]:
    """Rank the rows (ranked_table), write them to reports/sweep/<sweep_id>.csv and .md and the
    table artifact `omniglot-sweep`, print them; the ranked rows."""
    rows = ranked_table(rows, show_test)
    order = f"ranked by {ranking_metric(rows) or 'nothing (no holdout accuracy)'}, best first"
    hidden = "" if show_test else f"; {' and '.join(TEST_SETS)} columns hidden (--show-test)"
    write_text(to_csv(rows), root / SWEEPS / f"{sweep_id}.csv")
    write_text(to_markdown(rows), root / SWEEPS / f"{sweep_id}.md")
    create_table_artifact(rows, key="omniglot-sweep", description=f"{about}; {order}{hidden}")
    print(to_markdown(rows) + f"\n{order}{hidden}\nstored in {SWEEPS / sweep_id}.csv and .md")
    return rows


@flow(name="omniglot-sweep", log_prints=True)
def sweep_flow(grid: list[str], jobs: int = 1, repo: str = ".",
               show_test: bool = False) -> list[dict[str, Any]]:
    """Run every point of the grid as a DVC experiment; store and print the comparison (ranked
    by holdout accuracy; the test trial sets' columns only with `show_test`)."""
    root = Path(repo).resolve()
    sweep_id = new_sweep_id()
    with checkout_slot(root):  # not beside a pipeline run in this checkout: it waits
        points = queue_grid(sweep_id, grid, str(root))
        run_queue(jobs, str(root))
        rows = comparison(points, experiments(root, [name for name, _ in points]))
    return store_table(root, sweep_id, rows, show_test, f"{sweep_id}: {grid}")


def run_sweep(grid: list[str], jobs: int = 1, repo: Path | str = ".",
              show_test: bool = False) -> list[dict[str, Any]]:
    """`siamese sweep --set KEY=V1,V2 ... --jobs N [--show-test]`; fails if any point failed."""
    root = Path(repo).resolve()
    if jobs < 1:
        raise PipelineError(f"--jobs must be at least 1, got {jobs}")
    if not grid:
        raise PipelineError("no parameters given (--set KEY=V1,V2)")
    check_metrics_tracked(root)
    check_api()
    rows = sweep_flow(grid=grid, jobs=jobs, repo=str(root), show_test=show_test)
    failed = [row["experiment"] for row in rows if row["state"] != "success"]
    if failed:
        raise PipelineError(f"{len(failed)} of {len(rows)} experiments failed: "
                            f"{', '.join(failed)} (logs: the task runs; `dvc queue logs NAME`)")
    return rows
