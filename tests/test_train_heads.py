"""train.head: koch (weighted L1), euclidean (prototypical) and cosine each learn on the real
Omniglot; an unknown head, a checkpoint whose weights are not its head's, and a model.pt of
another head than params.yaml names are refused; checkpoints from before heads still load."""

import json
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from siamese import paths
from siamese.config import TrainConfig
from siamese.errors import PipelineError
from siamese.images import load_pixels
from siamese.model import HEADS, build_model, load_model, save_checkpoint
from tasks import evaluate
from tests import REPO
from tests.evalkit import make_data
from tests.evalkit import params as evaluate_params
from tests.training import train_project

# One thread: on 2 cores shared with other jobs, torch's thread pool spends more time waiting
# for the other thread than computing (a step took 1.2 s with 2 threads, 0.1 s with one).
SHORT = {"steps": 80, "eval_every": 80, "episode_alphabets": 4, "episode_characters": 10,
         "rotations": 1, "image_size": 28, "width": 16, "embedding": 32, "lr": 0.003,
         "threads": 1}
META = {"step": 7, "valid_accuracy": 0.5, "params_digest": "abc"}


@pytest.fixture
def torch_threads():
    """Give back torch's thread count, which train.threads sets for the whole process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("head", list(HEADS))
def test_each_head_learns_beyond_chance_on_unseen_alphabets(tmp_path, real_data_root,
                                                            monkeypatch, torch_threads, head):
    params = train_project(tmp_path, real_data_root, head=head, **SHORT)
    monkeypatch.chdir(tmp_path)
    from tasks.train import run

    started = time.monotonic()
    run(params, device="cpu")
    model, meta = load_model(paths.MODEL, "cpu")
    assert meta["model_options"]["head"] == head and meta["step"] == SHORT["steps"]
    trials = pd.read_parquet(paths.TRIALS)
    test = trials[(trials["trial_set"] == "evaluation") & (trials["n_way"] == 20)]
    pixels = load_pixels(paths.PIXELS)
    no_pairs = pd.DataFrame({"left_id": [], "right_id": []}, dtype="int64")
    keys = evaluate.needed_keys(test, no_pairs)  # test images only
    table = evaluate.embedding_table(model, pixels, keys, "cpu", 256)
    accuracy = evaluate.predict_trials(table, keys, model, test)["credit"].mean()
    print(f"head {head}: 20-way after {SHORT['steps']} steps: valid {meta['valid_accuracy']:.3f},"
          f" evaluation alphabets {accuracy:.3f} ({time.monotonic() - started:.0f} s)")
    # Measured (seed 4, one thread): koch 0.241, euclidean 0.302, cosine 0.324; chance is 0.05.
    assert accuracy > 0.15


def test_an_unknown_head_is_refused_by_params_and_by_build_model():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"]["head"] = "manhattan"
    with pytest.raises(PipelineError, match="train.head must be one of koch, euclidean, cosine; "
                                            "got 'manhattan'"):
        TrainConfig.parse(params)
    with pytest.raises(PipelineError, match="train.head must be one of koch, euclidean, cosine"):
        build_model("compact", 28, head="manhattan")
    choices = next(f.metadata["choices"] for f in fields(TrainConfig) if f.name == "head")
    assert choices == tuple(HEADS)  # params.yaml and the model know the same heads


def test_a_checkpoint_of_an_unknown_head_is_refused_naming_the_file(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("compact", 28, width=8), META)
    rewrite_options(path, head="manhattan")
    with pytest.raises(PipelineError, match=r"m\.pt: train\.head must be one of"):
        load_model(path, "cpu")


@pytest.mark.parametrize(("saved", "declared"), [
    ("koch", "cosine"), ("cosine", "koch"), ("euclidean", "koch"),
])
def test_weights_that_do_not_fit_the_declared_head_are_refused(tmp_path, saved, declared):
    model = build_model("compact", 28, head=saved, width=8)
    path = save_checkpoint(tmp_path / "m.pt", model, META)
    rewrite_options(path, head=declared)
    with pytest.raises(PipelineError, match=rf"m\.pt: weights do not match arch 'compact' at "
                                            rf"image_size 28 with head '{declared}'"):
        load_model(path, "cpu")


def test_a_koch_checkpoint_saved_before_heads_still_loads(tmp_path):
    torch.manual_seed(0)
    model = build_model("compact", 28, width=8).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, META)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["model_options"]["head"]
    torch.save(checkpoint, path)
    assert {"head.weight", "head.bias"} <= set(checkpoint["state_dict"])

    loaded, meta = load_model(path, "cpu")
    assert loaded.options["head"] == "koch" and "head" not in meta["model_options"]
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded(x, x.flip(0)), model(x, x.flip(0)))


def test_evaluate_refuses_a_model_of_another_head_and_keeps_the_reports(tmp_path, monkeypatch):
    make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    save_checkpoint(paths.MODEL, build_model("compact", 28, width=8, depth=2), META)
    previous = {"previous": True}
    paths.METRICS.parent.mkdir(parents=True, exist_ok=True)
    paths.METRICS.write_text(json.dumps(previous))

    with pytest.raises(PipelineError, match=r"^models/model\.pt was trained with head koch but "
                                            r"params\.yaml: train\.head is cosine; rerun the "
                                            r"train stage \(dvc repro\)$"):
        evaluate.run({**evaluate_params(), "train": {"head": "cosine"}})
    assert json.loads(paths.METRICS.read_text()) == previous
    assert not Path("reports/evaluate").exists()

    save_checkpoint(paths.MODEL, build_model("compact", 28, head="cosine", width=8, depth=2),
                    META)
    metrics = evaluate.run({**evaluate_params(), "train": {"head": "cosine"}})
    assert json.loads(paths.METRICS.read_text()) == metrics


def rewrite_options(path: Path, **options) -> None:
    """Edit the checkpoint's model_options in place (a checkpoint that says one thing and
    holds another)."""
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model_options"].update(options)
    torch.save(checkpoint, path)
