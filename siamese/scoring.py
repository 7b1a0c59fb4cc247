"""Scoring n-way k-shot trials with a twin network: embed each image once, then the head.

A trial names n classes by k support images each (candidate_ids, class-major) and the quarter
turns of each class (turns; the query is turned as its answer's class). The head compares the
query's embedding with each class's prototype, the mean of its k support embeddings: one rule
for every head, which for k = 1 is the plain one-shot comparison. An embedding is of an image
at some turns (its key, `keys`), computed once for every trial naming it: a 20-way one-shot
trial costs 21 embeddings (shared with the other trials), not 20 twin passes. One path scores
trials: the keys they name are embedded into a table (row i: the i-th key in sorted order),
then `table_scores` looks their embeddings up and runs the head; `trial_scores` builds the
table of one trial set, the evaluate stage one table for all its trial sets and pairs.
`credit` turns scores into per-trial credit, tie-aware.
"""

import numpy as np
import pandas as pd
import torch

from siamese.errors import PipelineError
from siamese.images import TURNS, rotate


def keys(ids: np.ndarray, turns: np.ndarray | int) -> np.ndarray:
    """The key of each (image_id, quarter turns): one embedding per key."""
    return np.asarray(ids, dtype=np.int64) * TURNS + np.asarray(turns, dtype=np.int64)


def embed_images(model, images: torch.Tensor, ids: np.ndarray, device: torch.device | str,
                 batch_size: int = 512, turns: np.ndarray | None = None) -> torch.Tensor:
    """Embeddings [len(ids), D] (float32, on the CPU) of `images[ids]`, each turned by its
    `turns` quarter turns (none by default), in eval mode, no grad.

    The model's train/eval mode is restored afterwards, so training can validate mid-run.
    """
    net = getattr(model, "module", model)
    ids = np.array(ids, dtype=np.int64)  # a writable copy, as torch.from_numpy wants
    turns = np.zeros_like(ids) if turns is None else np.array(turns, dtype=np.int64)
    check_ids(ids, len(images))
    was_training = net.training
    net.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(ids), batch_size):
                part = slice(start, start + batch_size)
                batch = images[torch.from_numpy(ids[part])].to(device)
                if turns[part].any():
                    batch = rotate(batch, turns[part])
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


def trial_keys(trials: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(query keys [T], support keys [T, n, k]) of trials of one n_way and k_shot.

    Without a k_shot column a trial is one-shot, without turns unturned (classify's trials).
    """
    k_shot = trials["k_shot"].unique() if "k_shot" in trials else np.array([1])
    supports = np.array([np.asarray(c, dtype=np.int64) for c in trials["candidate_ids"]])
    if len(k_shot) != 1 or supports.ndim != 2 or supports.shape[1] % k_shot[0]:
        raise PipelineError("trial_keys: trials of different n_way or k_shot; score one "
                            "(n_way, k_shot) at a time")
    supports = supports.reshape(len(trials), -1, int(k_shot[0]))
    if "turns" not in trials:
        return keys(trials["query_id"], 0), keys(supports, 0)
    turns = np.array([np.asarray(t, dtype=np.int64) for t in trials["turns"]])
    query_turns = turns[np.arange(len(trials)), trials["answer"].to_numpy(dtype=np.int64)]
    return keys(trials["query_id"], query_turns), keys(supports, turns[:, :, None])


def prototype_scores(model, queries: torch.Tensor, supports: torch.Tensor) -> np.ndarray:
    """Head logits [T, n] of query embeddings [T, D] against the prototypes of support
    embeddings [T, n, k, D] (the mean over k), on the head's device."""
    net = getattr(model, "module", model)
    head_device = next(net.head.parameters()).device
    with torch.no_grad():
        prototypes = supports.to(head_device).mean(dim=2)
        logits = net.score(queries[:, None, :].to(head_device), prototypes)
    return logits.float().cpu().numpy()


def trial_set_keys(trials: pd.DataFrame) -> np.ndarray:
    """Every key that trials of one n_way and k_shot name, once, sorted: rows of a table."""
    queries, supports = trial_keys(trials)
    return np.unique(np.concatenate([queries, supports.ravel()]))


def lookup(table: torch.Tensor, table_keys: np.ndarray, wanted: np.ndarray) -> torch.Tensor:
    """The rows [..., D] of the keys `wanted` (any shape) in an embedding table [K, D] whose
    row i is the embedding of table_keys[i] (sorted, distinct)."""
    return table[torch.from_numpy(np.searchsorted(table_keys, wanted))]


def table_scores(table: torch.Tensor, table_keys: np.ndarray, model,
                 trials: pd.DataFrame) -> np.ndarray:
    """Head logits [T, n] of trials of one n_way and k_shot, their embeddings from the table."""
    queries, supports = trial_keys(trials)
    return prototype_scores(model, lookup(table, table_keys, queries),
                            lookup(table, table_keys, supports))


def trial_scores(model, images: torch.Tensor, trials: pd.DataFrame, device: torch.device | str,
                 batch_size: int = 512) -> np.ndarray:
    """Head logits [T, n] of each trial's query against each of its n classes.

    `trials` holds trials of one n_way and k_shot (columns query_id, candidate_ids, and
    k_shot, turns and answer where they are not one-shot, unturned); `images` is indexed by
    image_id. The table of the keys they name is embedded in key order, `batch_size` at a time.
    """
    if len(trials) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    table_keys = trial_set_keys(trials)
    table = embed_images(model, images, table_keys // TURNS, device, batch_size,
                         table_keys % TURNS)
    return table_scores(table, table_keys, model, trials)


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
