"""`siamese evaluate` end to end on a small made-up data folder (tests/evalkit.py): an oracle
scores 100%, a model that scores every candidate alike scores chance (1/n, not 100%), bad
trials are refused."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from siamese.atomic import write_json, write_parquet
from siamese.errors import PipelineError
from tasks import evaluate
from tests.evalkit import make_data, make_trials, params, save_model


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


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
    roc = pd.read_csv("reports/plots/roc.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"] and len(roc) == 201
    assert roc["tpr"].min() == 1.0  # the oracle: every same pair above every different one
    split = sorted(p.name for p in Path("reports/plots/per_alphabet").iterdir())
    assert split == ["lake-5way.csv", "valid-3way.csv", "valid-5way.csv"]
    assert sum(len(pd.read_csv(f"reports/plots/per_alphabet/{name}")) for name in split) == 6


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
