"""The five data stages on the real Omniglot: counts, fingerprint, roles, pairs and trials."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from siamese import paths
from siamese.config import load_params
from siamese.images import decode_png, load_pixels
from siamese.zips import read_files
from tasks.split import split_images
from tasks.trials import build_trials

FINGERPRINT = "5428cfccab0ad8d259495c8dd142f6e155c0899146a46fcb391faff018979ebe"


@pytest.fixture(scope="module")
def images(real_data_root) -> pd.DataFrame:
    return pd.read_parquet(real_data_root / paths.IMAGES)


@pytest.fixture(scope="module")
def labelled(real_data_root, images) -> pd.DataFrame:
    return images.merge(pd.read_parquet(real_data_root / paths.SPLIT), on="image_id")


@pytest.fixture(scope="module")
def lake(real_data_root) -> pd.DataFrame:
    return pd.read_parquet(real_data_root / paths.LAKE_RUNS)


def test_images_manifest(real_data_root, images):
    assert len(images) == 32460
    assert images["alphabet"].nunique() == 50
    assert images["character_id"].nunique() == 1623
    assert images.groupby("subset")["alphabet"].nunique().to_dict() == {"background": 30,
                                                                       "evaluation": 20}
    drawers = images.groupby("character_id")["drawer"].apply(sorted)
    assert all(d == list(range(1, 21)) for d in drawers)
    assert images["image_id"].tolist() == list(range(32460))
    assert images["path"].is_monotonic_increasing
    assert images["path"].iloc[0].startswith("images_background/")
    assert ((images["height"] == 105) & (images["width"] == 105)).all()
    assert str(images["image_id"].dtype) == "int64" and str(images["drawer"].dtype) == "int64"
    metadata = pq.read_schema(real_data_root / paths.IMAGES).metadata
    assert metadata[b"fingerprint"].decode() == FINGERPRINT
    dataset = json.loads((real_data_root / paths.DATASET).read_text())
    assert dataset == {"fingerprint": FINGERPRINT, "images": 32460, "alphabets": 50,
                       "characters": 1623}


def test_packed_pixels_are_the_pngs(real_data_root, images):
    pixels = load_pixels(real_data_root / paths.PIXELS)
    assert pixels.shape == (32460, 105, 105)
    for image_id in np.random.default_rng(0).choice(len(images), 25, replace=False):
        png = read_files(real_data_root / paths.RAW, [images.at[image_id, "path"]])[0]
        assert np.array_equal(pixels[image_id], decode_png(png, "test"))


def test_lake_runs_map_to_evaluation_images(real_data_root, images, lake):
    assert len(lake) == 800
    assert lake.groupby(["run", "kind"]).size().eq(20).all()
    assert (images.loc[lake["image_id"], "subset"] == "evaluation").all()
    tests = lake[lake["kind"] == "test"]
    labels = tests.groupby("run")["label"].apply(sorted)
    assert all(run_labels == list(range(1, 21)) for run_labels in labels)
    pixels = load_pixels(real_data_root / paths.PIXELS)
    for row in lake.sample(40, random_state=0).itertuples():
        png = read_files(real_data_root / paths.RAW, [row.file])[0]
        assert np.array_equal(pixels[row.image_id], decode_png(png, row.file))
    classes = lake[lake["kind"] == "training"].set_index(["run", "position"])["image_id"]
    truth = classes.loc[list(zip(tests["run"], tests["label"], strict=True))].to_numpy()
    same = images.loc[truth, "character_id"].to_numpy() == images.loc[
        tests["image_id"], "character_id"].to_numpy()
    assert same.all()


def test_split_counts_and_disjoint_drawers(labelled):
    counts = labelled["role"].value_counts().to_dict()
    assert counts == {"train": 11568, "valid": 3856, "holdout": 3856, "test": 13180}
    assert (labelled.loc[labelled["subset"] == "evaluation", "role"] == "test").all()
    background = labelled[labelled["subset"] == "background"]
    for _, alphabet in background.groupby("alphabet"):
        drawers = alphabet.groupby("role")["drawer"].apply(set)
        assert [len(drawers[r]) for r in ("train", "valid", "holdout")] == [12, 4, 4]
        assert not drawers["train"] & drawers["valid"]
        assert not drawers["holdout"] & (drawers["train"] | drawers["valid"])


def test_pairs_half_same_from_their_role(real_data_root, images, labelled):
    pairs = pd.read_parquet(real_data_root / paths.PAIRS)
    assert pairs.groupby("role").size().to_dict() == {"train": 30000, "valid": 10000}
    assert pairs.groupby("role")["same"].mean().eq(0.5).all()
    assert (pairs["left_id"] != pairs["right_id"]).all()
    unordered = np.sort(pairs[["left_id", "right_id"]].to_numpy(), axis=1)
    assert len(np.unique(unordered, axis=0)) == len(pairs)
    role = labelled.set_index("image_id")["role"]
    assert (role[pairs["left_id"]].to_numpy() == pairs["role"]).all()
    assert (role[pairs["right_id"]].to_numpy() == pairs["role"]).all()
    left, right = images.loc[pairs["left_id"]], images.loc[pairs["right_id"]]
    same_char = left["character_id"].to_numpy() == right["character_id"].to_numpy()
    assert (same_char == pairs["same"]).all()
    assert (left["alphabet"].to_numpy() == right["alphabet"].to_numpy()).all()


def check_trials(trials: pd.DataFrame, images: pd.DataFrame, one_drawer: bool) -> None:
    """Distinct characters, the answer is the query's character, one alphabet, no candidate
    by the query's drawer, and (one_drawer) every candidate by the same drawer."""
    char, drawer = images["character_id"].to_numpy(), images["drawer"].to_numpy()
    alphabet = images["alphabet"].to_numpy()
    for n_way, group in trials.groupby("n_way"):
        cands = np.stack(group["candidate_ids"].to_numpy())
        query, answer = group["query_id"].to_numpy(), group["answer"].to_numpy()
        assert cands.shape == (len(group), n_way)
        assert (np.diff(np.sort(char[cands], axis=1), axis=1) != 0).all()
        assert (char[cands][np.arange(len(group)), answer] == char[query]).all()
        names = group["alphabet"].to_numpy()
        assert (alphabet[cands] == names[:, None]).all() and (alphabet[query] == names).all()
        assert (drawer[cands] != drawer[query][:, None]).all()
        if one_drawer:
            assert (drawer[cands] == drawer[cands][:, :1]).all()


