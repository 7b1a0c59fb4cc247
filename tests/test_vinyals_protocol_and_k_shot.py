"""split.protocol vinyals (1,200 / 423 characters), its n-way k-shot trials with quarter turns,
and their scoring by class prototypes: an oracle scores 100%, a constant model 1/n."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from siamese import paths
from siamese.config import load_params
from siamese.errors import PipelineError
from siamese.evalreport import accuracy_rows
from siamese.model import SiameseNet
from siamese.scoring import credit, table_scores, trial_scores
from tasks import evaluate
from tasks.split import split_images
from tasks.trials import build_trials, vinyals_trials
from tests import REPO

VINYALS_TRIALS = 30  # per (n-way, k-shot): enough to check, fast to draw


@pytest.fixture(scope="module")
def images(real_data_root) -> pd.DataFrame:
    return pd.read_parquet(real_data_root / paths.IMAGES)


@pytest.fixture(scope="module")
def lake(real_data_root) -> pd.DataFrame:
    return pd.read_parquet(real_data_root / paths.LAKE_RUNS)


def vinyals_params(**trials) -> dict:
    params = load_params(REPO / "params.yaml")
    params["split"]["protocol"] = "vinyals"
    params["trials"].update({"vinyals_trials": VINYALS_TRIALS, **trials})
    return params


@pytest.fixture(scope="module")
def split(images, lake) -> pd.DataFrame:
    return split_images(images, lake, vinyals_params())


@pytest.fixture(scope="module")
def trials(images, split, lake) -> pd.DataFrame:
    return build_trials(images, split, lake, vinyals_params())


def test_vinyals_split_has_1200_training_and_423_test_characters(images, split):
    labelled = images.merge(split, on="image_id")
    test = set(labelled.loc[labelled["role"] == "test", "character_id"])
    training = set(labelled.loc[labelled["role"] != "test", "character_id"])
    assert (len(training), len(test)) == (1200, 423)
    assert (4 * len(training), 4 * len(test)) == (4800, 1692)  # classes with quarter turns
    assert not training & test
    # training characters are sliced by drawers like protocol lake; a test character is all test
    sliced = labelled[labelled["character_id"].isin(training)]
    per_character = sliced.groupby(["character_id", "role"]).size().unstack()
    assert (per_character[["train", "valid", "holdout"]] == [12, 4, 4]).all().all()
    assert labelled[labelled["character_id"].isin(test)]["drawer"].nunique() == 20


def test_vinyals_trials_are_n_way_k_shot_across_test_alphabets(images, split, trials):
    vinyals = trials[trials["trial_set"] == "vinyals"]
    counts = vinyals.groupby(["n_way", "k_shot"]).size().to_dict()
    assert counts == {(5, 1): VINYALS_TRIALS, (5, 5): VINYALS_TRIALS,
                      (20, 1): VINYALS_TRIALS, (20, 5): VINYALS_TRIALS}
    info = images.merge(split, on="image_id").set_index("image_id")
    for t in vinyals.itertuples():
        ids = np.asarray(t.candidate_ids).reshape(t.n_way, t.k_shot)
        turns = np.asarray(t.turns)
        chars = info.loc[ids.ravel(), "character_id"].to_numpy().reshape(ids.shape)
        assert (chars == chars[:, :1]).all()  # a class's supports are one character
        assert len({(c, r) for c, r in zip(chars[:, 0], turns, strict=True)}) == t.n_way
        assert set(turns) <= {0, 1, 2, 3}
        assert (info.loc[[*ids.ravel(), t.query_id], "role"] == "test").all()
        query = info.loc[t.query_id]
        assert query["character_id"] == chars[t.answer, 0]
        assert t.query_id not in ids
        assert query["drawer"] not in set(info.loc[ids[t.answer], "drawer"])
        assert t.alphabet == query["alphabet"]
    assert vinyals["alphabet"].nunique() > 1


def test_other_sets_are_unchanged_by_the_vinyals_trials(images, split, lake, trials):
    lake_protocol = vinyals_params()
    lake_protocol["split"]["protocol"] = "lake"
    without = build_trials(images, split, lake, lake_protocol)
    without = without[without["trial_set"] != "lake"].reset_index(drop=True)
    others = trials[~trials["trial_set"].isin(["vinyals", "lake"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(others, without)
    assert (without["k_shot"] == 1).all()
    assert all(list(t) == [0] * n for t, n in zip(without["turns"], without["n_way"],
                                                   strict=True))


def test_lake_runs_of_vinyals_training_alphabets_are_left_out(split, trials):
    official = trials[trials["trial_set"] == "lake"]
    role = split.set_index("image_id")["role"]
    ids = np.concatenate([official["query_id"], *official["candidate_ids"]])
    assert (role[ids] == "test").all()
    assert len(official) == 240 and official["trial_id"].tolist() == list(range(240))


def test_default_params_give_no_vinyals_trials(real_data_root):
    built = pd.read_parquet(real_data_root / paths.TRIALS)
    assert "vinyals" not in set(built["trial_set"])
    assert (built["k_shot"] == 1).all()
    assert built["turns"].map(lambda t: not any(t)).all()


def test_k_shot_beyond_the_drawers_is_a_clear_error(images, split, lake):
    with pytest.raises(PipelineError, match=r"trials\.k_shot 20 needs 21 drawers"):
        build_trials(images, split, lake, vinyals_params(k_shot=[1, 20]))


# --- k-shot scoring: the same sampler on made-up characters, each of identical drawings ------

CHARACTERS, DRAWERS, SIZE = 12, 6, 8


def made_up() -> tuple[np.ndarray, pd.DataFrame]:
    """Random 8x8 pictures; image i is character i // DRAWERS by drawer i % DRAWERS."""
    pictures = np.random.default_rng(0).random((CHARACTERS, SIZE, SIZE)) < 0.5
    ids = np.arange(CHARACTERS * DRAWERS)
    pool = pd.DataFrame({"image_id": ids, "character_id": ids // DRAWERS,
                         "drawer": ids % DRAWERS, "alphabet": np.where(ids < 36, "A", "B")})
    return np.repeat(pictures, DRAWERS, axis=0), pool


