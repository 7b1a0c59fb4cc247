"""Statistics of the evaluation: Wilson intervals of accuracies, the accuracy entries of
reports/metrics.json, and the ROC curve and its area for the verification pairs."""

import math
from typing import Any

import numpy as np
import pandas as pd

Z95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_RESAMPLES = 4000


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (successes may be fractional: tie credit)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_entry(credits: np.ndarray, count_key: str = "trials") -> dict[str, Any]:
    """{"accuracy", "ci95": [lo, hi], count_key}, fractions rounded to 4 digits."""
    n = len(credits)
    lo, hi = wilson_interval(float(np.sum(credits)), n)
    accuracy = float(np.mean(credits)) if n else 0.0
    return {"accuracy": round(accuracy, 4), "ci95": [round(lo, 4), round(hi, 4)], count_key: n}


def alphabet_interval(credits: np.ndarray, alphabets: np.ndarray, seed: int,
                      resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """95% interval of the accuracy that respects how the trials are clustered: a percentile
    bootstrap that resamples whole alphabets with replacement (all the trials of an alphabet
    share its characters, and Lake's runs, two per alphabet, share their candidates), so it
    is wider than the Wilson interval, which treats every trial as independent.
    {"ci95_alphabets": [lo, hi], "alphabets": k}, rounded to 4 digits."""
    names, index = np.unique(np.asarray(alphabets), return_inverse=True)
    sums = np.bincount(index, weights=np.asarray(credits, dtype=np.float64))
    counts = np.bincount(index)
    picks = np.random.default_rng(seed).integers(0, len(names), size=(resamples, len(names)))
    accuracies = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    lo, hi = np.quantile(accuracies, [0.025, 0.975])
    return {"ci95_alphabets": [round(float(lo), 4), round(float(hi), 4)], "alphabets": len(names)}


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); None without both classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> pd.DataFrame:
    """ROC points (threshold, fpr, tpr): "positive" when score >= threshold, one point per
    distinct score from the highest down, after the (inf, 0, 0) start. Empty without both
    classes."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return pd.DataFrame({"threshold": [], "fpr": [], "tpr": []})
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranked = np.asarray(scores, dtype=np.float64)[order]
    tp = np.cumsum(positive[order])
    fp = np.arange(1, len(ranked) + 1) - tp
    last = np.append(ranked[1:] != ranked[:-1], True)  # the last of each run of equal scores
    return pd.DataFrame({
        "threshold": np.append(np.inf, ranked[last]),
        "fpr": np.append(0.0, fp[last] / n_neg),
        "tpr": np.append(0.0, tp[last] / n_pos),
    })


def roc_points(scores: np.ndarray, positive: np.ndarray, steps: int = 200) -> pd.DataFrame:
    """The ROC curve sampled at fpr = 0, 1/steps, ..., 1: at each, the highest tpr (and its
    threshold) whose false-positive rate is at most fpr. The same fpr values whatever the
    model, so that two evaluations plot and compare point by point. Empty without both classes.
    """
    curve = roc_curve(scores, positive)
    if curve.empty:
        return pd.DataFrame({"fpr": [], "tpr": [], "threshold": []})
    grid = np.arange(steps + 1) / steps
    at = np.searchsorted(curve["fpr"].to_numpy(), grid, side="right") - 1
    return pd.DataFrame({"fpr": grid.round(4), "tpr": curve["tpr"].to_numpy()[at].round(4),
                         "threshold": curve["threshold"].to_numpy()[at].round(4)})
