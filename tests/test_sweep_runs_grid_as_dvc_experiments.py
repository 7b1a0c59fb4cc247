"""`siamese sweep`: a grid of overrides as DVC experiments, one after another or queued."""

import csv
import json

import pytest

from siamese.errors import PipelineError
from tests.flowkit import (
    flow_run_records,
    git_commit_all,
    latest_flow_run_id,
    make_tiny_project,
    run,
)

pytestmark = pytest.mark.slow  # DVC experiments under Prefect: not in `make check`

# The tiny evaluate stage's metrics, plus a holdout set that ranks the points the other way
# round from valid at its largest n-way (not at 5-way), and two test sets.
TINY_METRICS = 'metrics = {"valid": {"20-way": {"accuracy": round(1 - lr, 4), "ci95": [0.1, 0.2]}}}'
MORE_METRICS = (
    '\n    metrics.update({"holdout": {"5-way": {"accuracy": round(1 - lr, 4)}, '
    '"20-way": {"accuracy": lr}}, "evaluation": {"20-way": {"accuracy": 0.5}}, '
    '"lake": {"20-way": {"accuracy": 0.6}}})'
)


@pytest.fixture(scope="module")
def sweep(request):
    request.getfixturevalue("prefect_session")
    from flows import sweep

    return sweep


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny pipeline, built by `dvc repro` and committed (experiments start from HEAD)."""
    root = make_tiny_project(tmp_path_factory.mktemp("sweep") / "tiny")
    stages = (root / "stages.py").read_text()
    assert TINY_METRICS in stages
    (root / "stages.py").write_text(stages.replace(TINY_METRICS, TINY_METRICS + MORE_METRICS))
    run(["dvc", "repro"], root)
    git_commit_all(root, "built")
    return root


def test_dvc_queues_the_cartesian_product_of_the_grid(sweep, project):
    """The grid goes to DVC as it is (`-S KEY=V1,V2`); DVC queues one experiment per point,
    and the sweep knows each point's name and overrides from DVC's own expansion of the grid,
    the names checked against DVC's queue."""
    grid = ["train.lr=0.1,0.2", "fetch.content=a,b,c"]
    run(sweep.dvc("exp", "run", "--queue", "-n", "grid", *sweep.set_args(grid)), project)
    run(sweep.dvc("exp", "run", "--queue", "-n", "one", "-S", "train.lr=0.3"), project)
    try:
        points = sweep.queued_points(project, "grid", grid)
        assert sweep.queued_points(project, "one", ["train.lr=0.3"]) == [("one", ["train.lr=0.3"])]
        with pytest.raises(PipelineError, match="DVC's queue lacks other-1, other-2"):
            sweep.queued_points(project, "other", ["train.lr=0.1,0.2"])
    finally:
        run(sweep.dvc("queue", "remove", "--all"), project)
    assert [name for name, _ in points] == [f"grid-{i}" for i in range(1, 7)]
    assert points[0][1] == ["train.lr=0.1", "fetch.content=a"]
    assert ["train.lr=0.2", "fetch.content=c"] in [overrides for _, overrides in points]


def test_unknown_parameter_or_ignored_metrics_fail_before_any_experiment(sweep, project):
    with pytest.raises(PipelineError, match=r"(?s)Could not override 'train.momentum'.*"
                                            r"\+train.momentum=0.9"):
        sweep.run_sweep(["train.lr=0.5,0.6", "train.momentum=0.9"], jobs=1, repo=project)
    with pytest.raises(PipelineError, match="no parameters given"):
        sweep.run_sweep([], jobs=1, repo=project)
    (project / ".gitignore").write_text("/reports/\n")
    try:
        with pytest.raises(PipelineError, match="reports/metrics.json are ignored by git"):
            sweep.run_sweep(["train.lr=0.5"], jobs=1, repo=project)
    finally:
        (project / ".gitignore").unlink()
    assert run(["dvc", "exp", "list"], project).stdout.strip() == ""
    assert "No experiment tasks" in run(["dvc", "queue", "status"], project).stdout
    assert not (project / "reports/sweep").exists()


