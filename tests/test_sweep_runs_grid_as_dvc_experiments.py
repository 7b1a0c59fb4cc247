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


def test_grid_is_the_cartesian_product_of_known_parameters(sweep):
    params = {"train": {"lr": 0.1, "steps": 5}, "fetch": {"content": "x"}}
    axes = sweep.parse_grid(["train.lr=0.1,0.2", "train.steps=1,2,3"], params)
    points = sweep.grid_points(axes)
    assert len(points) == 6 and ["train.lr=0.2", "train.steps=3"] in points
    for bad, message in [(["train.nope=1"], "train.nope is not a parameter of params.yaml"),
                         (["train=1"], "train is a section"),
                         (["train.lr"], "is not KEY=V1,V2"),
                         (["train.lr=0.1,"], "empty value"),
                         (["train.lr=1", "train.lr=2"], "given twice")]:
        with pytest.raises(PipelineError, match=message):
            sweep.parse_grid(bad, params)


def test_unknown_parameter_or_ignored_metrics_fail_before_any_experiment(sweep, project):
    with pytest.raises(PipelineError, match="train.momentum is not a parameter"):
        sweep.run_sweep(["train.lr=0.5", "train.momentum=0.9"], jobs=1, repo=project)
    (project / ".gitignore").write_text("/reports/\n")
    try:
        with pytest.raises(PipelineError, match="reports/metrics.json are ignored by git"):
            sweep.run_sweep(["train.lr=0.5"], jobs=1, repo=project)
    finally:
        (project / ".gitignore").unlink()
    assert run(["dvc", "exp", "list"], project).stdout.strip() == ""
    assert not (project / "reports/sweep").exists()


@pytest.mark.slow
def test_sweep_one_by_one_compares_points_and_leaves_the_workspace(sweep, project):
    """jobs=1: one `dvc exp run --temp` per point (tests/test_pipeline_flow_end_to_end.py
    runs a queued sweep, jobs=2, on the real pipeline)."""
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

    with pytest.raises(PipelineError, match=r"1 of 1 experiments failed: sweep-\S+-1 "):
        sweep.run_sweep(["train.fail=true"], jobs=1, repo=project)
    assert "up to date" in run(["dvc", "status"], project).stdout
