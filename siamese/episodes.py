"""The training data and the batches drawn from it, one step at a time.

`load_data` reads the artifacts train needs (all images as one tensor on the training device,
the train characters per alphabet, the train pairs, the valid trials); `next_batch` draws one
step's images for train.objective: an episode (`sample_episode`, optionally rotated by
quarter turns) or a batch of pairs, distorted by siamese/augment.py. Every draw comes from
the generators it is given, in a fixed order, so a run is reproducible and resumable.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from siamese import paths
from siamese.augment import distort
from siamese.config import TrainConfig
from siamese.errors import PipelineError
from siamese.images import load_pixels, rotate, to_device, to_tensor


@dataclass
class Data:
    images: torch.Tensor               # [N, 1, S, S] on the training device, by image_id
    alphabets: list[list[np.ndarray]]  # per train alphabet, per character: its train image ids
    pairs: np.ndarray                  # [P, 3] left_id, right_id, same (objective pairs)
    valid: pd.DataFrame                # valid trials of the largest n_way (20)


def load_data(cfg: TrainConfig, device: torch.device) -> Data:
    pixels = load_pixels(paths.PIXELS)
    images = to_tensor(pixels, cfg.image_size).to(device)
    del pixels
    table = paths.read_manifest(paths.IMAGES, "index",
                                ["image_id", "alphabet", "character_id", "drawer"])
    split = paths.read_manifest(paths.SPLIT, "split", ["image_id", "role"])
    train = table.merge(split[split["role"] == "train"], on="image_id")
    groups = character_groups(train)
    if not groups:
        raise PipelineError(f"{paths.SPLIT}: no character has two train images")
    pairs = paths.read_manifest(paths.PAIRS, "pairs", ["left_id", "right_id", "same", "role"])
    pairs = pairs[pairs["role"] == "train"][["left_id", "right_id", "same"]]
    if cfg.objective == "pairs" and pairs.empty:
        raise PipelineError(f"{paths.PAIRS}: no train pairs")
    trials = paths.read_manifest(paths.TRIALS, "trials",
                                 ["trial_set", "n_way", "query_id", "candidate_ids", "answer"])
    valid = trials[trials["trial_set"] == "valid"]
    if valid.empty:
        raise PipelineError(f"{paths.TRIALS}: no valid trials to select the model on")
    valid = valid[valid["n_way"] == valid["n_way"].max()]  # 20-way with the default params
    return Data(images, groups, pairs.to_numpy(dtype=np.int64), valid.reset_index(drop=True))


def character_groups(train: pd.DataFrame) -> list[list[np.ndarray]]:
    """Train image ids per alphabet per character (sorted, so the order is reproducible)."""
    groups = []
    for _, alphabet in train.sort_values("image_id").groupby("alphabet", sort=True):
        chars = [g["image_id"].to_numpy() for _, g in alphabet.groupby("character_id", sort=True)]
        chars = [c for c in chars if len(c) >= 2]
        if len(chars) >= 2:
            groups.append(chars)
    return groups


def sample_episode(rng: np.random.Generator, groups: list[list[np.ndarray]], alphabets: int,
                   characters: int, rotations: int = 1) -> tuple[np.ndarray, ...]:
    """(support ids, query ids, block of each, quarter turns of each) for one episode.

    A block is an alphabet seen at one of `rotations` quarter turns (each rotation of a
    character is a class of its own); each character of a block gives two drawers.
    """
    support, query, block, turns = [], [], [], []
    pool = len(groups) * rotations
    for k, g in enumerate(rng.choice(pool, size=min(alphabets, pool), replace=False)):
        chars = groups[g // rotations]
        for c in rng.choice(len(chars), size=min(characters, len(chars)), replace=False):
            s, q = rng.choice(chars[c], size=2, replace=False)
            support.append(s)
            query.append(q)
            block.append(k)
            turns.append(g % rotations)
    return np.array(support), np.array(query), np.array(block), np.array(turns)


def next_batch(cfg: TrainConfig, data: Data, rng: np.random.Generator, gen: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(augmented images [2B, 1, S, S], side info) for one step of the objective."""
    if cfg.objective == "episodes":
        support, query, block, turns = sample_episode(
            rng, data.alphabets, cfg.episode_alphabets, cfg.episode_characters, cfg.rotations)
        ids, side = np.concatenate([support, query]), block
        x = data.images[to_device(ids, device)]
        if cfg.rotations > 1:
            x = rotate(x, np.concatenate([turns, turns]))
    else:
        count = min(cfg.batch_pairs, len(data.pairs))
        rows = data.pairs[rng.choice(len(data.pairs), size=count, replace=False)]
        ids, side = np.concatenate([rows[:, 0], rows[:, 1]]), rows[:, 2]
        x = data.images[to_device(ids, device)]
    return distort(x, gen, cfg.augment_probability), to_device(side, device)
