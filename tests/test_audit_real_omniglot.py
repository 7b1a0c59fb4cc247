"""The audit on the real Omniglot finds what README.md reports: one pair of byte-identical
Braille files (valid and holdout), near duplicates only among the background alphabets,
nothing shared with the test alphabets or Lake's runs, and the run takes well under a minute."""

import time

import pandas as pd
import pytest

from siamese import paths
from siamese.config import load_params
from siamese.images import load_pixels
from tasks import audit

pytestmark = pytest.mark.slow  # the real data set (built once per session) and ~15 s of audit


def test_real_data_duplicates_match_the_readme(real_data_root):
    start = time.monotonic()
    params = load_params(real_data_root / paths.PARAMS)
    images = pd.read_parquet(real_data_root / paths.IMAGES)
    lake = pd.read_parquet(real_data_root / paths.LAKE_RUNS)
    split = pd.read_parquet(real_data_root / paths.SPLIT)
    pixels = audit.item_pixels(load_pixels(real_data_root / paths.PIXELS), images, lake)
    report = audit.audit(images, split, lake, pixels, audit.audit_params(params))
    assert time.monotonic() - start < 60

    by_roles = report["pairs_by_roles"]
    assert by_roles["sha256"] == by_roles["pixels"] == {"valid/holdout": 1}
    exact = next(r for r in report["pairs"] if r["kind"] == "sha256")
    assert (exact["a"]["file"], exact["b"]["file"]) == (
        "images_background/Braille/character01/0192_03.png",
        "images_background/Braille/character01/0192_19.png")
    assert by_roles["near"] == {"train/train": 4, "train/valid": 3, "train/holdout": 3,
                                "valid/holdout": 2}
    assert report["leaks"] == 3
    assert report["expected"] == {"lake_run_image_is_its_evaluation_image": 800}
    for role in ("test", "lake"):
        assert all(v == 0 for k, v in report["roles"][role].items() if k != "images")
