"""`siamese sweep`: a grid of overrides as DVC experiments, one after another or queued."""

import csv
import json

import pytest

from siamese.errors import PipelineError
from tests.flowkit import git_commit_all, make_tiny_project, prefect_session, run  # noqa: F401


@pytest.fixture(scope="module")
def sweep(request):
    request.getfixturevalue("prefect_session")
    from flows import sweep

    return sweep


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny pipeline, built by `dvc repro` and committed (experiments start from HEAD)."""
    root = make_tiny_project(tmp_path_factory.mktemp("sweep") / "tiny")
    run(["dvc", "repro"], root)
    git_commit_all(root, "built")
    return root


def test_dvc_queues_the_cartesian_product_of_the_grid(sweep, project):
    """The grid goes to DVC as it is (`-S KEY=V1,V2`); DVC queues one experiment per point
    and the sweep reads back each point's name and overrides."""
    grid = ["train.lr=0.1,0.2", "fetch.content=a,b,c"]
    done = run(sweep.dvc("exp", "run", "--queue", "-n", "grid", *sweep.set_args(grid)), project)
    try:
        points = sweep.queued_points(done.stdout.splitlines())
    finally:
        run(sweep.dvc("queue", "remove", "--all"), project)
    assert [name for name, _ in points] == [f"grid-{i}" for i in range(1, 7)]
    assert points[0][1] == ["train.lr=0.1", "fetch.content=a"]
    assert ["train.lr=0.2", "fetch.content=c"] in [overrides for _, overrides in points]
    with pytest.raises(PipelineError, match="queued nothing"):
        sweep.queued_points(["ERROR: something"])


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


@pytest.mark.slow
def test_sweep_one_by_one_compares_points_and_leaves_the_workspace(sweep, project):
    """jobs=1: DVC's queue runs the points one at a time (tests/test_pipeline_flow_end_to_end.py
    runs a sweep with jobs=2 on the real pipeline)."""
    params = (project / "params.yaml").read_text()
    rows = sweep.run_sweep(["train.lr=0.75,0.25"], jobs=1, repo=project)
    assert [(r["train.lr"], r["state"]) for r in rows] == [("0.75", "success"), ("0.25", "success")]
    assert [r["valid/20-way/accuracy"] for r in rows] == [0.25, 0.75]
    tables = sorted((project / "reports/sweep").glob("*.csv"))
    assert len(tables) == 1 and tables[0].with_suffix(".md").exists()
    with open(tables[0]) as f:
        assert [row["valid/20-way/accuracy"] for row in csv.DictReader(f)] == ["0.25", "0.75"]
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    names = {rev["name"] for b in shown for e in b.get("experiments") or [] for rev in e["revs"]}
    assert {r["experiment"] for r in rows} <= names
    assert (project / "params.yaml").read_text() == params  # the workspace is untouched
    assert "up to date" in run(["dvc", "status"], project).stdout

    with pytest.raises(PipelineError, match=r"1 of 1 experiments failed: sweep-\S+ "):
        sweep.run_sweep(["train.fail=true"], jobs=1, repo=project)
    assert "up to date" in run(["dvc", "status"], project).stdout
