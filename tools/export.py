"""`siamese export`: the trained twin network as one ONNX graph, to score without PyTorch.

The graph takes `support` [S, 1, H, W] and `query` [Q, 1, H, W] (float, ink = 1, H = W = the
model's image size; S and Q free) and gives `logits` [Q, S]: each query against each support
image through the embedding network and the head, as `siamese classify` scores them (a
sigmoid makes them P(same)). The ONNX model's metadata holds the image size, the architecture,
the head and the sha256 of the weights it came from. Needs the `onnx` extra
(`pip install -e '.[onnx]'`: onnx, onnxscript to export; onnxruntime to run).
"""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from siamese.atomic import atomic_path
from siamese.errors import PipelineError
from siamese.model import SiameseNet, load_model


class PairwiseLogits(nn.Module):
    """support [S, 1, H, W], query [Q, 1, H, W] -> logits [Q, S]."""

    def __init__(self, model: SiameseNet):
        super().__init__()
        self.model = model

    def forward(self, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        s = self.model.features(support)
        q = self.model.features(query)
        return self.model.score(q[:, None, :], s[None, :, :])


def require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise PipelineError(f"{module} is not installed: pip install -e '.[onnx]'") from None


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter logs every torchvision op it skips and warns about its own internals."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export(model_path: Path | str, out: Path | str) -> Path:
    """Write the ONNX graph of the checkpoint at `model_path` to `out`, atomically."""
    onnx = require("onnx")
    require("onnxscript")
    model, meta = load_model(model_path, "cpu")
    graph = PairwiseLogits(model).eval()
    size = model.image_size
    example = (torch.zeros(2, 1, size, size), torch.zeros(3, 1, size, size))
    supports, queries = torch.export.Dim("supports"), torch.export.Dim("queries")
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(
            graph, example, dynamo=True, external_data=False, verbose=False,
            input_names=["support", "query"], output_names=["logits"],
            dynamic_shapes={"support": {0: supports}, "query": {0: queries}},
        )
    if program is None:
        raise PipelineError(f"{model_path}: the ONNX exporter returned no program")
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {
        "image_size": str(size), "arch": model.arch, "head": model.options["head"],
        "weights_sha256": str(meta.get("weights_sha256", "")), "source": str(model_path),
    })
    with atomic_path(out) as tmp:
        onnx.save(proto, tmp)
    return Path(out)


class OnnxScorer:
    """An exported graph, run by onnxruntime: `logits(support, query)` as numpy."""

    def __init__(self, path: Path | str):
        ort = require("onnxruntime")
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"{path}: not found (or not a regular file)")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
            raise PipelineError(f"{path}: not a readable ONNX model ({e})") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if "image_size" not in props:
            raise PipelineError(f"{path}: not exported by `siamese export` (no image_size)")
        self.image_size = int(props["image_size"])

    def logits(self, support: torch.Tensor, query: torch.Tensor) -> np.ndarray:
        feeds = {"support": support.numpy().astype(np.float32),
                 "query": query.numpy().astype(np.float32)}
        return self.session.run(["logits"], feeds)[0]


def run(model_path: Path | str, out: Path | str) -> None:
    """`siamese export --model M --out O`."""
    path = export(model_path, out)
    print(f"export: {path} ({path.stat().st_size:,} bytes), from {model_path}")
