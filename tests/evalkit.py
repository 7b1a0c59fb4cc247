"""A small made-up data folder for `siamese evaluate` (all drawers of a character are the same
picture; packed pixels, manifests, trials and pairs), compact models with a fixed head, and the
evaluate section of params.yaml."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from siamese.atomic import write_json, write_npy, write_parquet
from siamese.config import load_params
from siamese.images import pack
from siamese.model import build_model, save_checkpoint
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


def params() -> dict:
    """The evaluate section of params.yaml, with 2 pictures per trial set."""
    return {"evaluate": {**load_params(REPO / "params.yaml")["evaluate"], "pictures": 2}}
