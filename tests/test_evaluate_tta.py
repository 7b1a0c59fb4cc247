"""evaluate.tta: each image's embedding averaged over the image and N distorted copies, the
copies drawn per image_id from evaluate.seed (never from the batch or the other images)."""

import numpy as np
import pytest
import torch

from siamese.augment import warp
from siamese.config import EvaluateConfig, load_params
from siamese.errors import PipelineError
from siamese.images import TURNS, to_tensor
from siamese.model import build_model
from siamese.scoring import embed_images
from tasks import evaluate
from tasks.evaluate import embedding_table, tta_matrices
from tests import REPO
from tests.evalkit import make_data, params, save_model

IDS = np.array([1, 4, 5, 9, 10])
KEYS = IDS * TURNS  # the table's keys of these images, unturned


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("compact", 28, width=8, depth=2, embedding=16)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """12 images of a few random strokes each (bool [12, 105, 105])."""
    rng = np.random.default_rng(0)
    images = np.zeros((12, 105, 105), dtype=bool)
    for image in images:
        for _ in range(4):
            r, c = rng.integers(10, 80, size=2)
            image[r : r + rng.integers(4, 25), c : c + rng.integers(4, 25)] = True
    return images


def test_tta_zero_gives_todays_embeddings_exactly(model, pixels):
    today = embed_images(model, to_tensor(pixels[IDS], 28), np.arange(len(IDS)), "cpu", 2)
    for kwargs in ({}, {"tta": 0, "seed": 9}, {"tta": 0, "chunk": 2}):
        assert torch.equal(embedding_table(model, pixels, KEYS, "cpu", 2, **kwargs), today)


def test_tta_averages_the_image_and_its_copies_deterministically(model, pixels):
    first = embedding_table(model, pixels, KEYS, "cpu", 4, tta=3, seed=5)
    assert torch.equal(first, embedding_table(model, pixels, KEYS, "cpu", 4, tta=3, seed=5))
    assert not torch.allclose(first, embedding_table(model, pixels, KEYS, "cpu", 4))
    assert not torch.allclose(first, embedding_table(model, pixels, KEYS, "cpu", 4, tta=3,
                                                     seed=6))
    # by hand: image 9 and its three copies through the matrices drawn for image_id 9
    theta = tta_matrices(len(pixels), 3, 5)
    assert theta.shape == (12, 3, 2, 3) and torch.equal(theta, tta_matrices(12, 3, 5))
    image = to_tensor(pixels[[9]], 28)
    views = torch.cat([image, warp(image.expand(3, -1, -1, -1), theta[9])])
    assert not torch.equal(views[1], views[2])  # the copies differ from each other
    by_hand = embed_images(model, views, np.arange(4), "cpu").mean(dim=0)
    torch.testing.assert_close(first[3], by_hand, rtol=1e-5, atol=1e-6)  # IDS[3] is 9


def test_an_images_tta_embedding_does_not_depend_on_the_others_or_the_batches(model, pixels):
    together = embedding_table(model, pixels, KEYS, "cpu", 64, tta=4, seed=5)
    small = embedding_table(model, pixels, KEYS[::-1].copy(), "cpu", 3, chunk=7, tta=4, seed=5)
    torch.testing.assert_close(small.flip(0), together, rtol=1e-5, atol=1e-6)
    for row, key in enumerate(KEYS):
        alone = embedding_table(model, pixels, np.array([key]), "cpu", 1, tta=4, seed=5)
        torch.testing.assert_close(alone[0], together[row], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("value", "message"), [
    (-1, r"evaluate\.tta must be >= 0, got -1"),
    (65, r"evaluate\.tta must be <= 64, got 65"),
    (1.5, r"evaluate\.tta has the wrong type: 1\.5"),
    ("4", r"evaluate\.tta has the wrong type: '4'"),
    (True, r"evaluate\.tta must be a number, got True"),
    (None, r"evaluate\.tta has the wrong type: None"),
])
def test_bad_tta_values_are_refused_naming_the_parameter(value, message):
    section = {**load_params(REPO / "params.yaml")["evaluate"], "device": "cpu"}
    assert EvaluateConfig.parse({"evaluate": section}).tta == 0  # the default: off
    with pytest.raises(PipelineError, match=message):
        EvaluateConfig.parse({"evaluate": {**section, "tta": value}})
    del section["tta"]
    with pytest.raises(PipelineError, match=r"evaluate\.tta is missing"):
        EvaluateConfig.parse({"evaluate": section})


def test_evaluate_run_embeds_with_the_configured_tta(tmp_path, monkeypatch):
    make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    save_model(tmp_path / "models/model.pt", weight=0.0, bias=0.0)  # every candidate alike
    drawn = []

    def recorded(n_images, copies, seed):
        drawn.append((n_images, copies, seed))
        return tta_matrices(n_images, copies, seed)

    monkeypatch.setattr(evaluate, "tta_matrices", recorded)
    settings = params()
    settings["evaluate"].update(tta=2, seed=7)
    metrics = evaluate.run(settings)
    assert drawn == [(30, 2, 7)]  # every image of the packed pixels, the seed of evaluate
    assert metrics["valid"]["5-way"]["accuracy"] == 0.2
