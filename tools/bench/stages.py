"""The data stages on the real data, each in its own process, and the index stage's packing.

Peak memory is each process's peak resident set size from os.wait4, interpreter and imports
included, with an `imports only` process for the floor.
"""

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from siamese import paths
from tools.bench.timing import child_env, run_child

DATA_STAGES = ("index", "split", "pairs", "trials")  # fetch: see bench_stages
OUTPUTS = {"index": paths.IMAGES, "split": paths.SPLIT, "pairs": paths.PAIRS,
           "trials": paths.TRIALS}


def bench_stages(scratch: Path) -> dict[str, Any]:
    """Each data stage as `siamese <stage>` in its own process, on a scratch copy of the outputs.

    The scratch folder holds a copy of params.yaml and the zips: fetched again from a local
    source (OMNIGLOT_SOURCE, or fetch.source when it is a folder), which times fetch too, or
    else linked to the project's data/raw, so the project's own artifacts are never touched.
    """
    shutil.copy(paths.PARAMS, scratch / paths.PARAMS)
    env = child_env()
    imports = "import tasks.index, tasks.split, tasks.pairs, tasks.trials, tools.cli"
    out: dict[str, Any] = {"imports only": run_child([sys.executable, "-c", imports], scratch, env)}
    out["fetch"] = bench_fetch(scratch, env)
    for stage in DATA_STAGES:
        entry = run_child([sys.executable, "-m", "tools.cli", stage], scratch, env)
        rows = len(pd.read_parquet(scratch / OUTPUTS[stage], columns=[]))
        unit = "images" if stage == "index" else "rows"
        entry.update({unit: rows, f"{unit}_per_s": round(rows / entry["seconds"], 1)})
        out[stage] = entry
    out["index: pack+write"] = bench_pack(scratch)
    return out


def bench_fetch(scratch: Path, env: dict[str, str]) -> dict[str, Any]:
    """`siamese fetch` from a local source into the scratch folder; from a URL, not timed (the
    scratch folder's data/raw is then a link to the project's)."""
    from siamese.config import FetchConfig, load_params
    from tasks.fetch import is_url

    source = FetchConfig.parse(load_params(paths.PARAMS)).source
    if is_url(source):
        (scratch / paths.RAW).parent.mkdir(parents=True, exist_ok=True)
        (scratch / paths.RAW).symlink_to(paths.RAW.resolve(), target_is_directory=True)
        return {"skipped": "the source is a URL; set OMNIGLOT_SOURCE to a folder"}
    return run_child([sys.executable, "-m", "tools.cli", "fetch"], scratch,
                     {**env, "OMNIGLOT_SOURCE": str(Path(source).resolve())})


def bench_pack(scratch: Path) -> dict[str, Any]:
    """The index stage's packing alone, in this process: the ink masks it just wrote, packed
    and written again (siamese.images.pack + the atomic write)."""
    from siamese.atomic import write_npy
    from siamese.images import load_pixels, pack

    pixels = load_pixels(scratch / paths.PIXELS)
    start = time.perf_counter()
    write_npy(pack(pixels), scratch / "pixels-bench.npy")
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 3), "images": len(pixels),
            "images_per_s": round(len(pixels) / seconds, 1)}