def test_trials_follow_kochs_protocol(real_data_root, images, labelled):
    trials = pd.read_parquet(real_data_root / paths.TRIALS)
    sizes = trials.groupby(["trial_set", "n_way"]).size().to_dict()
    assert sizes == {("evaluation", 5): 800, ("evaluation", 20): 800, ("lake", 20): 400,
                     ("valid", 5): 1200, ("valid", 20): 1040,
                     ("holdout", 5): 1200, ("holdout", 20): 1040}
    for _, group in trials.groupby(["trial_set", "n_way"]):
        assert group["trial_id"].tolist() == list(range(len(group)))
    sampled = trials[trials["trial_set"] != "lake"]
    check_trials(sampled, images, one_drawer=True)
    role = labelled.set_index("image_id")["role"]
    for trial_set, wanted in (("valid", "valid"), ("holdout", "holdout"), ("evaluation", "test")):
        part = sampled[sampled["trial_set"] == trial_set]
        ids = np.concatenate([part["query_id"], np.concatenate(part["candidate_ids"].to_numpy())])
        assert (role[ids] == wanted).all()
    answers = sampled.loc[sampled["n_way"] == 20, "answer"]
    assert np.bincount(answers, minlength=20).min() > 0


def test_lake_trials_are_the_official_runs(real_data_root, images, lake):
    trials = pd.read_parquet(real_data_root / paths.TRIALS)
    official = trials[trials["trial_set"] == "lake"]
    assert len(official) == 400 and (official["n_way"] == 20).all()
    tests = lake[lake["kind"] == "test"].sort_values(["run", "position"])
    assert official["query_id"].tolist() == tests["image_id"].tolist()
    assert (official["answer"].to_numpy() == tests["label"].to_numpy() - 1).all()
    check_trials(official, images, one_drawer=True)  # each run: one alphabet, two drawers
    for (run, group), candidates in zip(tests.groupby("run"), official["candidate_ids"][::20],
                                        strict=True):
        classes = lake[(lake["run"] == run) & (lake["kind"] == "training")]
        assert list(candidates) == classes.sort_values("position")["image_id"].tolist()
        assert len(group) == 20


