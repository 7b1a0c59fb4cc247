"""Sweeps: a grid of parameter overrides, each point a DVC experiment, compared in one table.

`run_sweep(["train.lr=0.001,0.002", "train.steps=500,1000"], jobs)` runs the cartesian
product (here four points). With jobs=1 each point is `dvc exp run --temp -S ...`, one after
the other, each its own task run; with more, every point is queued (`dvc exp run --queue`)
and DVC's queue runs `jobs` at a time (`dvc exp run --run-all -j jobs`, which is
`dvc queue start -j jobs` and waits for the queue; experiments queued before run too).
Experiments start from HEAD plus the workspace's changes. Stages a point does not change come from
the DVC cache. The workspace and params.yaml are left as they are; `dvc exp apply NAME`
brings a point into the workspace.
"""

import csv
import io
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.states import Failed, State

from flows.dvcstages import run_logged
from flows.report import flatten
from flows.server import check_api
from siamese.atomic import write_text
from siamese.errors import PipelineError
from siamese.params import load_params

SWEEPS = Path("reports/sweep")


def parse_grid(grid: list[str], params: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """[("train.lr", ["0.001", "0.002"]), ...] from ["train.lr=0.001,0.002", ...]; every key
    must name a value of params.yaml (a DVC experiment would add an unknown key silently)."""
    axes: list[tuple[str, list[str]]] = []
    for item in grid:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PipelineError(f"{item!r} is not KEY=V1,V2,... (e.g. train.lr=0.001,0.002)")
        choices = [v.strip() for v in values.split(",")]
        if not all(choices):
            raise PipelineError(f"{item!r} has an empty value")
        node: Any = params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise PipelineError(f"{key} is not a parameter of params.yaml")
            node = node[part]
        if isinstance(node, dict):
            raise PipelineError(f"{key} is a section of params.yaml, not one value")
        if key in (k for k, _ in axes):
            raise PipelineError(f"{key} is given twice; list all its values in one --set")
        axes.append((key, list(dict.fromkeys(choices))))
    if not axes:
        raise PipelineError("no parameters given (--set KEY=V1,V2)")
    return axes


def grid_points(axes: list[tuple[str, list[str]]]) -> list[list[str]]:
    """The cartesian product: one list of KEY=VALUE overrides per point."""
    keys = [key for key, _ in axes]
    return [[f"{k}={v}" for k, v in zip(keys, values, strict=True)]
            for values in itertools.product(*(values for _, values in axes))]


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


def dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def set_args(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("-S", override)]


@task(name="experiment", task_run_name="{name}")
def run_experiment(name: str, overrides: list[str], root: str) -> str | State:
    """One point in a temporary copy of the workspace (`dvc exp run --temp`); a failed point
    is a Failed task (its output in the log) and the sweep goes on."""
    status, lines = run_logged(dvc("exp", "run", "--temp", "-n", name, *set_args(overrides)),
                               Path(root), get_run_logger())
    if status != 0:
        return Failed(message=f"experiment {name} ({' '.join(overrides)}) failed:\n"
                      + "\n".join(lines[-30:]))
    return name


@task(name="queue-experiment", task_run_name="queue-{name}")
def queue_experiment(name: str, overrides: list[str], root: str) -> str:
    status, lines = run_logged(dvc("exp", "run", "--queue", "-n", name, *set_args(overrides)),
                               Path(root), get_run_logger())
    if status != 0:
        raise PipelineError(f"cannot queue {name}:\n" + "\n".join(lines[-30:]))
    return name


@task(name="run-queue")
def run_queue(jobs: int, root: str) -> int:
    """Run the queued experiments, `jobs` at a time, and wait for them (their logs stream)."""
    status, _ = run_logged(dvc("exp", "run", "--run-all", "-j", str(jobs)), Path(root),
                           get_run_logger())
    return status


def experiments(root: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """`dvc exp show --json`, reduced to the named experiments: name -> its record."""
    from flows.dvcstages import dvc_env

    done = subprocess.run(dvc("exp", "show", "--json", "--no-pager"), cwd=root, env=dvc_env(),
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise PipelineError(f"`dvc exp show` failed: {done.stderr.strip()}")
    found: dict[str, dict[str, Any]] = {}
    for baseline in json.loads(done.stdout):
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


def comparison(points: list[list[str]], names: list[str],
               found: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name, overrides in zip(names, points, strict=True):
        exp = found.get(name)
        row: dict[str, Any] = {"experiment": name, "state": exp["state"] if exp else "failed"}
        row.update(dict(o.split("=", 1) for o in overrides))
        if exp:
            row["rev"] = exp["rev"][:7]
            row.update(metric_columns((exp.get("data") or {}).get("metrics")))
        rows.append(row)
    return rows


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


@flow(name="omniglot-sweep", log_prints=True)
def sweep_flow(grid: list[str], jobs: int = 1, repo: str = ".") -> list[dict[str, Any]]:
    """Run every point of the grid as a DVC experiment; store and print the comparison."""
    root = Path(repo).resolve()
    points = grid_points(parse_grid(grid, load_params(root / "params.yaml")))
    now = time.time()  # to the millisecond: names of experiments must be new
    sweep_id = time.strftime("sweep-%Y%m%d-%H%M%S", time.localtime(now)) + f"{now % 1:.3f}"[2:]
    names = [f"{sweep_id}-{i}" for i in range(1, len(points) + 1)]
    if jobs == 1:
        for name, overrides in zip(names, points, strict=True):
            run_experiment(name, overrides, str(root), return_state=True)
    else:
        for name, overrides in zip(names, points, strict=True):
            queue_experiment(name, overrides, str(root))
        run_queue(jobs, str(root))
    rows = comparison(points, names, experiments(root, names))
    write_text(to_csv(rows), root / SWEEPS / f"{sweep_id}.csv")
    write_text(to_markdown(rows), root / SWEEPS / f"{sweep_id}.md")
    create_table_artifact(rows, key="omniglot-sweep", description=f"{sweep_id}: {grid}")
    print(to_markdown(rows) + f"\nstored in {SWEEPS / sweep_id}.csv and .md")
    return rows


def run_sweep(grid: list[str], jobs: int = 1, repo: Path | str = ".") -> list[dict[str, Any]]:
    """`siamese sweep --set KEY=V1,V2 ... --jobs N`; fails if any point failed."""
    root = Path(repo).resolve()
    if jobs < 1:
        raise PipelineError(f"--jobs must be at least 1, got {jobs}")
    parse_grid(grid, load_params(root / "params.yaml"))  # a bad grid fails before anything runs
    check_metrics_tracked(root)
    check_api()
    rows = sweep_flow(grid=grid, jobs=jobs, repo=str(root))
    failed = [row["experiment"] for row in rows if row["state"] != "success"]
    if failed:
        raise PipelineError(f"{len(failed)} of {len(rows)} experiments failed: "
                            f"{', '.join(failed)} (logs: the task runs; `dvc queue logs NAME`)")
    return rows
