"""`siamese classify`: which support image each query image matches best.

Images of any size and format go through the training preprocessing (read_image_file, then
to_tensor at the checkpoint's image_size), and are scored as one n-way trial per query with
the code that scores the evaluation trials (siamese.scoring.trial_scores).
"""

import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
import torch

from siamese import cpu
from siamese.errors import PipelineError
from siamese.images import read_image_file, to_tensor
from siamese.model import load_model, resolve_device
from siamese.scoring import trial_scores


def read_images(files: Sequence[Path], size: int) -> torch.Tensor:
    """Each file read as a user image (PipelineError naming an unreadable one) -> [N,1,S,S]."""
    return to_tensor(np.stack([read_image_file(f) for f in files]), size)


def classify(model, support: torch.Tensor, query: torch.Tensor,
             device: torch.device) -> np.ndarray:
    """Logits [Q, S] of each query against each support image."""
    images = torch.cat([support, query])
    trials = pd.DataFrame({
        "query_id": np.arange(len(support), len(images), dtype=np.int64),
        "candidate_ids": [np.arange(len(support), dtype=np.int64)] * len(query),
    })
    return trial_scores(model, images, trials, device)


def rank_table(support: Sequence[Path], query: Sequence[Path], logits: np.ndarray) -> pd.DataFrame:
    """query, prediction, score (P(same)), and the runner-up when there is one.

    Ranked by logit (first of tied maxima, as evaluate does): sigmoid can round distinct
    large logits to the same probability.
    """
    order = np.argsort(-logits, axis=1, kind="stable")
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    rows = np.arange(len(query))
    table = pd.DataFrame({
        "query": [str(q) for q in query],
        "prediction": [str(support[i]) for i in order[:, 0]],
        "score": probs[rows, order[:, 0]].round(4),
    })
    if len(support) > 1:
        table["runner_up"] = [str(support[i]) for i in order[:, 1]]
        table["runner_up_score"] = probs[rows, order[:, 1]].round(4)
    return table


def run(model_path: Path | str, support: Sequence[Path | str], query: Sequence[Path | str],
        device: str = "auto", out: TextIO = sys.stdout) -> pd.DataFrame:
    """Classify `query` against `support` with the checkpoint; write a CSV table to `out`."""
    supports = [Path(p) for p in support]
    queries = [Path(p) for p in query]
    if not supports:
        raise PipelineError("classify: the support set is empty; give one image per class")
    if not queries:
        raise PipelineError("classify: no query images given")
    for path in [*supports, *queries]:
        if path.exists() and not path.is_file():
            raise PipelineError(f"{path}: not a regular file (a folder, FIFO or device), so not "
                                "an image")
    if Path(model_path).suffix == ".onnx":  # `siamese export`'s graph, run by onnxruntime
        from tools.export import OnnxScorer

        scorer = OnnxScorer(model_path)
        size = scorer.image_size
        logits = scorer.logits(read_images(supports, size), read_images(queries, size))
    else:
        chosen = resolve_device(device, "siamese classify --device")
        model, meta = load_model(model_path, chosen)
        size = int(meta["image_size"])
        with cpu.kernels(cpu.trained_with(meta)):
            logits = classify(model, read_images(supports, size), read_images(queries, size),
                              chosen)
    table = rank_table(supports, queries, logits)
    table.to_csv(out, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    return table
