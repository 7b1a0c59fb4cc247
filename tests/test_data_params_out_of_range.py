"""A data-stage parameter out of range is an error naming the parameter: from the CLI, exit 1
with the stage's previous output left as it was; in-process, a PipelineError."""

from pathlib import Path

import pandas as pd
import pytest

from siamese import paths
from siamese.config import FetchConfig, IndexConfig, load_params
from siamese.errors import PipelineError
from tasks.pairs import build_pairs
from tasks.split import split_images
from tasks.trials import build_trials
from tests.stagekit import run_stage, snapshot, write_params
from tests.synthetic import SYNTHETIC_PARAMS


def edited(edit: dict[str, dict]) -> dict[str, dict]:
    merged = {**SYNTHETIC_PARAMS}
    for name, values in edit.items():
        merged[name] = {**SYNTHETIC_PARAMS.get(name, {}), **values}
    return merged


@pytest.mark.parametrize(("stage", "edit", "message"), [
    ("pairs", {"pairs": {"train_count": -2}}, "pairs.train_count must be >= 0, got -2"),
    ("trials", {"trials": {"n_way": [3, 30]}}, "trials.n_way 30 is larger than every alphabet"),
], ids=["negative-count", "n_way-larger-than-any-alphabet"])
def test_cli_names_the_bad_parameter(synthetic_project, synthetic_source, stage, edit, message):
    write_params(synthetic_project, edited(edit))
    before = snapshot(synthetic_project)
    result = run_stage(synthetic_project, stage, synthetic_source)
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(synthetic_project) == before


def build(stage: str, root: Path, params: dict) -> None:
    """Run one stage's build function on root's manifests (in-process, writes nothing)."""
    images = pd.read_parquet(root / paths.IMAGES)
    split = pd.read_parquet(root / paths.SPLIT)
    lake = pd.read_parquet(root / paths.LAKE_RUNS)
    if stage == "fetch":
        FetchConfig.parse(params)
    elif stage == "index":
        IndexConfig.parse(params)
    elif stage == "split":
        split_images(images, lake, params)
    elif stage == "pairs":
        build_pairs(images, split, params)
    else:
        build_trials(images, split, lake, params)


@pytest.mark.parametrize(("stage", "edit", "message"), [
    ("pairs", {"pairs": {"valid_count": 7}}, "pairs.valid_count must be even"),
    ("pairs", {"pairs": {"negatives": "nearby"}}, "pairs.negatives must be one of"),
    ("pairs", {"pairs": {"train_count": 100000}}, "pairs.train_count=100000: not enough"),
    ("pairs", {"pairs": {"seed": "two"}}, "pairs.seed has the wrong type"),
    ("trials", {"trials": {"n_way": [1, 5]}}, "trials.n_way values must be >= 2"),
    ("trials", {"trials": {"n_way": []}}, "trials.n_way must be a list of integers"),
    ("trials", {"trials": {"per_alphabet": 0}}, "trials.per_alphabet must be >= 1"),
    ("split", {"split": {"by": "sideways"}}, "split.by must be one of drawer, image"),
    ("split", {"split": {"protocol": "mine"}}, "split.protocol must be one of lake, koch"),
    ("split", {"split": {"train_drawers": 13}}, "split.train_drawers + valid_drawers"),
    ("split", {"split": {"holdout_drawers": 1}}, "split.holdout_drawers must be >= 2, got 1"),
    ("split", {"split": {"valid_drawers": 1}}, "split.valid_drawers must be >= 2, got 1"),
    ("split", {"split": {"holdout_alphabets": 3, "protocol": "koch"}},
     "split.holdout_alphabets applies to protocol lake only"),
    ("split", {"split": {"holdout_alphabets": 99}}, "split.holdout_alphabets 99 leaves none"),
    ("trials", {"trials": {"holdout_per_alphabet": 0}}, "trials.holdout_per_alphabet must be >= 1"),
    ("split", {"split": {"seed": -1}}, "split.seed must be >= 0"),
    ("fetch", {"fetch": {"retries": -1}}, "fetch.retries must be >= 0"),
    ("fetch", {"fetch": {"files": ["a.zip"]}}, "fetch.files must be"),
    ("index", {"index": {"image_size": 0}}, "index.image_size must be >= 1"),
    ("index", {"index": {"expected_fingerprint": "abc"}}, "index.expected_fingerprint must be"),
])
def test_bad_parameter_is_a_pipeline_error(synthetic_data_root, tmp_path, stage, edit, message):
    params = load_params(write_params(tmp_path, edited(edit)))
    with pytest.raises(PipelineError, match="params.yaml: " + message.split()[0]) as error:
        build(stage, synthetic_data_root, params)
    assert message in str(error.value)
