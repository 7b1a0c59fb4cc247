"""trials: n-way one-shot trials (Koch's within-alphabet protocol) and Lake's 20 official runs.

trial_set valid samples from the role-valid images (training stops early on them), holdout
from the role-holdout images of alphabets with no test image, and with split.holdout_alphabets
of alphabets with no train image either (hyperparameters are chosen on them), evaluation from
the role-test images (reported once, never chosen on), lake is the 20 runs of all_runs.zip
(400 trials, 20-way). `sample_trials` is the one sampler of trials; other code (training
episodes, benchmarks) can reuse it.

Under split.protocol vinyals, trial set vinyals adds the few-shot literature's n-way k-shot
trials (`vinyals_trials`): across the role-test alphabets, a class is a character at a quarter
turn, each class gives k support drawings, the query is another drawing of the answer's class.
candidate_ids lists n * k ids class-major, turns the quarter turns of each class (the query's
are its answer's); every other set has k_shot 1 and turns 0.
"""

from typing import Any

import numpy as np
import pandas as pd

from siamese import paths
from siamese.atomic import write_parquet
from siamese.config import SplitConfig, TrialsConfig
from siamese.errors import PipelineError
from siamese.images import TURNS

# holdout last: the valid and evaluation trials stay those of earlier versions (one rng)
SETS = (("valid", "valid"), ("evaluation", "test"), ("holdout", "holdout"))
COLUMNS = ["trial_set", "n_way", "trial_id", "alphabet", "query_id", "candidate_ids", "answer",
           "k_shot", "turns"]


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
    """One 20-way trial per test item of each official run, candidates in class order (none
    where the data is not Omniglot)."""
    alphabet = images.set_index("image_id")["alphabet"]
    rows = []
    positions: list[int] = []
    for _, run in lake.groupby("run", sort=True):
        classes = run[run["kind"] == "training"].sort_values("position")
        candidates = classes["image_id"].astype(int).tolist()
        positions = classes["position"].tolist()
        for item in run[run["kind"] == "test"].sort_values("position").itertuples():
            answer = positions.index(item.label)
            rows.append((alphabet[candidates[answer]], int(item.image_id), candidates, answer))
    trials = pd.DataFrame(rows, columns=["alphabet", "query_id", "candidate_ids", "answer"])
    return number(trials, "lake", len(positions))


