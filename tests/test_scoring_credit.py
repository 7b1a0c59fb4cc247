import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from siamese.errors import PipelineError
from siamese.model import SiameseNet
from siamese.scoring import credit, trial_scores

N_IMAGES, N_WAY, CHARACTERS = 60, 5, 30


def images_and_trials() -> tuple[torch.Tensor, pd.DataFrame]:
    """Image i shows character i // 2 (two identical drawings); 5-way trials over them."""
    rng = np.random.default_rng(0)
    characters = torch.rand(CHARACTERS, 1, 4, 4)
    images = characters.repeat_interleave(2, dim=0)
    rows = []
    for t in range(12):
        chars = rng.choice(CHARACTERS, size=N_WAY, replace=False)
        answer = int(rng.integers(N_WAY))
        rows.append({"query_id": 2 * chars[answer] + 1, "answer": answer,
                     "candidate_ids": [2 * c for c in chars], "trial_id": t})
    return images, pd.DataFrame(rows)


class Counting(nn.Flatten):
    seen = 0

    def forward(self, x):
        Counting.seen += len(x)
        return super().forward(x)


def twin(head_weight: float) -> SiameseNet:
    net = SiameseNet("test", 4, {}, Counting(), 16)
    nn.init.constant_(net.head.weight, head_weight)
    nn.init.constant_(net.head.bias, 0.3)
    return net


def test_constant_model_gets_exactly_one_in_n():
    images, trials = images_and_trials()
    scores = trial_scores(twin(0.0), images, trials, "cpu")
    assert scores.shape == (12, N_WAY)
    assert credit(scores, trials["answer"]).mean() == pytest.approx(1 / N_WAY)


def test_oracle_gets_everything_and_each_image_is_embedded_once():
    images, trials = images_and_trials()
    Counting.seen = 0
    scores = trial_scores(twin(-1.0), images, trials, "cpu")  # logit = -L1 distance
    distinct = set(trials["query_id"]) | {i for c in trials["candidate_ids"] for i in c}
    assert Counting.seen == len(distinct)
    assert credit(scores, trials["answer"]).mean() == 1.0


def test_ties_share_the_credit():
    scores = np.array([[1.0, 1.0, 0.0, 1.0], [0.0, 2.0, 2.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(credit(scores, np.array([0, 0, 0])), [1 / 3, 0.0, 1.0])


def test_trials_naming_unknown_images_are_a_clear_error():
    images, trials = images_and_trials()
    trials.loc[3, "query_id"] = N_IMAGES + 5
    with pytest.raises(PipelineError, match="outside the 60 images"):
        trial_scores(twin(-1.0), images, trials, "cpu")
