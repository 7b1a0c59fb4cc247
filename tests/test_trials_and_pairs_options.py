"""Options of the pairs and trials stages on the synthetic data: small alphabets are left out
(and said so), `negatives: any` crosses alphabets, sample_trials is reusable and seeded."""

import numpy as np
import pandas as pd

from siamese import paths
from siamese.config import load_params
from tasks.pairs import build_pairs
from tasks.trials import sample_trials
from tests.stagekit import run_stage


def test_small_alphabets_are_left_out_and_named(synthetic_project, synthetic_source):
    result = run_stage(synthetic_project, "trials", synthetic_source)
    assert result.returncode == 0, result.stderr
    assert "trials: valid 5-way leaves out Gamma" in result.stdout
    trials = pd.read_parquet(synthetic_project / paths.TRIALS)
    five = trials[(trials["trial_set"] == "valid") & (trials["n_way"] == 5)]
    assert set(five["alphabet"]) == {"Alpha", "Beta"}
    three = trials[(trials["trial_set"] == "valid") & (trials["n_way"] == 3)]
    assert set(three["alphabet"]) == {"Alpha", "Beta", "Gamma"}
    assert three.groupby("alphabet").size().eq(4).all()  # trials.per_alphabet


def test_negatives_any_cross_alphabets(synthetic_data_root):
    params = load_params(synthetic_data_root / paths.PARAMS)
    images = pd.read_parquet(synthetic_data_root / paths.IMAGES)
    split = pd.read_parquet(synthetic_data_root / paths.SPLIT)
    alphabet = images.set_index("image_id")["alphabet"]
    for negatives, crosses in (("same_alphabet", False), ("any", True)):
        params["pairs"]["negatives"] = negatives
        pairs = build_pairs(images, split, params)
        negative = pairs[~pairs["same"]]
        across = alphabet[negative["left_id"]].to_numpy() != alphabet[negative["right_id"]]
        assert across.any() == crosses


def test_sample_trials_is_seeded_and_uniform(synthetic_data_root):
    images = pd.read_parquet(synthetic_data_root / paths.IMAGES)
    pool = images[images["subset"] == "evaluation"]
    first = sample_trials(pool, 10, 300, np.random.default_rng(7))
    again = sample_trials(pool, 10, 300, np.random.default_rng(7))
    other = sample_trials(pool, 10, 300, np.random.default_rng(8))
    pd.testing.assert_frame_equal(first, again)
    assert not first["query_id"].equals(other["query_id"])
    assert len(first) == 600 and set(first["alphabet"]) == {"Delta", "Epsilon"}
    assert np.bincount(first["answer"], minlength=10).min() >= 30  # 60 expected per position
