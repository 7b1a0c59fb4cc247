"""The deployments' pull step (flows.worker.enter_checkout): the worker's SIAMESE_REPO, read
when a run starts, must be a clean git checkout of the project; the pipeline's own writes
(dvc.lock, outputs, metrics) do not make it dirty."""

import shutil
from pathlib import Path

import pytest

from flows.worker import enter_checkout
from siamese.errors import PipelineError
from tests.flowkit import make_tiny_project, run


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)  # enter_checkout changes the directory; this restores it
    return make_tiny_project(tmp_path / "checkout")


def refused(monkeypatch, value: str | None) -> str:
    if value is None:
        monkeypatch.delenv("SIAMESE_REPO", raising=False)
    else:
        monkeypatch.setenv("SIAMESE_REPO", value)
    cwd = Path.cwd()
    with pytest.raises(PipelineError) as error:
        enter_checkout()
    assert Path.cwd() == cwd
    assert "\n" not in str(error.value)
    return str(error.value)


def test_a_clean_checkout_is_entered_even_after_the_pipeline_wrote_to_it(checkout, monkeypatch):
    run(["dvc", "repro"], checkout)  # changes dvc.lock and the metrics, which git tracks
    assert run(["git", "status", "--porcelain"], checkout).stdout
    monkeypatch.setenv("SIAMESE_REPO", str(checkout))
    assert enter_checkout() == {"directory": str(checkout)}
    assert Path.cwd() == checkout


def test_a_missing_or_unset_checkout_is_refused_in_one_line(checkout, monkeypatch, tmp_path):
    assert refused(monkeypatch, None).startswith(
        "SIAMESE_REPO is not set in the worker's environment: start it as")
    missing = str(tmp_path / "gone")
    assert refused(monkeypatch, missing) == (
        f"SIAMESE_REPO={missing}: no checkout of the project there (no dvc.yaml)")
    bare = tmp_path / "not-git"
    bare.mkdir()
    shutil.copy(checkout / "dvc.yaml", bare / "dvc.yaml")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above it
    assert refused(monkeypatch, str(bare)).startswith(
        f"SIAMESE_REPO={bare}: not a git checkout of the project")


def test_a_dirty_checkout_is_refused_and_left_as_it_is(checkout, monkeypatch):
    (checkout / "params.yaml").write_text("fetch: {content: changed}\n")
    assert refused(monkeypatch, str(checkout)) == (
        f"SIAMESE_REPO={checkout}: the checkout has uncommitted changes to tracked files "
        "(params.yaml); commit or stash them, runs use committed code")
    assert (checkout / "params.yaml").read_text() == "fetch: {content: changed}\n"
