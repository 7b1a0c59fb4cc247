"""A checkout is dirty when its code or parameters differ from the commit, not when a previous
run left what DVC writes (dvc.lock, outputs, metrics, reports) uncommitted (issue 29, item 12):
after one nightly that rebuilt, the next nightly is clean."""

from pathlib import Path

import pytest

from siamese.provenance import git_revision
from tests.flowkit import git_commit_all, make_tiny_project, run, set_param
from tools import runs


@pytest.fixture
def rebuilt(tmp_path) -> Path:
    """The tiny project built and committed, then a committed parameter change rebuilt by
    `dvc repro`, as a nightly rebuilds: dvc.lock and the git-tracked metrics and reports
    changed, not committed."""
    project = make_tiny_project(tmp_path / "tiny")
    run(["dvc", "repro"], project)
    git_commit_all(project, "built")
    set_param(project, "train", "lr", 0.5)
    git_commit_all(project, "lr 0.5")
    run(["dvc", "repro"], project)
    changed = run(["git", "status", "--porcelain"], project).stdout
    assert "dvc.lock" in changed and "reports/metrics.json" in changed
    return project


def test_what_dvc_wrote_is_not_dirty_code_and_params_are(rebuilt):
    head = run(["git", "rev-parse", "HEAD"], rebuilt).stdout.strip()
    assert git_revision(rebuilt) == (head, False)
    stages = rebuilt / "stages.py"
    stages.write_text(stages.read_text() + "\n# an edit\n")
    assert git_revision(rebuilt) == (head, True)
    run(["git", "checkout", "--", "stages.py"], rebuilt)
    set_param(rebuilt, "train", "lr", 0.75)
    assert git_revision(rebuilt) == (head, True)


def test_outside_git_the_revision_is_unknown_and_clean(tmp_path):
    assert git_revision(tmp_path) == ("unknown", False)


@pytest.mark.slow  # the session's Prefect server and two flow runs
def test_the_nightly_after_one_that_rebuilt_is_clean(request, rebuilt):
    request.getfixturevalue("prefect_session")
    from flows.pipeline import pipeline_flow

    def dirty() -> bool:
        state = pipeline_flow(repo=str(rebuilt), return_state=True)
        [record] = runs.list_runs(root=rebuilt, ids=[state.state_details.flow_run_id])["runs"]
        return record["dirty"]

    assert dirty() is False
    set_param(rebuilt, "train", "lr", 0.125)  # not committed
    assert dirty() is True
