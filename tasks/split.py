"""split: give every image a role, train, valid, holdout or test.

Each alphabet's drawers (split.by=drawer) or each character's drawings (split.by=image) are
shuffled with the seed and cut into three slices of train_drawers, valid_drawers and
holdout_drawers. What each slice becomes depends on the alphabet:

- protocol lake: background alphabets train | valid | holdout; every evaluation image is test
  (with your own images and dataset.test_by class, a group holds both: its test classes' images
  are test, its other classes train | valid | holdout).
  With split.holdout_alphabets N, a seeded N of the background alphabets are holdout in all
  their drawers: alphabets the network never sees, as the test's, to choose settings on.
- protocol koch (Koch et al. 2015): the 10 alphabets of Lake's 20 runs are test on the third
  slice; of the other 40, a seeded 30 train on the first slice and 10 validate on the second.
  Every other image is holdout, so the drawers of train, valid and test stay disjoint.
- protocol vinyals (Vinyals et al. 2016, the few-shot literature's split): 1,200 training
  characters and 423 test characters, classes from any alphabet (each character's quarter
  turns become classes of their own in training, train.rotations, and in the vinyals trials).
  The published split (Snell et al.'s splits/vinyals) lists characters, not alphabets; this is
  an alphabet-level split with the published counts: the background alphabets and the
  evaluation alphabets of split.vinyals_train_alphabets (their default: the first seven
  evaluation alphabets by name, as in the published list, plus Kannada, 195 + 41 = 236
  characters) train | valid | holdout, like protocol lake; every other image is test.
"""

from typing import Any

import numpy as np
import pandas as pd

from siamese import paths
from siamese.atomic import write_parquet
from siamese.config import SplitConfig
from siamese.errors import PipelineError

ROLES = ("train", "valid", "holdout", "test")
KOCH_TRAIN_ALPHABETS = 30


def check_drawers(images: pd.DataFrame, p: SplitConfig) -> None:
    """The three slices must add up to the drawers of every character in the data."""
    counts = sorted(images.groupby("character_id")["drawer"].nunique().unique())
    total = p.drawers
    if counts != [total]:
        raise PipelineError(
            f"params.yaml: split.train_drawers + valid_drawers + holdout_drawers = {total}, "
            f"but the characters in {paths.IMAGES} have {' or '.join(map(str, counts))} drawers"
        )


def alphabet_plans(images: pd.DataFrame, lake_alphabets: set[str], p: SplitConfig,
                   rng: np.random.Generator) -> dict[str, tuple[str, str, str]]:
    """alphabet -> the roles of its three slices."""
    subsets = images.drop_duplicates("alphabet").set_index("alphabet")["subset"].sort_index()
    if p.protocol in ("lake", "vinyals"):
        background = set(images.loc[images["subset"] == "background", "alphabet"])
        training = background | vinyals_training(subsets, p)
        held_out = holdout_alphabets(sorted(training), p)
        return {a: ("holdout",) * 3 if a in held_out else
                ("train", "valid", "holdout") if a in training else ("test",) * 3
                for a in subsets.index}
    if not lake_alphabets:
        raise PipelineError(f"split.protocol koch tests on the alphabets of Lake's runs, and "
                            f"{paths.LAKE_RUNS} has none (only Omniglot has them); use lake")
    others = [a for a in subsets.index if a not in lake_alphabets]
    if len(others) <= KOCH_TRAIN_ALPHABETS:
        raise PipelineError(
            f"split.protocol koch needs more than {KOCH_TRAIN_ALPHABETS} alphabets outside "
            f"Lake's runs, {paths.IMAGES} has {len(others)}"
        )
    shuffled = [others[i] for i in rng.permutation(len(others))]
    plans = {a: ("holdout", "holdout", "test") for a in lake_alphabets}
    plans.update({a: ("train", "holdout", "holdout") for a in shuffled[:KOCH_TRAIN_ALPHABETS]})
    plans.update({a: ("holdout", "valid", "holdout") for a in shuffled[KOCH_TRAIN_ALPHABETS:]})
    return plans


def holdout_alphabets(training: list[str], p: SplitConfig) -> set[str]:
    """split.holdout_alphabets of the training alphabets, drawn with their own seed so that the
    drawers of the others stay as they are."""
    if p.holdout_alphabets >= len(training):
        raise PipelineError(f"params.yaml: split.holdout_alphabets {p.holdout_alphabets} leaves "
                            f"none of the {len(training)} training alphabets to train on")
    rng = np.random.default_rng([p.seed, 1])
    return {training[i] for i in rng.choice(len(training), p.holdout_alphabets, replace=False)}


def vinyals_training(subsets: pd.Series, p: SplitConfig) -> set[str]:
    """The evaluation alphabets that train under protocol vinyals (none under the others)."""
    if p.protocol != "vinyals":
        return set()
    chosen = set(p.vinyals_train_alphabets)
    unknown = sorted(chosen - set(subsets.index[subsets == "evaluation"]))
    if unknown:
        raise PipelineError(f"params.yaml: split.vinyals_train_alphabets names {', '.join(unknown)}"
                            f", not evaluation alphabets of {paths.IMAGES}")
    if chosen == set(subsets.index[subsets == "evaluation"]):
        raise PipelineError("params.yaml: split.vinyals_train_alphabets leaves no evaluation "
                            "alphabet to test on")
    return chosen


def slice_of(order: np.ndarray, p: SplitConfig) -> np.ndarray:
    """Slice number (0, 1, 2) of each position in a shuffled order of the drawers/drawings."""
    bounds = np.cumsum([p.train_drawers, p.valid_drawers, p.holdout_drawers])
    return np.searchsorted(bounds, order, side="right")


def split_images(images: pd.DataFrame, lake: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """image_id -> role, per split.protocol and split.by (see the module docstring)."""
    p = SplitConfig.parse(params)
    check_drawers(images, p)
    rng = np.random.default_rng(p.seed)
    lake_alphabets = set(images.loc[images["image_id"].isin(lake["image_id"]), "alphabet"])
    plans = alphabet_plans(images, lake_alphabets, p, rng)
    images = images.sort_values("image_id")
    slices = np.empty(len(images), dtype=np.int64)
    position = {image_id: i for i, image_id in enumerate(images["image_id"])}
    groups = "alphabet" if p.by == "drawer" else "character_id"
    for _, group in images.groupby(groups, sort=True):
        if p.by == "drawer":
            drawers = np.sort(group["drawer"].unique())
            shuffled = drawers[rng.permutation(len(drawers))]
            order = group["drawer"].map(dict(zip(shuffled, range(len(drawers)), strict=True)))
            order = order.to_numpy()
        else:
            order = np.empty(len(group), dtype=np.int64)
            order[rng.permutation(len(group))] = np.arange(len(group))
        slices[[position[i] for i in group["image_id"]]] = slice_of(order, p)
    roles = [plans[a][s] for a, s in zip(images["alphabet"], slices, strict=True)]
    if p.protocol == "lake":  # an evaluation image is test, also in a group that trains
        roles = ["test" if subset == "evaluation" else role
                 for subset, role in zip(images["subset"], roles, strict=True)]
    return pd.DataFrame({"image_id": images["image_id"].to_numpy(dtype=np.int64), "role": roles})


def run(params: dict[str, Any]) -> None:
    images = paths.read_manifest(paths.IMAGES, "index")
    lake = paths.read_manifest(paths.LAKE_RUNS, "index")
    split = split_images(images, lake, params)
    write_parquet(split, paths.SPLIT)
    counts = split["role"].value_counts()
    print("split: " + ", ".join(f"{role} {counts.get(role, 0)}" for role in ROLES))