def test_the_table_ranks_by_holdout_at_the_largest_n_way_and_hides_the_test_sets(sweep):
    rows = [
        {"experiment": "a", "state": "success", "evaluate.tta": "0", "holdout/5-way/accuracy": 0.9,
         "holdout/20-way/accuracy": 0.7, "valid/20-way/accuracy": 0.8, "verification/auc": 0.9,
         "evaluation/20-way/accuracy": 0.6, "lake/20-way/accuracy": 0.65, "train/loss": 0.1},
        {"experiment": "b", "state": "failed", "evaluate.tta": "4"},
        {"experiment": "c", "state": "success", "evaluate.tta": "8", "holdout/5-way/accuracy": 0.8,
         "holdout/20-way/accuracy": 0.75, "evaluation/20-way/accuracy": 0.5},
        {"experiment": "d", "state": "success", "holdout/20-way/accuracy": 0.7},
    ]
    assert sweep.ranking_metric(rows) == "holdout/20-way/accuracy"
    shown = sweep.ranked_table(rows)
    assert [r["experiment"] for r in shown] == ["c", "a", "d", "b"]  # ties keep DVC's order
    assert list(shown[1]) == ["experiment", "state", "evaluate.tta", "holdout/5-way/accuracy",
                              "holdout/20-way/accuracy", "valid/20-way/accuracy",
                              "verification/auc", "train/loss"]
    assert not any(k.startswith(("evaluation/", "lake/")) for k in sweep.to_csv(shown).split(","))
    assert "evaluation/" not in sweep.to_markdown(shown)
    everything = sweep.ranked_table(rows, show_test=True)
    assert [r["experiment"] for r in everything] == ["c", "a", "d", "b"]
    assert everything[1] == rows[0] and everything[0] == rows[2]
    assert "lake/20-way/accuracy" in sweep.to_csv(everything).splitlines()[0]


def test_without_a_holdout_accuracy_the_order_is_dvcs(sweep):
    rows = [{"experiment": "a", "valid/20-way/accuracy": 0.5, "lake/20-way/accuracy": 0.9},
            {"experiment": "b", "valid/20-way/accuracy": 0.9}]
    assert sweep.ranking_metric(rows) is None
    assert sweep.ranked_table(rows) == [{"experiment": "a", "valid/20-way/accuracy": 0.5},
                                        {"experiment": "b", "valid/20-way/accuracy": 0.9}]
    assert sweep.ranked_table([]) == []


def test_cli_passes_show_test_to_the_sweep():
    from tools.cli import build_parser

    args = build_parser().parse_args(["sweep", "--set", "evaluate.tta=0,4"])
    assert args.show_test is False and args.grid == ["evaluate.tta=0,4"]
    assert build_parser().parse_args(["sweep", "--set", "a.b=1", "--show-test"]).show_test


@pytest.mark.slow
def test_sweep_one_by_one_compares_points_and_leaves_the_workspace(sweep, project):
    """jobs=1: DVC's queue runs the points one at a time (tests/test_pipeline_flow_end_to_end.py
    runs a sweep with jobs=2 on the real pipeline). The table is ranked by holdout 20-way
    (here lr), best first; the test sets' columns only with show_test. A failed point fails
    the sweep, after its table is stored."""
    params = (project / "params.yaml").read_text()
    rows = sweep.run_sweep(["train.lr=0.25,0.75"], jobs=1, repo=project)
    assert [(r["train.lr"], r["state"]) for r in rows] == [("0.75", "success"), ("0.25", "success")]
    assert [r["holdout/20-way/accuracy"] for r in rows] == [0.75, 0.25]
    assert [r["valid/20-way/accuracy"] for r in rows] == [0.25, 0.75]
    assert not any(k.startswith(("evaluation/", "lake/")) for r in rows for k in r)
    tables = sorted((project / "reports/sweep").glob("*.csv"))
    assert len(tables) == 1 and tables[0].with_suffix(".md").exists()
    with open(tables[0]) as f:
        table = list(csv.DictReader(f))
    assert [row["valid/20-way/accuracy"] for row in table] == ["0.25", "0.75"]
    assert "holdout/5-way/accuracy" in table[0] and "evaluation/20-way/accuracy" not in table[0]
    assert "lake/" not in tables[0].with_suffix(".md").read_text()
    _, _, artifacts = flow_run_records(latest_flow_run_id())
    stored = json.loads(artifacts["omniglot-sweep"].data)
    assert [r["train.lr"] for r in stored] == ["0.75", "0.25"]
    assert not any(k.startswith(("evaluation/", "lake/")) for r in stored for k in r)
    assert "ranked by holdout/20-way/accuracy" in artifacts["omniglot-sweep"].description
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    names = {rev["name"] for b in shown for e in b.get("experiments") or [] for rev in e["revs"]}
    assert {r["experiment"] for r in rows} <= names
    assert (project / "params.yaml").read_text() == params  # the workspace is untouched
    assert "up to date" in run(["dvc", "status"], project).stdout

    # One more sweep for both the failing point and show_test: the table is still stored.
    with pytest.raises(PipelineError, match=r"1 of 2 experiments failed: sweep-\S+ "):
        sweep.run_sweep(["train.fail=false,true"], jobs=1, repo=project, show_test=True)
    _, _, artifacts = flow_run_records(latest_flow_run_id())
    stored = json.loads(artifacts["omniglot-sweep"].data)
    assert [(r["train.fail"], r["state"]) for r in stored] == [("False", "success"),
                                                               ("True", "failed")]
    assert stored[0]["evaluation/20-way/accuracy"] == 0.5
    assert stored[0]["lake/20-way/accuracy"] == 0.6
    assert "up to date" in run(["dvc", "status"], project).stdout
