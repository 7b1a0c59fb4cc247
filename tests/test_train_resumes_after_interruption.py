import shutil

import pytest
import torch

import tasks.train
from siamese import paths
from tests.training import train_project, weights

TINY = {"steps": 24, "eval_every": 8, "episode_alphabets": 2, "episode_characters": 4,
        "threads": 1}


def interrupt_at(monkeypatch, step: int) -> None:
    """Stop the run as a kill would at `step` (what is on disk is all that survives)."""
    lr_at = tasks.train.lr_at

    def stop(cfg, s):
        if s == step:
            raise KeyboardInterrupt
        return lr_at(cfg, s)

    monkeypatch.setattr(tasks.train, "lr_at", stop)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(
        tmp_path, synthetic_data_root, monkeypatch, capsys, ema):
    params = train_project(tmp_path, synthetic_data_root, **TINY, ema=ema)
    monkeypatch.chdir(tmp_path)
    tasks.train.run(params, device="cpu")
    uninterrupted = weights(paths.MODEL)
    saved = torch.load(tasks.train.LAST, weights_only=True)
    last = saved["model"]
    assert (saved["ema"] is None) == (not ema)
    shutil.rmtree(paths.MODELS)
    shutil.rmtree(paths.TRAIN_LIVE)
    paths.MODEL.parent.mkdir(parents=True)
    paths.MODEL.write_bytes(b"the previous model")

    with monkeypatch.context() as patch:
        interrupt_at(patch, 19)
        with pytest.raises(KeyboardInterrupt):
            tasks.train.run(params, device="cpu")
    # model.pt is written once, at the end: a killed run leaves the previous one
    assert paths.MODEL.read_bytes() == b"the previous model"
    paths.MODEL.unlink()  # as `dvc repro` does before it reruns the stage
    tasks.train.run(params, device="cpu")
    assert "resuming from models/checkpoints/last.pt at step 16 of 24" in capsys.readouterr().err
    resumed = weights(paths.MODEL)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    resumed_saved = torch.load(tasks.train.LAST, weights_only=True)
    assert all(torch.equal(resumed_saved["model"][k], last[k]) for k in last)
    if ema:
        assert all(torch.equal(resumed_saved["ema"][k], saved["ema"][k]) for k in last)
    steps = (paths.TRAIN_LIVE / "plots/metrics/valid_accuracy.tsv").read_text().split()[2::2]
    assert steps == ["8", "16", "24"]  # the logs hold each step once


def test_a_state_saved_with_other_params_is_not_resumed(tmp_path, synthetic_data_root,
                                                        monkeypatch, capsys):
    params = train_project(tmp_path, synthetic_data_root, **TINY)
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as patch:
        interrupt_at(patch, 10)
        with pytest.raises(KeyboardInterrupt):
            tasks.train.run(params, device="cpu")
    params["train"]["lr"] = 0.001
    params["train"]["steps"] = 8
    tasks.train.run(params, device="cpu")
    assert "with other params, data, code or process count" in capsys.readouterr().err
