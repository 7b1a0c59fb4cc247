"""What an operator sees of a pipeline flow run in Prefect's UI, read through the same API the
UI reads: the run's name and tags, each stage's state name, the summary artifact (outcome,
stages, the README's results table, provenance), and for a failed run no earlier figures.

The tiny four-stage project of tests/flowkit.py, its train and evaluate writing the files
that the README's results table is made of (the project's own reports/metrics.json).
"""

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from tests import REPO
from tests.flowkit import (
    DVC_YAML,
    PARAMS_YAML,
    STAGES_PY,
    flow_run_records,
    git_commit_all,
    init_repo,
    run,
    set_param,
)

pytestmark = pytest.mark.slow  # Prefect's temporary server and four flow runs: ~40 s

STAGES = ["fetch", "index", "train", "evaluate"]
TRAIN_WRITES = ('    Path("models/model.pt").write_text(f"lr={p[\'train\'][\'lr\']}")\n'
                '    Path("reports/train").mkdir(parents=True, exist_ok=True)\n'
                '    Path("reports/train/metrics.json").write_text(\'{"best_step": 3}\')\n')


def make_project(root: Path) -> Path:
    """The tiny project whose model is models/model.pt and whose metrics are the README's."""
    root.mkdir(parents=True)
    stages = STAGES_PY.replace(
        '    Path("models/model.txt").write_text(f"lr={p[\'train\'][\'lr\']}")\n', TRAIN_WRITES
    ).replace("models/model.txt", "models/model.pt").replace(
        'metrics = {"valid"', 'metrics = json.load(open("metrics.given.json")) or {"valid"')
    (root / "stages.py").write_text(stages)
    (root / "dvc.yaml").write_text(DVC_YAML.replace("models/model.txt", "models/model.pt"))
    fingerprint = hashlib.sha256(b"some images").hexdigest()
    (root / "params.yaml").write_text(
        PARAMS_YAML.replace("  fail: false", "  fail: false\n  steps: 6\n  cpu_paths: avx2")
        + f"index:\n  expected_fingerprint: {fingerprint}\n")
    (root / "metrics.given.json").write_text((REPO / "reports/metrics.json").read_text())
    init_repo(root)
    git_commit_all(root, "tiny pipeline")
    return root


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """(project, flow runs): built, cached, index restored from DVC's run cache, then failed
    in train."""
    request.getfixturevalue("prefect_session")
    from flows.pipeline import pipeline_flow

    project = make_project(tmp_path_factory.mktemp("ui") / "tiny")
    built = pipeline_flow(repo=str(project), return_state=True)
    cached = pipeline_flow(repo=str(project), return_state=True)
    (project / "data/manifests/dataset.json").unlink()
    restored = pipeline_flow(repo=str(project), return_state=True)
    set_param(project, "train", "fail", True)
    set_param(project, "train", "lr", 0.5)  # train reruns, and fails
    failed = pipeline_flow(repo=str(project), return_state=True)
    return project, {"built": built, "cached": cached, "restored": restored,
                     "failed": failed}


def flow_run(state):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


def state_names(state) -> dict[str, str]:
    tasks, _, _ = flow_run_records(state.state_details.flow_run_id)
    return {name: task.state.name for name, task in tasks.items()}


def artifacts(state) -> dict:
    return flow_run_records(state.state_details.flow_run_id)[2]


def test_stage_outcomes_are_the_task_runs_state_names(runs):
    _, states = runs
    assert state_names(states["built"]) == dict.fromkeys(STAGES, "Ran")
    assert state_names(states["cached"]) == dict.fromkeys(STAGES, "Up to date")
    assert state_names(states["restored"]) == dict.fromkeys(STAGES, "Up to date") | {
        "index": "Restored"}
    assert state_names(states["failed"]) == {"fetch": "Up to date", "index": "Up to date",
                                             "train": "Failed"}  # evaluate never started
    assert all(s.is_completed() for s in (states["built"], states["cached"]))


def test_runs_are_named_and_tagged_by_what_they_ran(runs):
    project, states = runs
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    built, failed = flow_run(states["built"]), flow_run(states["failed"])
    assert built.name.startswith(f"{head[:8]}-clean-params-")
    assert {f"rev:{head[:8]}", "clean", "data:" + hashlib.sha256(b"some images").hexdigest()[:8]
            } <= set(built.tags)
    assert failed.name.startswith(f"{head[:8]}-dirty-params-") and "dirty" in failed.tags


def test_a_completed_runs_summary_has_its_stages_results_and_provenance(runs):
    project, states = runs
    summary = artifacts(states["cached"])["omniglot-summary"].data
    assert summary.startswith("# Completed\n")
    for stage in STAGES:
        assert f"| {stage} | up to date | 0.0 |" in summary
    readme = (REPO / "README.md").read_text()
    table = readme.split("| trial set | 20-way | 5-way |")[1].split("Accuracy, 95% interval")[0]
    assert "| trial set | 20-way | 5-way |" + table in summary  # the README's own rows
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train"]
    assert f"md5 `{lock['outs'][0]['md5'][:12]}`" in summary
    assert "as params.yaml's index.expected_fingerprint expects" in summary
    assert "best step 3" in summary and "| cpu_paths | `avx2` |" in summary
    assert "omniglot-metrics" in artifacts(states["cached"])


def test_a_failed_run_shows_the_stage_its_last_lines_and_no_earlier_figures(runs):
    _, states = runs
    found = artifacts(states["failed"])
    assert "omniglot-metrics" not in found  # the workspace's metrics are the built run's
    summary = found["omniglot-summary"].data
    assert summary.startswith("# Failed in stage `train`\n")
    assert "| train | **failed** |" in summary and "| evaluate | not run |" in summary
    assert "## Results\n\nNone: the run did not complete" in summary
    assert "boom" in summary and "boom" in found["omniglot-failure"].data
    assert "Stage `train`" in found["omniglot-failure"].data
    stages = json.loads(found["omniglot-stages"].data)
    assert [(r["stage"], r["outcome"]) for r in stages] == [
        ("fetch", "up to date"), ("index", "up to date"), ("train", "failed")]
