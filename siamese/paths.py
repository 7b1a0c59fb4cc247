"""Where each artifact lives, relative to the repository root (the folder holding dvc.yaml).

dvc.yaml declares the same paths as stage deps and outs; `read_manifest` reads one.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from siamese.errors import PipelineError
from siamese.lockcheck import check_input

if TYPE_CHECKING:
    import pandas as pd

PARAMS = Path("params.yaml")
PARAMS_CHECKED = Path("data/params.checked")  # the params stage's output: params.yaml is valid
RAW = Path("data/raw")  # the three verified zips, named in siamese/zips.py
MANIFESTS = Path("data/manifests")
IMAGES = MANIFESTS / "images.parquet"
LAKE_RUNS = MANIFESTS / "lake_runs.parquet"
DATASET = MANIFESTS / "dataset.json"
SOURCES = MANIFESTS / "sources.json"
PIXELS = Path("data/packed/pixels.npy")
SPLIT = MANIFESTS / "split.parquet"
PAIRS = MANIFESTS / "pairs.parquet"
TRIALS = MANIFESTS / "trials.parquet"
MODELS = Path("models")
MODEL = MODELS / "model.pt"
CHECKPOINTS = MODELS / "checkpoints"
REPORTS = Path("reports")
PLOTS = REPORTS / "plots"  # the evaluation's plot data, kept by git like the metrics
TRAIN_LIVE = REPORTS / "train"
METRICS = REPORTS / "metrics.json"


def read_manifest(path: Path, stage: str, columns: list[str] | None = None) -> "pd.DataFrame":
    """A manifest that an earlier stage writes, with a clear error when it is not there or
    (under `dvc repro`) not what dvc.lock records."""
    import pandas as pd  # here: `siamese` pins numpy's BLAS kernels before numpy loads (cpu.py)

    try:
        table = pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found; run the {stage} stage first") from None
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise PipelineError(f"{path}: not readable ({type(e).__name__}: {e})") from None
    check_input(path)
    return table
