"""`siamese lineage`: outputs traced through dvc.lock, images through the manifests."""

import io
import json
import subprocess

import pandas as pd
import pytest

from siamese import paths
from siamese.errors import PipelineError
from tests.flowkit import BIN, make_tiny_project, run, set_param
from tools import lineage


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny DVC pipeline (tests/flowkit.py), reproduced once by `dvc repro`."""
    project = make_tiny_project(tmp_path_factory.mktemp("lineage") / "tiny")
    run(["dvc", "repro"], project)
    return project


def test_metrics_lineage_lists_every_upstream_stage_from_dvc_lock(built):
    rec = lineage.lineage("reports/metrics.json", built)
    assert rec["stage"] == "evaluate" and rec["matches_lock"] is True
    assert [s["stage"] for s in rec["stages"]] == ["fetch", "index", "train", "evaluate"]
    train = rec["stages"][2]
    assert train["params"] == {"train.lr": 0.25, "train.fail": False}
    assert train["deps"][0]["path"] == "data/manifests/dataset.json"
    assert train["deps"][0]["md5"] == rec["stages"][1]["outs"][0]["md5"]
    assert rec["dataset"]["fingerprint"] in json.dumps(rec)
    assert rec["git"]["revision"] == run(["git", "rev-parse", "HEAD"], built).stdout.strip()
    assert rec["warnings"] == []
    assert rec["git"]["lock_revision"] is None and rec["git"]["lock_uncommitted"]  # not committed

    model = lineage.lineage("models/model.txt", built)
    assert [s["stage"] for s in model["stages"]] == ["fetch", "index", "train"]


def test_lineage_cli_text_and_json_and_stale_warnings(built, tmp_path):
    project = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(built), str(project)], check=True)
    text = run([str(BIN / "siamese"), "lineage", "reports/metrics.json"], project).stdout
    assert "written by stage 'evaluate'" in text and "param train.lr = 0.25" in text
    as_json = json.loads(run([str(BIN / "siamese"), "lineage", "reports/metrics.json", "--json"],
                             project).stdout)
    assert as_json["stage"] == "evaluate"

    set_param(project, "fetch", "content", "changed images")  # rebuild only the data stages
    run(["dvc", "repro", "index"], project)
    after = run([str(BIN / "siamese"), "lineage", "reports/metrics.json"], project).stdout
    assert after != text
    assert "warning: stage 'train' was built from data/manifests/dataset.json" in after


def test_unknown_targets_are_clear_errors(built):
    with pytest.raises(PipelineError, match="not an output of any stage in dvc.lock"):
        lineage.lineage("reports/nothing.json", built)
    with pytest.raises(PipelineError, match="images.parquet: not found"):
        lineage.lineage("3", built)
    done = run([str(BIN / "siamese"), "lineage", "nowhere.pt"], built, check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lock = (built / "dvc.lock").read_text()
    (built / "dvc.lock").write_text(lock.split("  evaluate:")[0])
    try:
        with pytest.raises(PipelineError, match="output of stage 'evaluate', which has not run"):
            lineage.lineage("reports/metrics.json", built)
    finally:
        (built / "dvc.lock").write_text(lock)
    with pytest.raises(PipelineError, match="dvc.lock: not found"):
        lineage.lineage("reports/metrics.json", built / "data")


def test_image_lineage_gives_its_file_role_pairs_and_trials(synthetic_data_root, monkeypatch):
    images = pd.read_parquet(synthetic_data_root / paths.IMAGES)
    trials = pd.read_parquet(synthetic_data_root / paths.TRIALS)
    query = int(trials["query_id"].iloc[0])
    rec = lineage.lineage(str(query), synthetic_data_root)
    row = images.set_index("image_id").loc[query]
    assert rec["path"] == row["path"] and rec["sha256"] == row["sha256"]
    assert rec["alphabet"] == row["alphabet"] and rec["drawer"] == row["drawer"]
    assert rec["role"] in {"train", "valid", "holdout", "test"}
    first = trials.iloc[0]
    assert {"trial_set": first["trial_set"], "n_way": int(first["n_way"]),
            "k_shot": int(first["k_shot"]), "trial_id": int(first["trial_id"]),
            "as": "query"} in rec["trials"]
    pairs = pd.read_parquet(synthetic_data_root / paths.PAIRS)
    train_pairs = pairs[pairs["role"] == "train"]
    some = int(train_pairs["left_id"].iloc[0])
    expected = int(((train_pairs["left_id"] == some) | (train_pairs["right_id"] == some)).sum())
    assert lineage.lineage(str(some), synthetic_data_root)["pairs_by_role"]["train"] == expected

    out = io.StringIO()
    monkeypatch.chdir(synthetic_data_root)
    lineage.run(str(query), out=out)
    assert f"image {query}: {row['path']} in data/raw/images_" in out.getvalue()
    assert f"{first['trial_set']} {first['n_way']}-way trial {first['trial_id']} (query)" \
        in out.getvalue()
    with pytest.raises(PipelineError, match=f"image_id {len(images)} is not in"):
        lineage.lineage(str(len(images)), synthetic_data_root)
