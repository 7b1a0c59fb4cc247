"""trials: n-way one-shot trials (Koch's within-alphabet protocol) and Lake's 20 official runs.

trial_set valid samples from the role-valid images (training stops early on them), holdout
from the role-holdout images of alphabets with no test image (hyperparameters are chosen on
them), evaluation from the role-test images (reported once, never chosen on), lake is the 20
runs of all_runs.zip (400 trials, 20-way). `sample_trials` is the one sampler
of trials; other code (training episodes, benchmarks) can reuse it.
"""

from typing import Any

import numpy as np
import pandas as pd

from siamese import paths
from siamese.atomic import write_parquet
from siamese.config import TrialsConfig
from siamese.errors import PipelineError

# holdout last: the valid and evaluation trials stay those of earlier versions (one rng)
SETS = (("valid", "valid"), ("evaluation", "test"), ("holdout", "holdout"))
COLUMNS = ["trial_set", "n_way", "trial_id", "alphabet", "query_id", "candidate_ids", "answer"]


def too_small(images: pd.DataFrame, n_way: int) -> list[str]:
    """Alphabets of `images` with fewer than n_way characters or fewer than two drawers."""
    per = images.groupby("alphabet").agg(characters=("character_id", "nunique"),
                                         drawers=("drawer", "nunique"))
    return sorted(per.index[(per["characters"] < n_way) | (per["drawers"] < 2)])


def alphabet_trials(group: pd.DataFrame, n_way: int, count: int,
                    rng: np.random.Generator) -> list[tuple[int, list[int], int]]:
    """`count` (query_id, candidate_ids, answer) trials inside one alphabet.

    The query is one image of the answer's character (its drawer d1); each candidate is its
    character's image by one other drawer d2, or, where a character has no image by d2 here
    (split.by=image), another of its images not by d1.
    """
    group = group.sort_values(["character_id", "drawer", "image_id"])
    char_ids = group["character_id"].to_numpy()
    chars, starts = np.unique(char_ids, return_index=True)
    ends = np.append(starts[1:], len(group))
    ids, drawer = group["image_id"].to_numpy(), group["drawer"].to_numpy()
    drawers = np.unique(drawer)
    trials = []
    for _ in range(count):
        chosen = rng.choice(len(chars), size=n_way, replace=False)
        answer = int(rng.integers(n_way))
        first, last = starts[chosen[answer]], ends[chosen[answer]]
        query = first + int(rng.integers(last - first))
        others = drawers[drawers != drawer[query]]
        d2 = others[rng.integers(len(others))]
        candidates = []
        for c in chosen:
            rows = np.arange(starts[c], ends[c])
            pick = rows[drawer[rows] == d2]
            if not len(pick):
                pick = rows[drawer[rows] != drawer[query]]
                pick = pick[[rng.integers(len(pick))]]
            candidates.append(int(ids[pick[0]]))
        trials.append((int(ids[query]), candidates, answer))
    return trials


def sample_trials(images: pd.DataFrame, n_way: int, per_alphabet: int,
                  rng: np.random.Generator) -> pd.DataFrame:
    """`per_alphabet` n-way trials in each alphabet of `images` that has n_way characters.

    `images` needs image_id, alphabet, character_id and drawer. Returns alphabet, query_id,
    candidate_ids, answer; alphabets from `too_small` are left out.
    """
    skip = set(too_small(images, n_way))
    rows = []
    for alphabet, group in images.groupby("alphabet", sort=True):
        if alphabet in skip:
            continue
        for query, candidates, answer in alphabet_trials(group, n_way, per_alphabet, rng):
            rows.append((alphabet, query, candidates, answer))
    return pd.DataFrame(rows, columns=["alphabet", "query_id", "candidate_ids", "answer"])


def lake_trials(images: pd.DataFrame, lake: pd.DataFrame) -> pd.DataFrame:
    """One 20-way trial per test item of each official run, candidates in class order."""
    alphabet = images.set_index("image_id")["alphabet"]
    rows = []
    for _, run in lake.groupby("run", sort=True):
        classes = run[run["kind"] == "training"].sort_values("position")
        candidates = classes["image_id"].astype(int).tolist()
        positions = classes["position"].tolist()
        for item in run[run["kind"] == "test"].sort_values("position").itertuples():
            answer = positions.index(item.label)
            rows.append((alphabet[candidates[answer]], int(item.image_id), candidates, answer))
    trials = pd.DataFrame(rows, columns=["alphabet", "query_id", "candidate_ids", "answer"])
    return number(trials, "lake", len(positions))


def number(trials: pd.DataFrame, trial_set: str, n_way: int) -> pd.DataFrame:
    return trials.assign(trial_set=trial_set, n_way=n_way, trial_id=np.arange(len(trials)))


def build_trials(images: pd.DataFrame, split: pd.DataFrame, lake: pd.DataFrame,
                 params: dict[str, Any]) -> pd.DataFrame:
    p = TrialsConfig.parse(params)
    rng = np.random.default_rng(p.seed)
    labelled = images.merge(split, on="image_id", validate="one_to_one")
    test_alphabets = set(labelled.loc[labelled["role"] == "test", "alphabet"])
    parts = []
    for trial_set, role in SETS:
        pool = labelled[labelled["role"] == role]
        if role == "holdout":  # choosing on a test alphabet's other drawers would leak
            pool = pool[~pool["alphabet"].isin(test_alphabets)]
        for n_way in p.n_way:
            skipped = too_small(pool, n_way)
            if len(skipped) == pool["alphabet"].nunique():
                raise PipelineError(
                    f"params.yaml: trials.n_way {n_way} is larger than every alphabet of the "
                    f"{trial_set} trials (role {role} in {paths.SPLIT})"
                )
            if skipped:
                print(f"trials: {trial_set} {n_way}-way leaves out {', '.join(skipped)}")
            sampled = sample_trials(pool, n_way, p.per_alphabet, rng)
            parts.append(number(sampled, trial_set, n_way))
    parts.append(lake_trials(images, lake))
    trials = pd.concat(parts, ignore_index=True)[COLUMNS]
    return trials.astype({"n_way": "int64", "trial_id": "int64", "query_id": "int64",
                          "answer": "int64"})


def run(params: dict[str, Any]) -> None:
    images = paths.read_manifest(paths.IMAGES, "index")
    split = paths.read_manifest(paths.SPLIT, "split")
    lake = paths.read_manifest(paths.LAKE_RUNS, "index")
    trials = build_trials(images, split, lake, params)
    write_parquet(trials, paths.TRIALS)
    counts = trials.groupby(["trial_set", "n_way"], sort=False).size()
    print("trials: " + ", ".join(f"{s} {n}-way {c}" for (s, n), c in counts.items()))