def test_koch_protocol(real_data_root, images, lake):
    params = load_params(real_data_root / paths.PARAMS)
    params["split"]["protocol"] = "koch"
    split = split_images(images, lake, params)
    roles = images.merge(split, on="image_id")
    lake_alphabets = set(images.loc[lake["image_id"], "alphabet"])
    assert len(lake_alphabets) == 10
    per_role = roles.groupby("role")["alphabet"].unique().apply(set)
    assert len(per_role["train"]) == 30 and len(per_role["valid"]) == 10
    assert per_role["test"] == lake_alphabets
    assert not per_role["train"] & per_role["valid"]
    assert len((per_role["train"] | per_role["valid"]) - lake_alphabets) == 40
    characters = images.groupby("alphabet")["character_id"].nunique()
    counts = roles["role"].value_counts()
    assert counts["train"] == 12 * characters[list(per_role["train"])].sum()
    assert counts["valid"] == 4 * characters[list(per_role["valid"])].sum()
    assert counts["test"] == 4 * characters[list(lake_alphabets)].sum()
    assert counts.sum() == 32460
    in_use = roles[roles["role"] != "holdout"].groupby("alphabet")["drawer"].nunique()
    assert set(in_use) == {12, 4}
    trials = build_trials(images, split, lake, params)
    evaluation = trials[trials["trial_set"] == "evaluation"]
    assert set(evaluation["alphabet"]) == lake_alphabets
    check_trials(evaluation, images, one_drawer=True)


def test_split_by_image(real_data_root, images, lake):
    params = load_params(real_data_root / paths.PARAMS)
    params["split"]["by"] = "image"
    roles = images.merge(split_images(images, lake, params), on="image_id")
    per_character = roles[roles["subset"] == "background"].groupby("character_id")["role"]
    sizes = per_character.apply(lambda r: sorted(r.value_counts().tolist()))
    assert all(s == [4, 4, 12] for s in sizes)
    drawer_sets = roles[roles["role"] == "valid"].groupby("alphabet")["drawer"].nunique()
    assert drawer_sets.max() > 4  # drawings, not whole drawers, are split
    trials = build_trials(images, split_images(images, lake, params), lake, params)
    check_trials(trials[trials["trial_set"] == "valid"], images, one_drawer=False)


def test_holdout_alphabets_are_unseen_and_leave_the_other_roles_as_they_were(
        real_data_root, images, labelled, lake):
    params = load_params(real_data_root / paths.PARAMS)
    params["split"]["holdout_alphabets"] = 5
    params["trials"]["holdout_per_alphabet"] = 10
    roles = images.merge(split_images(images, lake, params), on="image_id")
    per_role = roles.groupby("role")["alphabet"].unique().apply(set)
    held_out = set(roles["alphabet"]) - per_role["train"] - per_role["test"]
    assert len(held_out) == 5
    assert set(images.loc[images["alphabet"].isin(held_out), "subset"]) == {"background"}
    assert not held_out & (per_role["valid"] | per_role["train"] | per_role["test"])
    changed = roles["role"] != labelled.sort_values("image_id")["role"].to_numpy()
    assert set(roles.loc[changed, "alphabet"]) == held_out  # every other image keeps its role
    trials = build_trials(images, split_images(images, lake, params), lake, params)
    holdout = trials[trials["trial_set"] == "holdout"]
    assert set(holdout["alphabet"]) <= held_out and len(holdout) > 0
    used = set(holdout["query_id"]) | {i for ids in holdout["candidate_ids"] for i in ids}
    assert set(roles.loc[roles["image_id"].isin(used), "alphabet"]) <= held_out
    check_trials(holdout, images, one_drawer=True)
    trained = set(roles.loc[roles["role"] == "train", "image_id"])
    assert not used & trained
