"""The 95% intervals in metrics.json: Wilson score intervals, checked against published values."""

import numpy as np
import pytest

from siamese.stats import accuracy_entry, alphabet_interval, roc_auc, wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score)
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
        # closed forms at the extremes: [0, z^2 / (n + z^2)] and [n / (n + z^2), 1]
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (50, 100, (0.4038, 0.5962)),
    ],
)
def test_wilson_interval_matches_published_values(successes, n, expected):
    lo, hi = wilson_interval(successes, n)
    assert (round(lo, 4), round(hi, 4)) == expected


def test_accuracy_entry_rounds_fractions_and_counts_trials():
    entry = accuracy_entry(np.array([1.0] * 613 + [0.0] * 187))
    assert entry == {"accuracy": 0.7662, "ci95": [0.7357, 0.7943], "trials": 800}


def test_tie_credit_counts_as_fractional_successes():
    # 100 trials at credit 1/5 each: 20 successes' worth, the interval of 20/100
    entry = accuracy_entry(np.full(100, 0.2))
    assert entry["accuracy"] == 0.2
    assert entry["ci95"] == [round(v, 4) for v in wilson_interval(20, 100)]


def test_roc_auc_ranks_with_ties_averaged():
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert roc_auc(np.array([1.0, 1.0]), np.array([0, 1])) == 0.5
    assert roc_auc(np.array([1.0, 2.0]), np.array([1, 1])) is None


def test_roc_curve_and_its_sampled_points():
    from siamese.stats import roc_curve, roc_points

    scores = np.array([0.9, 0.8, 0.8, 0.6, 0.5, 0.3, 0.1])
    same = np.array([1, 1, 0, 1, 0, 0, 0], dtype=bool)
    curve = roc_curve(scores, same)
    assert curve["fpr"].tolist() == [0, 0, 0.25, 0.25, 0.5, 0.75, 1]
    assert np.allclose(curve["tpr"], [0, 1 / 3, 2 / 3, 1, 1, 1, 1])
    assert curve["threshold"].tolist()[1:] == [0.9, 0.8, 0.6, 0.5, 0.3, 0.1]
    # the trapezoids under the curve are the Mann-Whitney AUC (ties averaged)
    area = np.sum(np.diff(curve["fpr"]) * (curve["tpr"][1:].to_numpy()
                                            + curve["tpr"][:-1].to_numpy()) / 2)
    assert area == pytest.approx(roc_auc(scores, same))

    points = roc_points(scores, same, steps=4)
    assert points["fpr"].tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert points["tpr"].tolist() == [0.3333, 1, 1, 1, 1]
    assert roc_points(scores, np.ones(7, dtype=bool)).empty


def test_the_alphabet_bootstrap_is_wider_than_wilson_when_alphabets_differ():
    # 20 alphabets of 40 trials, half of them all right and half all wrong: the 800 trials
    # carry the information of 20, and the interval must say so.
    alphabets = np.repeat([f"a{i}" for i in range(20)], 40)
    credits = np.repeat(np.arange(20) % 2, 40).astype(float)
    entry = alphabet_interval(credits, alphabets, seed=5)
    lo, hi = entry["ci95_alphabets"]
    w_lo, w_hi = accuracy_entry(credits)["ci95"]
    assert entry["alphabets"] == 20
    assert lo < 0.5 < hi
    assert hi - lo > 3 * (w_hi - w_lo)
    assert lo > 0.25 and hi < 0.75  # about 0.5 +- 1.96 * sqrt(0.25 / 20) = [0.28, 0.72]


def test_the_alphabet_bootstrap_collapses_when_every_alphabet_scores_the_same():
    alphabets = np.repeat(["a", "b", "c"], [10, 20, 30])
    credits = np.tile([1.0, 0.0], 30)  # each alphabet exactly half right
    assert alphabet_interval(credits, alphabets, seed=1)["ci95_alphabets"] == [0.5, 0.5]


def test_the_alphabet_bootstrap_is_reproducible_from_its_seed():
    rng = np.random.default_rng(0)
    alphabets = rng.integers(0, 12, 500).astype(str)
    credits = (rng.random(500) < 0.8).astype(float)
    first = alphabet_interval(credits, alphabets, seed=7)
    assert first == alphabet_interval(credits, alphabets, seed=7)
    assert first != alphabet_interval(credits, alphabets, seed=8)
