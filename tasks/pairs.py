"""pairs: same/different image pairs for training (train images) and verification (valid images).

Exactly half of each set is `same`. A negative's right image comes from the same alphabet as
its left one (pairs.negatives: same_alphabet) or from anywhere (any), never the same
character. No pair appears twice (in either order) and no image is paired with itself.
Sampling is vectorised: images are sorted so that each character and each alphabet is a
contiguous block, and partners are drawn as offsets inside blocks.
"""

from typing import Any

import numpy as np
import pandas as pd

from siamese import paths
from siamese.atomic import write_parquet
from siamese.config import PairsConfig
from siamese.errors import PipelineError

ROUNDS = 50


def blocks(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For `keys` grouped in contiguous runs: each row's run start and run length."""
    new = np.concatenate([[True], keys[1:] != keys[:-1]])
    starts = np.flatnonzero(new)
    lengths = np.diff(np.append(starts, len(keys)))
    run = np.cumsum(new) - 1
    return starts[run], lengths[run]


def draw_positives(char_start, char_len, n: int, rng: np.random.Generator) -> np.ndarray:
    """n (left, right) rows: two different images of one character."""
    eligible = np.flatnonzero(char_len >= 2)
    left = eligible[rng.integers(0, len(eligible), n)]
    shift = rng.integers(1, char_len[left])
    right = char_start[left] + (left - char_start[left] + shift) % char_len[left]
    return np.stack([left, right], axis=1)


def draw_negatives(char_start, char_len, group_start, group_len, n: int,
                   rng: np.random.Generator) -> np.ndarray:
    """n (left, right) rows: right from left's group (alphabet or all), another character."""
    eligible = np.flatnonzero(group_len > char_len)
    left = eligible[rng.integers(0, len(eligible), n)]
    k = rng.integers(0, group_len[left] - char_len[left])
    right = group_start[left] + k
    right = np.where(right >= char_start[left], right + char_len[left], right)
    return np.stack([left, right], axis=1)


def unique_pairs(draw, count: int, what: str) -> np.ndarray:
    """`count` distinct unordered pairs from repeated calls of draw(n), in draw order."""
    found = np.empty((0, 2), dtype=np.int64)
    for _ in range(ROUNDS):
        if len(found) >= count:
            break
        before = len(found)
        found = np.concatenate([found, draw(max(2 * (count - len(found)), 64))])
        _, first = np.unique(np.sort(found, axis=1), axis=0, return_index=True)
        found = found[np.sort(first)]
        if len(found) == before:  # saturated: every draw is a pair already found
            break
    if len(found) < count:
        raise PipelineError(f"params.yaml: {what}={2 * count}: not enough distinct pairs "
                            f"(found {len(found)} of {count} needed per half)")
    return found[:count]


def sample_pairs(images: pd.DataFrame, count: int, negatives: str, rng: np.random.Generator,
                 what: str) -> pd.DataFrame:
    """`count` pairs of `images` (image_id, alphabet, character_id), half same, shuffled."""
    if count == 0:
        return pd.DataFrame({"left_id": [], "right_id": [], "same": []}).astype(
            {"left_id": "int64", "right_id": "int64", "same": "bool"})
    ordered = images.sort_values(["alphabet", "character_id", "image_id"])
    ids = ordered["image_id"].to_numpy(dtype=np.int64)
    char_start, char_len = blocks(ordered["character_id"].to_numpy())
    if negatives == "same_alphabet":
        group_start, group_len = blocks(ordered["alphabet"].to_numpy())
    else:
        group_start, group_len = np.zeros(len(ids), np.int64), np.full(len(ids), len(ids))
    if not (char_len >= 2).any() or not (group_len > char_len).any():
        raise PipelineError(f"params.yaml: {what}: too few images or characters to pair")
    half = count // 2
    pos = unique_pairs(lambda n: draw_positives(char_start, char_len, n, rng), half, what)
    neg = unique_pairs(
        lambda n: draw_negatives(char_start, char_len, group_start, group_len, n, rng), half, what
    )
    rows = np.concatenate([pos, neg])
    same = np.repeat([True, False], half)
    order = rng.permutation(len(rows))
    return pd.DataFrame({"left_id": ids[rows[order, 0]], "right_id": ids[rows[order, 1]],
                         "same": same[order]})


def build_pairs(images: pd.DataFrame, split: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Training pairs from role-train images, then verification pairs from role-valid images."""
    p = PairsConfig.parse(params)
    rng = np.random.default_rng(p.seed)
    labelled = images.merge(split, on="image_id", validate="one_to_one")
    parts = []
    for role, key in (("train", "train_count"), ("valid", "valid_count")):
        subset = labelled[labelled["role"] == role]
        part = sample_pairs(subset, getattr(p, key), p.negatives, rng, f"pairs.{key}")
        parts.append(part.assign(role=role))
    return pd.concat(parts, ignore_index=True)


def run(params: dict[str, Any]) -> None:
    images = paths.read_manifest(paths.IMAGES, "index")
    split = paths.read_manifest(paths.SPLIT, "split")
    pairs = build_pairs(images, split, params)
    write_parquet(pairs, paths.PAIRS)
    counts = pairs.groupby("role")["same"].agg(["size", "sum"])
    print("pairs: " + ", ".join(f"{role} {int(r['size'])} ({int(r['sum'])} same)"
                                for role, r in counts.iterrows()))