def class_images(pool: pd.DataFrame, k_shot: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(alphabet of each character, its image ids one per drawer) of the vinyals trials' pool;
    every character needs k_shot support drawers and one more for the query."""
    pool = pool.sort_values(["character_id", "drawer", "image_id"])
    pool = pool.drop_duplicates(["character_id", "drawer"])
    groups = [g for _, g in pool.groupby("character_id", sort=True)]
    if not groups:
        raise PipelineError(f"{paths.SPLIT}: no role-test image for the vinyals trials; "
                            "rerun the split stage with split.protocol vinyals")
    fewest = min(len(g) for g in groups)
    if fewest < k_shot + 1:
        raise PipelineError(
            f"params.yaml: trials.k_shot {k_shot} needs {k_shot + 1} drawers per test character "
            f"(k supports and a query), but some in {paths.SPLIT} have {fewest}")
    return (np.array([g["alphabet"].iloc[0] for g in groups]),
            [g["image_id"].to_numpy(dtype=np.int64) for g in groups])


def vinyals_trials(pool: pd.DataFrame, n_way: int, k_shot: int, count: int,
                   rng: np.random.Generator) -> pd.DataFrame:
    """`count` n-way k-shot trials over the classes (character, quarter turn) of `pool`: each
    test character is TURNS classes.

    Each class draws k + 1 drawings by distinct drawers: k supports, and the answer's last one
    is the query.
    """
    alphabets, drawings = class_images(pool, k_shot)
    classes = len(drawings) * TURNS
    if classes < n_way:
        raise PipelineError(f"params.yaml: trials.vinyals_n_way {n_way} is more than the "
                            f"{classes} classes of the test characters in {paths.SPLIT}")
    rows = []
    for _ in range(count):
        chosen = rng.choice(classes, size=n_way, replace=False)
        answer = int(rng.integers(n_way))
        picks = [ids[rng.choice(len(ids), size=k_shot + 1, replace=False)]
                 for ids in (drawings[c // TURNS] for c in chosen)]
        candidates = [int(i) for pick in picks for i in pick[:k_shot]]
        rows.append((alphabets[chosen[answer] // TURNS], int(picks[answer][k_shot]), candidates,
                     answer, (chosen % TURNS).tolist()))
    return pd.DataFrame(rows, columns=["alphabet", "query_id", "candidate_ids", "answer",
                                       "turns"]).assign(k_shot=k_shot)


def vinyals_sets(labelled: pd.DataFrame, p: TrialsConfig,
                 rng: np.random.Generator) -> list[pd.DataFrame]:
    """Trial set vinyals: p.vinyals_trials trials per (n-way, k-shot) from the test images."""
    pool = labelled[labelled["role"] == "test"]
    return [number(vinyals_trials(pool, n_way, k_shot, p.vinyals_trials, rng), "vinyals", n_way)
            for n_way in p.vinyals_n_way for k_shot in p.k_shot]


def runs_on_test_alphabets(official: pd.DataFrame, test_alphabets: set[str]) -> pd.DataFrame:
    """Lake's runs whose alphabet is a test alphabet: under protocol vinyals some of the runs'
    alphabets train, and their runs would score characters the network learned."""
    kept = official[official["alphabet"].isin(test_alphabets)]
    dropped = sorted(set(official["alphabet"]) - test_alphabets)
    if dropped:
        print(f"trials: lake leaves out the runs of {', '.join(dropped)} (training alphabets)")
    return kept.assign(trial_id=np.arange(len(kept)))


def number(trials: pd.DataFrame, trial_set: str, n_way: int) -> pd.DataFrame:
    """Trial set, n_way and trial ids 0.. of one part; one-shot, unturned unless it says."""
    if "k_shot" not in trials:
        trials = trials.assign(k_shot=1, turns=[[0] * n_way] * len(trials))
    return trials.assign(trial_set=trial_set, n_way=n_way, trial_id=np.arange(len(trials)))


def build_trials(images: pd.DataFrame, split: pd.DataFrame, lake: pd.DataFrame,
                 params: dict[str, Any]) -> pd.DataFrame:
    p = TrialsConfig.parse(params)
    rng = np.random.default_rng(p.seed)
    labelled = images.merge(split, on="image_id", validate="one_to_one")
    test_alphabets = set(labelled.loc[labelled["role"] == "test", "alphabet"])
    train_alphabets = set(labelled.loc[labelled["role"] == "train", "alphabet"])
    # choosing on a test alphabet's other drawers would leak (a group of your own images with
    # test and training classes, dataset.test_by class, is not left out: the classes differ);
    # with split.holdout_alphabets, the holdout trials are those alphabets' alone (none of
    # their characters trains)
    holdout_excluded = test_alphabets - train_alphabets
    if SplitConfig.parse(params).holdout_alphabets:
        holdout_excluded |= train_alphabets
    parts = []
    for trial_set, role in SETS:
        pool = labelled[labelled["role"] == role]
        if role == "holdout":
            pool = pool[~pool["alphabet"].isin(holdout_excluded)]
        for n_way in p.n_way:
            skipped = too_small(pool, n_way)
            if len(skipped) == pool["alphabet"].nunique():
                raise PipelineError(
                    f"params.yaml: trials.n_way {n_way} is larger than every alphabet of the "
                    f"{trial_set} trials (role {role} in {paths.SPLIT})"
                )
            if skipped:
                print(f"trials: {trial_set} {n_way}-way leaves out {', '.join(skipped)}")
            count = p.holdout_per_alphabet if trial_set == "holdout" else p.per_alphabet
            sampled = sample_trials(pool, n_way, count, rng)
            parts.append(number(sampled, trial_set, n_way))
    official = lake_trials(images, lake)
    if SplitConfig.parse(params).protocol == "vinyals":  # drawn last: the others stay as they were
        official = runs_on_test_alphabets(official, test_alphabets)
        parts += vinyals_sets(labelled, p, rng)
    parts.insert(len(SETS) * len(p.n_way), official)
    trials = pd.concat(parts, ignore_index=True)[COLUMNS]
    return trials.astype({"n_way": "int64", "trial_id": "int64", "query_id": "int64",
                          "answer": "int64", "k_shot": "int64"})


def run(params: dict[str, Any]) -> None:
    images = paths.read_manifest(paths.IMAGES, "index")
    split = paths.read_manifest(paths.SPLIT, "split")
    lake = paths.read_manifest(paths.LAKE_RUNS, "index")
    trials = build_trials(images, split, lake, params)
    write_parquet(trials, paths.TRIALS)
    counts = trials.groupby(["trial_set", "n_way", "k_shot"], sort=False).size()
    print("trials: " + ", ".join(f"{s} {n}-way{f' {k}-shot' * (k > 1)} {c}"
                                 for (s, n, k), c in counts.items()))
