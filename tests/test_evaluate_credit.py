"""`siamese evaluate` end to end on a small made-up data folder: an oracle scores 100%, a model
that scores every candidate alike scores chance (1/n, not 100%), bad trials are refused."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from siamese.atomic import write_json, write_npy, write_parquet
from siamese.config import load_params
from siamese.errors import PipelineError
from siamese.images import pack
from siamese.model import build_model, save_checkpoint
from tasks import evaluate
from tests import REPO

ALPHABETS = ("Alpha", "Beta")
CHARACTERS = 5
DRAWERS = 3


def make_data(root: Path) -> None:
    """Images where all drawers of a character are the same picture, trials and pairs on them.

    image_id = (alphabet * CHARACTERS + character) * DRAWERS + drawer.
    """
    rng = np.random.default_rng(0)
    count = len(ALPHABETS) * CHARACTERS
    pictures = np.repeat(rng.random((count, 105, 105)) < 0.2, DRAWERS, axis=0)
    write_npy(pack(pictures), root / "data/packed/pixels.npy")
    ids = np.arange(len(pictures))
    write_parquet(pd.DataFrame({
        "image_id": ids,
        "alphabet": [ALPHABETS[i // (CHARACTERS * DRAWERS)] for i in ids],
        "character": [f"character{i // DRAWERS % CHARACTERS + 1:02d}" for i in ids],
    }), root / "data/manifests/images.parquet")
    write_json({"fingerprint": "f00d", "images": len(ids)}, root / "data/manifests/dataset.json")
    write_parquet(make_trials(), root / "data/manifests/trials.parquet")
    write_parquet(make_pairs(), root / "data/manifests/pairs.parquet")


def image_id(alphabet: int, character: int, drawer: int) -> int:
    return (alphabet * CHARACTERS + character) * DRAWERS + drawer


def make_trials() -> pd.DataFrame:
    rows = []
    for trial_set, n_way in (("valid", 5), ("valid", 3), ("lake", 5)):
        for a, alphabet in enumerate(ALPHABETS):
            for c in range(CHARACTERS):
                first = c - c % n_way  # the answer sits at index c % n_way
                chars = [(first + k) % CHARACTERS for k in range(n_way)]
                rows.append({
                    "trial_set": trial_set, "n_way": n_way, "alphabet": alphabet,
                    "query_id": image_id(a, c, 0),
                    "candidate_ids": [image_id(a, k, 1 + c % 2) for k in chars],
                    "answer": chars.index(c), "k_shot": 1, "turns": [0] * n_way,
                })
    trials = pd.DataFrame(rows)
    trials.insert(2, "trial_id", trials.groupby(["trial_set", "n_way"]).cumcount())
    return trials


def make_pairs() -> pd.DataFrame:
    left = [image_id(a, c, 0) for a in range(len(ALPHABETS)) for c in range(CHARACTERS)]
    same = [image_id(a, c, 1) for a in range(len(ALPHABETS)) for c in range(CHARACTERS)]
    other = [image_id(a, (c + 1) % CHARACTERS, 2)
             for a in range(len(ALPHABETS)) for c in range(CHARACTERS)]
    return pd.DataFrame({
        "left_id": left * 3, "right_id": same + other + same,
        "same": [True] * len(left) + [False] * len(left) + [True] * len(left),
        "role": ["valid"] * (2 * len(left)) + ["train"] * len(left),
    })


def save_model(path: Path, weight: float, bias: float) -> None:
    """A compact net whose head is fixed: logit = weight * sum|a - b| + bias."""
    torch.manual_seed(0)
    model = build_model("compact", 28, width=8, depth=2, embedding=16)
    with torch.no_grad():
        model.head.weight.fill_(weight)
        model.head.bias.fill_(bias)
    save_checkpoint(path, model, {"step": 7, "valid_accuracy": 0.5, "params_digest": "test"})


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def params() -> dict:
    return {"evaluate": {**load_params(REPO / "params.yaml")["evaluate"], "pictures": 2}}


def test_oracle_scores_every_trial_right(data_root):
    # same picture -> distance 0 -> logit 0.5; any other picture -> far below
    save_model(data_root / "models/model.pt", weight=-100.0, bias=0.5)
    metrics = evaluate.run(params())

    assert set(metrics) == {"valid", "lake", "verification"}
    assert metrics["valid"]["5-way"] == {"accuracy": 1.0, "ci95": [0.7225, 1.0], "trials": 10,
                                         "ci95_alphabets": [1.0, 1.0], "alphabets": 2}
    assert metrics["valid"]["3-way"]["accuracy"] == 1.0
    assert metrics["lake"]["5-way"]["accuracy"] == 1.0
    assert metrics["verification"] == {"accuracy": 1.0, "ci95": [0.8389, 1.0], "pairs": 20,
                                       "auc": 1.0}
    assert json.loads(Path("reports/metrics.json").read_text()) == metrics

    predictions = pd.read_parquet("reports/evaluate/predictions.parquet")
    assert len(predictions) == 30
    assert (predictions["predicted"] == predictions["answer"]).all()
    assert set(predictions["answer"]) == {0, 1, 2, 3, 4}  # the answer is not always in one place
    assert (predictions["credit"] == 1.0).all()
    assert predictions["scores"].map(len).tolist() == predictions["n_way"].tolist()

    per_alphabet = pd.read_csv("reports/evaluate/per_alphabet.csv")
    assert len(per_alphabet) == 6 and (per_alphabet["accuracy"] == 1.0).all()
    report = Path("reports/evaluate/report.md").read_text()
    assert "arch compact" in report and "step 7" in report and "f00d" in report
    pictures = sorted(p.name for p in Path("reports/evaluate/pictures").iterdir())
    assert len(pictures) == 4  # 2 per trial set, at its largest n-way
    assert all(p.startswith(("lake-5way", "valid-5way")) for p in pictures)
    assert all(f"pictures/{name}" in report for name in pictures)
    assert Path("reports/evaluate/per_alphabet.png").read_bytes()[:4] == b"\x89PNG"

    # the DVC plots of dvc.yaml: the ROC curve, and per_alphabet.csv split by trial set
    roc = pd.read_csv("reports/evaluate/roc.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"] and len(roc) == 201
    assert roc["tpr"].min() == 1.0  # the oracle: every same pair above every different one
    split = sorted(p.name for p in Path("reports/evaluate/per_alphabet").iterdir())
    assert split == ["lake-5way.csv", "valid-3way.csv", "valid-5way.csv"]
    assert sum(len(pd.read_csv(f"reports/evaluate/per_alphabet/{name}")) for name in split) == 6


def test_model_scoring_all_candidates_alike_gets_one_over_n(data_root):
    save_model(data_root / "models/model.pt", weight=0.0, bias=0.0)
    metrics = evaluate.run(params())

    assert metrics["valid"]["5-way"]["accuracy"] == 0.2
    assert metrics["valid"]["3-way"]["accuracy"] == 0.3333
    assert metrics["lake"]["5-way"]["accuracy"] == 0.2
    assert metrics["verification"]["auc"] == 0.5
    predictions = pd.read_parquet("reports/evaluate/predictions.parquet")
    assert np.allclose(predictions["credit"], 1 / predictions["n_way"])


def test_trials_naming_unknown_images_are_refused_and_nothing_is_lost(data_root):
    save_model(data_root / "models/model.pt", weight=-1.0, bias=0.0)
    write_json({"previous": True}, "reports/metrics.json")
    trials = make_trials()
    trials.loc[3, "query_id"] = 10_000
    write_parquet(trials, "data/manifests/trials.parquet")

    with pytest.raises(PipelineError, match=r"trials\.parquet.*unknown image ids \[10000\]"):
        evaluate.run(params())
    assert json.loads(Path("reports/metrics.json").read_text()) == {"previous": True}
    assert not Path("reports/evaluate").exists()


@pytest.mark.parametrize(("column", "value", "message"), [
    ("candidate_ids", [0, 1, 2, 3], r"has 4 candidates and answer \d; expected 5 candidates"),
    ("answer", 5, r"has 5 candidates and answer 5; expected 5 candidates and an answer in 0..4"),
], ids=["too-few-candidates", "answer-out-of-range"])
def test_trials_with_a_wrong_number_of_candidates_or_answer_are_refused(data_root, column, value,
                                                                        message):
    save_model(data_root / "models/model.pt", weight=-1.0, bias=0.0)
    trials = make_trials()
    trials.at[0, column] = value
    write_parquet(trials, "data/manifests/trials.parquet")
    with pytest.raises(PipelineError, match=r"trials\.parquet: trial valid 5-way #0 " + message):
        evaluate.run(params())
