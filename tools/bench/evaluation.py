"""The evaluate stage's trial scoring against the seed's tiling (seed.seed_trial_scores)."""

import time
from typing import Any, cast

import numpy as np
import pandas as pd
import torch

from siamese import paths
from tools.bench.seed import seed_trial_scores
from tools.bench.sizes import Sizes
from tools.bench.timing import ratio
from tools.bench.trainparts import train_config

EVAL_SETS = ("evaluation", "lake")  # each at its largest n_way (20 on the real data)


class EmbedCounter:
    """Counts the images that pass through the embedding net (one 'network pass' each)."""

    def __init__(self, net: torch.nn.Module):
        self.net = net
        self.images = 0

    def __enter__(self) -> "EmbedCounter":
        embed = cast(Any, self.net).embed

        def counted(x: torch.Tensor) -> torch.Tensor:
            self.images += len(x)
            return embed(x)

        cast(Any, self.net).embed = counted
        return self

    def __exit__(self, *exc: object) -> None:
        del self.net.embed


def project_trial_scores(model, pixels: np.ndarray, trials: pd.DataFrame,
                         batch_size: int) -> np.ndarray:
    """The evaluate stage's scoring: each image the trials name embedded once (embedding_table),
    then the head alone on the table (table_scores)."""
    from siamese.scoring import table_scores
    from tasks.evaluate import embedding_table, needed_keys

    no_pairs = pd.DataFrame({"left_id": [], "right_id": []}, dtype="int64")
    table_keys = needed_keys(trials, no_pairs)
    table = embedding_table(model, pixels, table_keys, "cpu", batch_size)
    return table_scores(table, table_keys, model, trials)


def compare_scoring(model, pixels: np.ndarray, trials: pd.DataFrame, seed_trials: int,
                    batch_size: int) -> dict[str, Any]:
    """The evaluate stage's scoring against the seed's tiling, same model, same trials."""
    net = getattr(model, "module", model)
    project_trial_scores(model, pixels, trials.iloc[:2], batch_size)  # warm up both paths
    seed_trial_scores(model, pixels, trials.iloc[:2])
    with EmbedCounter(net) as counter:
        start = time.perf_counter()
        ours = project_trial_scores(model, pixels, trials, batch_size)
        ours_s = time.perf_counter() - start
    ours_passes = counter.images
    subset = trials.iloc[:seed_trials]
    with EmbedCounter(net) as counter:
        start = time.perf_counter()
        seed = seed_trial_scores(model, pixels, subset)
        seed_s = time.perf_counter() - start
    ours_rate, seed_rate = len(trials) / ours_s, len(subset) / seed_s
    same = bool(np.array_equal(ours[: len(subset)].argmax(1), seed.argmax(1)))
    return {
        "trials": len(trials), "seed_trials": len(subset),
        "trials_per_s": round(ours_rate, 1), "seed_trials_per_s": round(seed_rate, 1),
        "passes_per_trial": round(ours_passes / len(trials), 2),
        "seed_passes_per_trial": round(counter.images / len(subset), 2),
        "speedup": ratio(ours_rate, seed_rate), "same_predictions": same,
        "max_abs_logit_diff": float(np.abs(ours[: len(subset)] - seed).max()),
    }


def eval_model(params: dict[str, Any]):
    """The trained model if there is one, else a fresh one of the train profile (same speed)."""
    from siamese.model import build_model, load_model

    if paths.MODEL.is_file():
        model, meta = load_model(paths.MODEL, "cpu")
        return model, f"{paths.MODEL} ({meta['arch']} at {meta['image_size']})"
    cfg = train_config(params)
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.image_size).eval()
    return model, f"untrained {model.arch} at {model.image_size} (no {paths.MODEL} yet)"


def bench_eval(params: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """The evaluate stage's trial scoring against the seed's, per trial set at its largest n."""
    from siamese.config import EvaluateConfig
    from siamese.images import load_pixels

    model, which = eval_model(params)
    pixels = load_pixels(paths.PIXELS)
    trials = pd.read_parquet(paths.TRIALS)
    batch_size = EvaluateConfig.parse(params).batch_size
    out: dict[str, Any] = {"model": which, "batch_size": batch_size}
    for trial_set in EVAL_SETS:
        chosen = trials[trials["trial_set"] == trial_set]
        if len(chosen):
            n_way = int(chosen["n_way"].max())
            group = chosen[chosen["n_way"] == n_way].sort_values("trial_id")
            out[f"{trial_set} {n_way}-way"] = compare_scoring(model, pixels, group,
                                                              sizes.seed_trials, batch_size)
    return out
