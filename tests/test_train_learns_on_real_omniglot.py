import time

import numpy as np
import pandas as pd
import torch

from siamese import paths
from siamese.images import load_pixels, to_tensor
from siamese.model import load_model
from siamese.scoring import credit, embed_images, trial_scores
from tests.training import train_project

SHORT = {"steps": 120, "eval_every": 120, "episode_alphabets": 4, "episode_characters": 10,
         "lr": 0.003, "rotations": 1, "image_size": 28}  # a small profile, not the default's


def test_short_episodic_training_beats_chance_on_unseen_alphabets(tmp_path, real_data_root,
                                                                  monkeypatch):
    params = train_project(tmp_path, real_data_root, **SHORT)
    monkeypatch.chdir(tmp_path)
    from tasks.train import run

    started = time.monotonic()
    run(params, device="cpu")
    model, meta = load_model(paths.MODEL, "cpu")
    assert meta["step"] == 120 and 0.05 < meta["valid_accuracy"] <= 1
    trials = pd.read_parquet(paths.TRIALS)
    test = trials[(trials["trial_set"] == "evaluation") & (trials["n_way"] == 20)]
    images = to_tensor(load_pixels(paths.PIXELS), model.image_size)
    accuracy = credit(trial_scores(model, images, test, "cpu"), test["answer"]).mean()
    print(f"20-way on evaluation alphabets after 120 steps: {accuracy:.3f} "
          f"({time.monotonic() - started:.0f} s)")
    assert accuracy > 0.25  # chance is 0.05
    valid_pairs = pd.read_parquet(paths.PAIRS).query("role == 'valid'")
    # The head's bias is calibrated on train pairs: P(same) = 0.5 is a real decision boundary.
    assert verification_accuracy(model, images, valid_pairs) > 0.7  # chance is 0.5


def verification_accuracy(model, images, pairs: pd.DataFrame) -> float:
    """Each image is embedded once: the 10,000 pairs hold about a fifth as many images."""
    ids, where = np.unique(pairs[["left_id", "right_id"]].to_numpy(), return_inverse=True)
    table = embed_images(model, images, ids, "cpu")
    where = torch.from_numpy(where.reshape(-1, 2))
    said_same = (model.score(table[where[:, 0]], table[where[:, 1]]) > 0).numpy()
    return float((said_same == pairs["same"].to_numpy()).mean())
