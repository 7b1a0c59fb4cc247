"""The seed notebook's ways (the baselines), written faithfully.

It decodes each PNG from disk with PIL for each pair of each batch, and scores an n-way trial
by running the whole twin on n tiled copies of the query (2n embeddings a trial).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from siamese import paths


def png_ink(path: Path) -> np.ndarray:
    """The seed's decoding of one file: PIL opens it, numpy makes an array, ink = True."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L")) < 128


def unpack_pngs(folder: Path) -> Path:
    """The PNG files as the seed notebook had them: the two image zips unpacked (the pipeline
    itself reads them out of the zips). Returns the folder that image paths are relative to."""
    import zipfile

    from siamese.zips import BACKGROUND_ZIP, EVALUATION_ZIP

    for name in (BACKGROUND_ZIP, EVALUATION_ZIP):
        with zipfile.ZipFile(paths.RAW / name) as zf:
            zf.extractall(folder)
    return folder


def seed_batch(pngs: Path, files: np.ndarray, left: np.ndarray, right: np.ndarray,
               size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed's input path: both PNGs of every pair read from disk, for every batch."""
    from siamese.images import to_tensor

    x1 = np.stack([png_ink(pngs / files[i]) for i in left])
    x2 = np.stack([png_ink(pngs / files[i]) for i in right])
    return to_tensor(x1, size), to_tensor(x2, size)


def seed_trial_scores(model, pixels: np.ndarray, trials: pd.DataFrame) -> np.ndarray:
    """The seed's scoring [T, n]: per trial, n tiled copies of the query and the n candidates
    (preprocessed as in training) through the whole twin, so each trial costs 2n embeddings."""
    from siamese.images import to_tensor

    net = getattr(model, "module", model).eval()
    out = []
    with torch.no_grad():
        for query, candidates in zip(trials["query_id"], trials["candidate_ids"], strict=True):
            c = np.array(candidates, dtype=np.int64)
            x1 = to_tensor(pixels[np.full(len(c), int(query))], net.image_size)
            out.append(net(x1, to_tensor(pixels[c], net.image_size)).float().numpy())
    return np.stack(out)
