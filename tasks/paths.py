"""Where each artifact lives, relative to the repository root (the folder holding dvc.yaml).

dvc.yaml declares the same paths as stage deps and outs.
"""

from pathlib import Path

PARAMS = Path("params.yaml")
RAW = Path("data/raw/omniglot")
MANIFESTS = Path("data/manifests")
IMAGES = MANIFESTS / "images.parquet"
LAKE_RUNS = MANIFESTS / "lake_runs.parquet"
DATASET = MANIFESTS / "dataset.json"
PIXELS = Path("data/packed/pixels.npy")
SPLIT = MANIFESTS / "split.parquet"
PAIRS = MANIFESTS / "pairs.parquet"
TRIALS = MANIFESTS / "trials.parquet"
MODELS = Path("models")
MODEL = MODELS / "model.pt"
CHECKPOINTS = MODELS / "checkpoints"
REPORTS = Path("reports")
TRAIN_LIVE = REPORTS / "train"
METRICS = REPORTS / "metrics.json"
