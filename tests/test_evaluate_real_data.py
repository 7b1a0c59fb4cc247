"""`siamese evaluate` on the real data stages' outputs, and `siamese classify` on one of Lake's
runs giving the answers that evaluate gave for it (same model)."""

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from siamese import paths
from siamese.atomic import write_parquet
from siamese.config import load_params
from siamese.model import build_model, save_checkpoint
from siamese.zips import read_files
from tasks import evaluate
from tests import REPO
from tools import classify

TRIALS_PER_SET = 40  # per (trial_set, n_way): lake's first 40 are runs 1 and 2
VALID_PAIRS = 400


def link_small_data(real: Path, root: Path) -> None:
    """root/data: the real images, pixels and manifests, with the first trials of each set
    and the first validation pairs only (the real sets take minutes to embed on 2 cores)."""
    (root / "data/manifests").mkdir(parents=True)
    for name in ("raw", "packed"):
        (root / "data" / name).symlink_to(real / "data" / name)
    for path in (real / "data/manifests").iterdir():
        if path.name not in ("trials.parquet", "pairs.parquet"):
            (root / "data/manifests" / path.name).symlink_to(path)
    trials = pd.read_parquet(real / "data/manifests/trials.parquet")
    small = trials[trials["trial_id"] < TRIALS_PER_SET].reset_index(drop=True)
    write_parquet(small, root / "data/manifests/trials.parquet")
    pairs = pd.read_parquet(real / "data/manifests/pairs.parquet")
    valid = pairs[pairs["role"] == "valid"]
    write_parquet(valid.iloc[:VALID_PAIRS], root / "data/manifests/pairs.parquet")


@pytest.fixture(scope="module")
def evaluated(real_data_root: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A folder with (a subset of) the real data and a small random model, evaluated."""
    root = tmp_path_factory.mktemp("evaluate-real")
    link_small_data(real_data_root, root)
    torch.manual_seed(0)
    model = build_model("compact", 28, width=16, depth=4, embedding=32)
    save_checkpoint(root / "models/model.pt", model,
                    {"step": 0, "valid_accuracy": 0.0, "params_digest": "random"})
    params = {"evaluate": {**load_params(REPO / "params.yaml")["evaluate"], "pictures": 2}}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        metrics = evaluate.run(params)
    return root, metrics


def test_metrics_cover_every_trial_set_and_the_valid_pairs(evaluated):
    root, metrics = evaluated
    trials = pd.read_parquet(root / "data/manifests/trials.parquet")
    counts = trials.groupby(["trial_set", "n_way"]).size()
    assert json.loads((root / "reports/metrics.json").read_text()) == metrics
    assert {"valid", "evaluation", "lake"} <= set(metrics)
    assert metrics["lake"]["20-way"]["trials"] == TRIALS_PER_SET
    for (trial_set, n_way), count in counts.items():
        entry = metrics[trial_set][f"{n_way}-way"]
        lo, hi = entry["ci95"]
        assert entry["trials"] == count
        assert 0 <= lo <= entry["accuracy"] <= hi <= 1
        assert entry["accuracy"] == round(entry["accuracy"], 4)
    pairs = pd.read_parquet(root / "data/manifests/pairs.parquet")
    verification = metrics["verification"]
    assert verification["pairs"] == VALID_PAIRS == len(pairs)
    assert 0 <= verification["accuracy"] <= 1 and 0 <= verification["auc"] <= 1


def test_report_folder_holds_predictions_alphabets_pictures_and_report(evaluated):
    root, metrics = evaluated
    out = root / "reports/evaluate"
    trials = pd.read_parquet(root / "data/manifests/trials.parquet")
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert len(predictions) == len(trials)
    assert {"trial_set", "n_way", "trial_id", "predicted", "answer", "credit", "scores"} <= set(
        predictions.columns)
    per_alphabet = pd.read_csv(out / "per_alphabet.csv")
    evaluation = per_alphabet[per_alphabet["trial_set"] == "evaluation"]
    assert set(evaluation["alphabet"]) == set(trials.loc[trials["trial_set"] == "evaluation",
                                                         "alphabet"])
    pictures = sorted((out / "pictures").iterdir())
    assert len(pictures) == 2 * len(set(trials["trial_set"]))
    report = (out / "report.md").read_text()
    fingerprint = json.loads((root / "data/manifests/dataset.json").read_text())["fingerprint"]
    assert fingerprint in report and "arch compact" in report
    assert f"{metrics['lake']['20-way']['accuracy']:.1%}" in report
    assert all(f"](pictures/{p.name})" in report for p in pictures)


def test_classify_on_lake_run01_gives_the_answers_of_evaluate(evaluated, real_data_root,
                                                             tmp_path):
    root, _ = evaluated
    lake = pd.read_parquet(root / "data/manifests/lake_runs.parquet")
    run = lake[lake["run"] == 1]
    raw = tmp_path / "run01"  # the run's PNGs as a user has them: files on disk
    for file, data in zip(run["file"], read_files(real_data_root / paths.RAW, list(run["file"])),
                          strict=True):
        (raw / file).parent.mkdir(parents=True, exist_ok=True)
        (raw / file).write_bytes(data)
    support = [raw / f for f in run.loc[run["kind"] == "training", "file"]]
    query = [raw / f for f in run.loc[run["kind"] == "test", "file"]]
    table = classify.run(root / "models/model.pt", support, query, "cpu", out=io.StringIO())

    # evaluate's answer for each run01 test item, as the file of the chosen class image
    trials = pd.read_parquet(root / "data/manifests/trials.parquet")
    predictions = pd.read_parquet(root / "reports/evaluate/predictions.parquet")
    lake_trials = predictions[predictions["trial_set"] == "lake"].merge(
        trials[["trial_set", "n_way", "trial_id", "candidate_ids"]])
    by_query = lake_trials.set_index("query_id")
    class_file = run[run["kind"] == "training"].set_index("image_id")["file"]
    expected, best = [], []
    for image_id in run.loc[run["kind"] == "test", "image_id"]:
        trial = by_query.loc[image_id]
        assert sorted(trial["candidate_ids"]) == sorted(class_file.index)  # this run's classes
        expected.append(str(raw / class_file[trial["candidate_ids"][trial["predicted"]]]))
        best.append(1 / (1 + np.exp(-float(np.max(trial["scores"])))))
    assert table["prediction"].tolist() == expected
    np.testing.assert_allclose(table["score"], np.round(best, 4), atol=2e-4)
