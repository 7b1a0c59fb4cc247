"""A small model and user-like pictures for the tests of `siamese classify`: a random compact
net with a distance head, and dark strokes on white (a cross, a ring, a bar) at any size."""

from pathlib import Path

import numpy as np
import torch

from siamese.model import build_model, save_checkpoint


def save_model(path: Path) -> Path:
    """A random compact net with a distance head: the nearest picture gets the top score."""
    torch.manual_seed(0)
    model = build_model("compact", 28, width=8, depth=2, embedding=16)
    with torch.no_grad():
        model.head.weight.fill_(-1.0)
        model.head.bias.fill_(3.0)
    return save_checkpoint(path, model, {"step": 1, "valid_accuracy": 0.0, "params_digest": "t"})


def stroke_image(kind: int, height: int, width: int) -> np.ndarray:
    """Dark strokes on white, uint8 [H, W]: a cross (0), a ring (1) or a bar (2)."""
    y, x = np.mgrid[0:height, 0:width]
    cy, cx, r = height / 2, width / 2, min(height, width) / 2
    if kind == 0:
        ink = (abs(y - cy) < r / 8) | (abs(x - cx) < r / 8)
    elif kind == 1:
        ink = abs(np.hypot(y - cy, x - cx) - r * 0.6) < r / 8
    else:
        ink = (abs(y - cy * 0.6) < r / 8) & (abs(x - cx) < r * 0.7)
    return np.where(ink, 0, 255).astype(np.uint8)
