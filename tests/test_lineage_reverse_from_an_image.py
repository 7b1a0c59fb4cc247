"""`siamese lineage IMAGE --reverse`: the manifests, model, metrics and stages that depend on
one image of the synthetic data, by id, by path or by Lake run file."""

import shutil

import pandas as pd
import pytest
import yaml

from siamese import paths
from siamese.errors import PipelineError
from tests import REPO
from tests.flowkit import BIN, run
from tools import reverse

DOWNSTREAM = ["index", "split", "audit", "pairs", "trials", "train", "evaluate"]


@pytest.fixture(scope="module")
def project(tmp_path_factory, synthetic_data_root):
    """A copy of the synthetic data with the project's dvc.yaml beside it."""
    root = shutil.copytree(synthetic_data_root, tmp_path_factory.mktemp("reverse") / "p")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    return root


def test_a_lake_test_image_and_everything_downstream_of_it(project):
    lake = pd.read_parquet(project / paths.LAKE_RUNS)
    first = lake.iloc[0]
    rec = reverse.reverse(str(first["image_id"]), project)
    assert rec["role"] == "test"
    assert {"run": int(first["run"]), "kind": first["kind"], "position": int(first["position"]),
            "file": first["file"]} in rec["lake_runs"]
    assert rec["produced_by"] == ["fetch"] and rec["stages_rerun"] == DOWNSTREAM
    outputs = {a["path"]: a["stage"] for a in rec["artifacts"]}
    assert outputs[paths.MODEL.as_posix()] == "train"
    assert outputs[paths.METRICS.as_posix()] == "evaluate"
    assert outputs[paths.TRIALS.as_posix()] == "trials"
    assert rec["uses"][paths.MODEL.as_posix()] == "never shown it (test role)"
    assert "lake 20-way" in rec["uses"][paths.METRICS.as_posix()]
    by_path = reverse.reverse(rec["path"], project)
    assert by_path["image_id"] == rec["image_id"]
    assert reverse.reverse(first["file"], project)["image_id"] == rec["image_id"]


def test_a_train_image_trains_the_model(project):
    split = pd.read_parquet(project / paths.SPLIT)
    some = int(split.loc[split["role"] == "train", "image_id"].iloc[0])
    rec = reverse.reverse(str(some), project)
    assert rec["uses"][paths.MODEL.as_posix()] == "trained on it (train role)"
    assert rec["lake_runs"] == []
    text = run([str(BIN / "siamese"), "lineage", str(some), "--reverse"], project).stdout
    assert "stages that would rerun if it changed: " + ", ".join(DOWNSTREAM) in text
    assert "models/model.pt  (train)" in text


def test_bad_images_are_one_line_errors(project):
    n = len(pd.read_parquet(project / paths.IMAGES))
    done = run([str(BIN / "siamese"), "lineage", str(n), "--reverse"], project, check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert f"image_id {n} is not in" in done.stderr
    with pytest.raises(PipelineError, match="'nowhere.png': not an image of"):
        reverse.reverse("nowhere.png", project)


def test_a_manifest_that_dvc_lock_does_not_record_is_an_error(project, tmp_path):
    root = shutil.copytree(project, tmp_path / "p")
    lock = {"schema": "2.0", "stages": {"index": {"cmd": "siamese index", "outs": [
        {"path": paths.IMAGES.as_posix(), "md5": "0" * 32}]}}}
    (root / "dvc.lock").write_text(yaml.safe_dump(lock))
    with pytest.raises(PipelineError, match="images.parquet: md5 .* differs from 0{32} in dvc"):
        reverse.reverse("0", root)


def test_downstream_orders_stages_after_what_they_wait_for():
    stages = {"evaluate": {"deps": ["m", "d/x"]}, "train": {"deps": ["d"], "outs": ["m"]},
              "other": {"deps": ["elsewhere"]}}
    assert reverse.downstream(stages, "d/x/1.png") == ["train", "evaluate"]
