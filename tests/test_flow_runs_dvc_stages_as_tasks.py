"""The pipeline flow on a small real DVC project: one task per stage, DVC decides what runs."""

import json
from pathlib import Path

import pytest

from tests.flowkit import flow_run_records, latest_flow_run_id, make_tiny_project, run, set_param
from tests.flowkit import git_commit_all as commit

pytestmark = pytest.mark.slow  # Prefect flows over DVC stages: not in `make check`


@pytest.fixture(scope="module")
def pipeline(request):
    request.getfixturevalue("prefect_session")
    from flows import pipeline

    return pipeline


@pytest.fixture
def project(tmp_path) -> Path:
    return make_tiny_project(tmp_path / "tiny")


def outcomes(results) -> dict[str, str]:
    return {r["stage"]: r["outcome"] for r in results}


def test_stage_order_comes_from_dvc_graph(pipeline, project):
    from flows.dvcstages import pipeline_stages

    assert pipeline_stages(project) == ["fetch", "index", "train", "evaluate"]


@pytest.mark.slow
def test_flow_and_dvc_repro_share_one_lock_and_cache(pipeline, project):
    """Each skips what the other built (tests/test_pipeline_flow_end_to_end.py: the flow
    skipping its own work, and rerunning just what a changed param touches)."""
    first = pipeline.run_pipeline(repo=project)
    assert outcomes(first) == dict.fromkeys(["fetch", "index", "train", "evaluate"], "ran")
    assert "up to date" in run(["dvc", "status"], project).stdout
    assert "Running stage" not in run(["dvc", "repro"], project).stdout

    set_param(project, "train", "lr", 0.5)
    repro = run(["dvc", "repro"], project).stdout
    assert "Running stage 'train'" in repro and "Running stage 'index'" not in repro
    assert set(outcomes(pipeline.run_pipeline(repo=project)).values()) == {"up to date"}


def test_cached_run_asks_dvc_once_and_starts_no_dvc_process(pipeline, project):
    """Up-to-date stages end their tasks from the flow's one `dvc status`; once a stage runs,
    DVC itself judges every stage after it (here: index reruns, train and evaluate are
    found unchanged by `dvc repro`, since index wrote the same output)."""
    run(["dvc", "repro"], project)
    state = pipeline.pipeline_flow(repo=str(project), return_state=True)
    assert set(outcomes(state.result()).values()) == {"up to date"}
    tasks, logs, _ = flow_run_records(state.state_details.flow_run_id)
    assert sorted(tasks) == ["evaluate", "fetch", "index", "train"]
    for stage in tasks:
        assert logs[stage][0] == f"Stage '{stage}' didn't change (dvc status), skipping"
        assert not any("stage" in line and "starting" in line for line in logs[stage])

    (project / "data/manifests/dataset.json").unlink()
    state = pipeline.pipeline_flow(repo=str(project), return_state=True)
    assert outcomes(state.result()) == {"fetch": "up to date", "index": "restored",
                                        "train": "up to date", "evaluate": "up to date"}
    tasks, logs, _ = flow_run_records(state.state_details.flow_run_id)
    assert any("didn't change, skipping" in line for line in logs["train"])  # dvc repro's


def test_each_stage_is_a_task_run_with_its_log_retries_and_artifacts(
    pipeline, project, tmp_path, monkeypatch
):
    run(["dvc", "repro"], project)
    monkeypatch.setitem(pipeline.RETRIES, "fetch", (2, 0.2))
    monkeypatch.setenv("FLAKY_MARKER", str(tmp_path / "failed-once"))  # fetch fails once
    state = pipeline.pipeline_flow(repo=str(project), force=True, return_state=True)
    assert state.is_completed()
    assert set(outcomes(state.result()).values()) == {"ran"}  # forced, though up to date
    tasks, logs, artifacts = flow_run_records(state.state_details.flow_run_id)
    assert sorted(tasks) == ["evaluate", "fetch", "index", "train"]
    assert all(t.state.is_completed() for t in tasks.values())
    assert all(t.total_run_time.total_seconds() > 0 for t in tasks.values())
    for stage in tasks:
        assert f"stage {stage} starting" in logs[stage] and f"stage {stage} done" in logs[stage]
        assert f"stage {stage} done" not in logs.get("flow", [])
    assert tasks["fetch"].run_count == 2 and tasks["train"].run_count == 1
    assert any("transient network error" in line for line in logs["fetch"])

    table = json.loads(artifacts["omniglot-metrics"].data)
    assert {"metric": "valid/20-way/accuracy", "value": 0.75} in table
    from siamese.provenance import params_digest

    fingerprint = json.loads((project / "data/manifests/dataset.json").read_text())["fingerprint"]
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    # dvc.lock and .gitignore are new, not changed: the tree the run found was clean
    assert json.loads(artifacts["omniglot-provenance"].data) == [{
        "fingerprint": fingerprint, "params_digest": params_digest(project),
        "git_revision": head, "dirty": False, "metrics": "reports/metrics.json"}]
    stages = json.loads(artifacts["omniglot-stages"].data)
    assert [(r["stage"], r["outcome"]) for r in stages] == [
        ("fetch", "ran"), ("index", "ran"), ("train", "ran"), ("evaluate", "ran")]


def test_failing_stage_fails_its_task_and_stops_the_flow(pipeline, project):
    from siamese.errors import PipelineError

    run(["dvc", "repro"], project)
    commit(project, "built")
    model = (project / "models/model.txt").read_text()
    lock = (project / "dvc.lock").read_text()
    set_param(project, "train", "fail", True)
    set_param(project, "fetch", "content", "other images")

    with pytest.raises(PipelineError, match="(?s)stage 'train' failed.*boom"):
        pipeline.run_pipeline(repo=project)
    tasks, logs, _ = flow_run_records(latest_flow_run_id())
    assert sorted(tasks) == ["fetch", "index", "train"]  # evaluate never started
    assert tasks["train"].state.is_failed() and tasks["index"].state.is_completed()
    assert any("boom" in line for line in logs["train"])
    assert (project / "data/raw/images.txt").read_text() == "other images"  # upstream: kept
    new_lock = (project / "dvc.lock").read_text()
    assert new_lock != lock and "lr: 0.25" in new_lock  # fetch/index recorded, train untouched
    # DVC removes a stage's outputs before running it; the last good ones stay in its cache.
    assert not (project / "models/model.txt").exists()
    run(["dvc", "checkout", "train"], project)
    assert (project / "models/model.txt").read_text() == model
