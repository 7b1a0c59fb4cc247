"""`siamese export`: the network as one ONNX graph; onnxruntime's scores equal PyTorch's within
1e-5 on real Omniglot trials, and `siamese classify --model model.onnx` predicts as the
checkpoint does."""

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from siamese import paths
from siamese.errors import PipelineError
from siamese.images import load_pixels, to_tensor
from siamese.model import build_model, save_checkpoint
from siamese.scoring import trial_scores
from tools import classify
from tools.export import OnnxScorer, export

META = {"step": 1, "valid_accuracy": 0.5, "params_digest": "test"}


def saved_model(tmp_path, size: int = 40, **options):
    torch.manual_seed(7)
    model = build_model("compact", size, **options).eval()
    save_checkpoint(tmp_path / "model.pt", model, META)
    return model, tmp_path / "model.pt"


def test_the_graph_scores_as_pytorch_for_any_number_of_supports(tmp_path):
    model, path = saved_model(tmp_path, 28, width=8, head="cosine")
    scorer = OnnxScorer(export(path, tmp_path / "model.onnx"))
    assert scorer.image_size == 28
    generator = torch.Generator().manual_seed(1)
    for supports, queries in ((1, 1), (5, 3), (20, 9)):
        support = (torch.rand(supports, 1, 28, 28, generator=generator) > 0.8).float()
        query = (torch.rand(queries, 1, 28, 28, generator=generator) > 0.8).float()
        expected = classify.classify(model, support, query, torch.device("cpu"))
        assert np.abs(scorer.logits(support, query) - expected).max() <= 1e-5


def test_a_file_that_is_no_export_is_one_line(tmp_path):
    (tmp_path / "other.onnx").write_bytes(b"not a graph")
    with pytest.raises(PipelineError, match="other.onnx: not a readable ONNX model"):
        OnnxScorer(tmp_path / "other.onnx")
    with pytest.raises(PipelineError, match="missing.onnx: not found"):
        OnnxScorer(tmp_path / "missing.onnx")


def test_real_trials_score_alike_and_classify_predicts_alike(real_data_root, tmp_path):
    model, path = saved_model(tmp_path, width=64)  # the default architecture, 40x40
    onnx_path = export(path, tmp_path / "model.onnx")
    trials = pd.read_parquet(real_data_root / paths.TRIALS)
    trials = trials[(trials.trial_set == "evaluation") & (trials.n_way == 20)].head(40)
    pixels = load_pixels(real_data_root / paths.PIXELS)
    ids = np.unique(np.concatenate([trials.query_id, *trials.candidate_ids]))
    images = torch.zeros(len(pixels), 1, 40, 40)
    images[ids] = to_tensor(pixels[ids], 40)
    expected = trial_scores(model, images, trials.reset_index(drop=True), "cpu")
    scorer = OnnxScorer(onnx_path)
    got = np.concatenate([scorer.logits(images[np.asarray(t.candidate_ids)], images[[t.query_id]])
                          for t in trials.itertuples()])
    assert got.shape == expected.shape == (40, 20)
    assert np.abs(got - expected).max() <= 1e-5

    first = trials.iloc[0]
    files = []
    for image_id in [*first.candidate_ids[:5], first.query_id]:
        files.append(tmp_path / f"{image_id}.png")
        Image.fromarray(np.where(pixels[image_id], 0, 255).astype(np.uint8)).save(files[-1])
    tables = []
    for model_file in (path, onnx_path):
        out = io.StringIO()
        classify.run(model_file, files[:5], files[5:] + files[:2], device="cpu", out=out)
        tables.append(pd.read_csv(io.StringIO(out.getvalue())))
    assert tables[0]["prediction"].tolist() == tables[1]["prediction"].tolist()
    assert np.abs(tables[0]["score"] - tables[1]["score"]).max() <= 1e-4
