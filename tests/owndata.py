"""Helpers for the tests of your own classes (dataset.source): the glyph data set that
tools/glyphs.py renders from the machine's fonts, and params.yaml edits that it can feed."""

from pathlib import Path
from typing import Any

from tools.glyphs import render

FONTS = 6  # images per class: split 2 / 2 / 2 below
CLASSES = 4  # characters per script; 6 scripts and cases, so 24 classes


def glyph_params(source: Path, **dataset: Any) -> dict[str, dict[str, Any]]:
    """params.yaml edits for the glyph set at `source` (one test group; small pairs, trials)."""
    return {
        "dataset": {"source": str(source), "test_count": 1, **dataset},
        "split": {"train_drawers": 2, "valid_drawers": 2, "holdout_drawers": 2},
        "pairs": {"train_count": 40, "valid_count": 40},
        "trials": {"n_way": [3, 4], "per_alphabet": 10, "holdout_per_alphabet": 10},
    }


def render_glyphs(folder: Path) -> Path:
    render(folder, FONTS, CLASSES)
    return folder
