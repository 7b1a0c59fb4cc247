"""The summary a flow run leaves (flows/summary.py), without Prefect: the fingerprint check,
a run that failed before its stages, and the labels a run gets."""

import json
from pathlib import Path

from flows.summary import RunRecord, fingerprint_check, run_label, state_name, summary_markdown


def project(root: Path, fingerprint: str | None, expected: str | None) -> Path:
    root.mkdir(exist_ok=True)
    (root / "params.yaml").write_text(
        "train:\n  cpu_paths: avx2\n"
        + (f"index:\n  expected_fingerprint: '{expected}'\n" if expected else ""))
    if fingerprint:
        (root / "data/manifests").mkdir(parents=True)
        (root / "data/manifests/dataset.json").write_text(json.dumps({"fingerprint": fingerprint}))
    return root


def test_the_data_fingerprint_is_checked_against_params_yaml(tmp_path):
    assert fingerprint_check(project(tmp_path / "a", "ab" * 32, "ab" * 32)) == (
        f"`{'ab' * 6}`, as params.yaml's index.expected_fingerprint expects")
    unexpected = fingerprint_check(project(tmp_path / "b", "ab" * 32, "cd" * 32))
    assert "**UNEXPECTED**" in unexpected and "cd" * 6 in unexpected
    assert "expects none" in fingerprint_check(project(tmp_path / "c", "ab" * 32, None))
    assert "index stage has not run" in fingerprint_check(project(tmp_path / "d", None, None))


def test_a_run_that_failed_before_its_stages_says_so_and_shows_no_figures(tmp_path):
    root = project(tmp_path, None, None)
    record = RunRecord(found=("0123456789abcdef", True))
    record.fail("dvc pull: the remote does not answer")
    text = summary_markdown(root, record)
    assert text.startswith("# Failed\n\nPipeline run at `01234567` (dirty).")
    assert "The run: dvc pull: the remote does not answer" in text
    assert "## Results\n\nNone: the run did not complete" in text
    assert "| model |" not in text  # the workspace's model is an earlier run's


def test_labels_and_state_names(tmp_path):
    name, tags = run_label(project(tmp_path, "ef" * 32, None), ("0123456789abcdef", False))
    assert name.startswith("01234567-clean-params-")
    assert tags[:2] == ["rev:01234567", "clean"] and tags[-1] == "data:" + "ef" * 4
    assert [state_name(o) for o in ("ran", "up to date", "restored", "unknown")] == [
        "Ran", "Up to date", "Restored", "Completed"]