def k_shot_trials(pool: pd.DataFrame, n_way: int, k_shot: int) -> pd.DataFrame:
    sampled = vinyals_trials(pool, n_way, k_shot, 40, np.random.default_rng(1))
    return sampled.assign(trial_set="vinyals", n_way=n_way, trial_id=np.arange(len(sampled)))


def flat_net(head_weight: float) -> SiameseNet:
    """embed: the picture itself; logit = head_weight * L1 distance (-1: an oracle, 0: alike)."""
    net = SiameseNet("test", SIZE, {}, nn.Flatten(), SIZE * SIZE)
    nn.init.constant_(net.head.weight, head_weight)
    nn.init.constant_(net.head.bias, 0.3)
    return net


@pytest.mark.parametrize(("head_weight", "n_way", "k_shot", "expected"), [
    (-1.0, 5, 3, 1.0), (-1.0, 20, 1, 1.0), (0.0, 5, 3, 1 / 5), (0.0, 20, 2, 1 / 20),
], ids=["oracle-5way-3shot", "oracle-20way-1shot", "constant-5way-3shot", "constant-20way-2shot"])
def test_k_shot_scoring_oracle_and_constant(head_weight, n_way, k_shot, expected):
    pictures, pool = made_up()
    trials = k_shot_trials(pool, n_way, k_shot)
    assert trials["turns"].map(any).any()  # some classes are turned
    net = flat_net(head_weight)
    images = torch.from_numpy(pictures.astype(np.float32))[:, None]
    direct = trial_scores(net, images, trials, "cpu")
    assert direct.shape == (len(trials), n_way)
    assert credit(direct, trials["answer"]).mean() == pytest.approx(expected)
    # the evaluate stage: an embedding per (image, turns) in a table, then the head alone
    no_pairs = pd.DataFrame({"left_id": [], "right_id": []}, dtype="int64")
    keys = evaluate.needed_keys(trials, no_pairs)
    table = evaluate.embedding_table(net, pictures, keys, "cpu", batch_size=16)
    np.testing.assert_allclose(table_scores(table, keys, net, trials), direct)


def test_k_shot_metrics_keys_and_plot_names():
    pictures, pool = made_up()
    trials = pd.concat([k_shot_trials(pool, 5, 1), k_shot_trials(pool, 5, 3)])
    no_pairs = pd.DataFrame({"left_id": [], "right_id": []}, dtype="int64")
    keys = evaluate.needed_keys(trials, no_pairs)
    net = flat_net(-1.0)
    table = evaluate.embedding_table(net, pictures, keys, "cpu", batch_size=64)
    predictions = evaluate.predict_trials(table, keys, net, trials)
    metrics = evaluate.summarize(predictions, {"pairs": 0}, seed=0)
    assert set(metrics["vinyals"]) == {"5-way", "5-way-3-shot"}
    assert [(s, n, k) for s, n, k, _ in accuracy_rows(metrics)] == [
        ("vinyals", 5, 1), ("vinyals", 5, 3)]
    names = evaluate.plot_tables(evaluate.per_alphabet(predictions))
    assert sorted(names) == ["per_alphabet/vinyals-5way-3shot.csv", "per_alphabet/vinyals-5way.csv"]
