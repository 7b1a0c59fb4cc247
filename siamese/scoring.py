"""Scoring n-way one-shot trials with a twin network: embed each image once, then the head.

A 20-way trial costs 21 embeddings (shared with every other trial naming the same images),
not 20 twin passes. `credit` turns scores into per-trial credit, tie-aware.
"""

import numpy as np
import pandas as pd
import torch

from siamese.errors import PipelineError


def embed_images(model, images: torch.Tensor, ids: np.ndarray, device: torch.device | str,
                 batch_size: int = 512) -> torch.Tensor:
    """Embeddings [len(ids), D] (float32, on the CPU) of `images[ids]`, in eval mode, no grad.

    The model's train/eval mode is restored afterwards, so training can validate mid-run.
    """
    net = getattr(model, "module", model)
    ids = np.array(ids, dtype=np.int64)  # a writable copy, as torch.from_numpy wants
    check_ids(ids, len(images))
    was_training = net.training
    net.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                batch = images[torch.from_numpy(ids[start : start + batch_size])].to(device)
                out.append(net.embed(batch).float().cpu())
    finally:
        net.train(was_training)
    if not out:
        return torch.zeros(0, net.dim)
    return torch.cat(out)


def check_ids(ids: np.ndarray, n_images: int) -> None:
    if len(ids) and (ids.min() < 0 or ids.max() >= n_images):
        bad = ids[(ids < 0) | (ids >= n_images)][:5].tolist()
        raise PipelineError(
            f"trials name image ids outside the {n_images} images (e.g. {bad}); "
            "are trials.parquet and the packed pixels from the same index run?"
        )


def trial_scores(model, images: torch.Tensor, trials: pd.DataFrame, device: torch.device | str,
                 batch_size: int = 512) -> np.ndarray:
    """Head logits [T, n] of each trial's query against each of its n candidates.

    `trials` holds trials of one n_way (columns query_id, candidate_ids); `images` is indexed
    by image_id.
    """
    if len(trials) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    candidates = np.array([np.asarray(c, dtype=np.int64) for c in trials["candidate_ids"]])
    if candidates.ndim != 2:
        raise PipelineError("trial_scores: trials of different n_way; score one n_way at a time")
    queries = trials["query_id"].to_numpy(dtype=np.int64)
    everything = np.concatenate([queries, candidates.ravel()])
    distinct, inverse = np.unique(everything, return_inverse=True)
    emb = embed_images(model, images, distinct, device, batch_size)
    q = emb[torch.from_numpy(inverse[: len(queries)])]
    c = emb[torch.from_numpy(inverse[len(queries) :])].view(*candidates.shape, -1)
    net = getattr(model, "module", model)
    head_device = next(net.head.parameters()).device
    with torch.no_grad():
        logits = net.score(q[:, None, :].to(head_device), c.to(head_device))
    return logits.float().cpu().numpy()


def credit(scores: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """Per-trial credit: 1/k when the answer is among k tied top scores, else 0.

    A model that scores every candidate alike gets exactly 1/n; an oracle gets 1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    answers = np.asarray(answers, dtype=np.int64)
    if scores.ndim != 2 or len(answers) != len(scores):
        raise PipelineError(f"credit: scores {scores.shape} and answers {answers.shape} disagree")
    if not np.isfinite(scores).all():
        raise PipelineError("credit: scores contain NaN or infinity (a diverged model?)")
    if len(answers) and (answers.min() < 0 or answers.max() >= scores.shape[1]):
        raise PipelineError(f"credit: answers must index the {scores.shape[1]} candidates")
    top = scores == scores.max(axis=1, keepdims=True)
    return top[np.arange(len(answers)), answers] / top.sum(axis=1)
