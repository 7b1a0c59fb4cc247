"""`siamese bench` (its run()): how fast each part of the pipeline runs, against the seed's way.

Every figure is measured in one run, on this machine; every ratio compares two figures of the
same run. The seed notebook's ways (the baselines, tools/bench/seed.py) are written faithfully:
it decodes each PNG from disk with PIL for each pair of each batch, and scores an n-way trial by
running the whole twin on n tiled copies of the query. Everything else calls the project's code.

One module per kind of measurement, composed by run() here: stages (the data stages on the
real data, each in its own process, and the index stage's packing), training (the training
input path, the distortions, the CPU training step), evaluation (the trial scoring), pipeline
(DVC and the Prefect flow when all is cached), probe (the training step under each CPU code
path and allocator, each in a fresh process, and the determinism probe), table (the printed
table). Beside them: sizes (FULL, QUICK, TINY), timing (timers, child processes), seed (the
baselines) and trainparts (train.py's pieces; gpu.py, the GPU benchmark, uses them too).
Writes reports/bench.json (every figure) and reports/bench.md (the table it prints).

Headline keys: `input_path_speedup`, pairs/s of train.py's loader at the training profile's
image size over the seed's PNG path at 105x105 (the input its network takes), and
`input_path_speedup_same_size`, both at 105x105; `eval_speedup`, trials/s of the evaluate
stage's scoring over the seed's tiling on the 20-way evaluation trials (`eval_speedup_lake`:
on Lake's runs, which share their images more). `--quick` shrinks the sizes after the data
stages; `sizes=TINY` (the smoke test) shrinks everything and leaves DVC and Prefect out.
"""

import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from siamese import paths
from siamese.atomic import write_json, write_text
from siamese.errors import PipelineError
from tools.bench.evaluation import bench_eval
from tools.bench.pipeline import (
    DATA_TARGETS,
    bench_dvc_noop,
    bench_pipeline,
    count_stages,
    dvc_cache_size,
)
from tools.bench.probe import bench_cpu_settings
from tools.bench.seed import unpack_pngs
from tools.bench.sizes import FULL, QUICK, Sizes
from tools.bench.stages import bench_stages
from tools.bench.table import headline, markdown, table_rows
from tools.bench.training import bench_augment, bench_input, bench_steps
from tools.bench.trainparts import load_train_data, train_config

BENCH_JSON = paths.REPORTS / "bench.json"
BENCH_MD = paths.REPORTS / "bench.md"

Measure = Callable[[str, Callable[[], Any]], Any]


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "load_average_at_start": os.getloadavg()[0],
    }


def check_inputs() -> None:
    """Every file bench reads, else an error naming the command that builds them all."""
    from siamese.zips import ZIPS

    needed = (*(paths.RAW / name for name in ZIPS), paths.IMAGES, paths.PIXELS, paths.SPLIT,
              paths.PAIRS, paths.TRIALS)
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise PipelineError(f"bench needs the data stages' outputs ({', '.join(missing)} "
                            f"missing); run `dvc repro {' '.join(DATA_TARGETS)}` first, from "
                            "the repository root")


def run(quick: bool = False, sizes: Sizes | None = None) -> dict[str, Any]:
    """`siamese bench [--quick]`: measure, print the table, write reports/bench.{json,md}."""
    from siamese.config import load_params

    sizes = sizes or (QUICK if quick else FULL)
    check_inputs()
    params = load_params(paths.PARAMS)
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "sizes": asdict(sizes), "section_s": {}}

    def measure(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        value = fn()
        results["section_s"][name] = round(time.perf_counter() - start, 1)
        return value

    with tempfile.TemporaryDirectory(prefix="siamese-bench-") as scratch:
        if sizes.stages:
            (Path(scratch) / "stages").mkdir()
            results["data_stages"] = measure(
                "data_stages", lambda: bench_stages(Path(scratch) / "stages"))
        if sizes.pipeline:
            noop = measure("dvc_noop", bench_dvc_noop)
            results.setdefault("data_stages", {})["no-op dvc repro"] = noop
        # train.py's image tensors live only in this call: freed before the evaluation's own
        results.update(measure_training(params, sizes, Path(scratch), measure))
    if sizes.probe_steps:
        results["cpu_settings"] = measure(
            "cpu_settings", lambda: bench_cpu_settings(sizes.probe_steps))
    results["evaluation"] = measure("evaluation", lambda: bench_eval(params, sizes))
    if sizes.pipeline:
        results["prefect"] = measure("prefect", lambda: bench_pipeline(count_stages(), noop))
        results["dvc_cache"] = dvc_cache_size()
    add_headlines(results)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    report(results)
    return results


def measure_training(params: dict[str, Any], sizes: Sizes, scratch: Path,
                     measure: Measure) -> dict[str, Any]:
    """The input path, the distortions and the training step, on train.py's data loaded once
    per image size (105, the profile's and each step's) and the PNGs unpacked in `scratch`."""
    profile = int(train_config(params).image_size)
    data_by_size = measure("load", lambda: {
        size: load_train_data(params, size)
        for size in sorted({105, profile, *(s[1] for s in sizes.steps)})})
    pngs = measure("unpack_pngs", lambda: unpack_pngs(scratch / "pngs"))
    return {
        "input_path": measure(
            "input_path", lambda: bench_input(params, sizes, data_by_size, pngs)),
        "augment": measure("augment", lambda: bench_augment(params, sizes, data_by_size)),
        "train_step": measure(
            "train_step", lambda: bench_steps(params, sizes, data_by_size, pngs)),
    }


def add_headlines(results: dict[str, Any]) -> None:
    """The headline keys (the module's docstring says what each compares)."""
    results["input_path_speedup"] = results["input_path"]["speedup"]
    results["input_path_speedup_same_size"] = results["input_path"]["speedup_same_size"]
    scored = {k.split()[0]: e for k, e in results["evaluation"].items() if isinstance(e, dict)}
    results["eval_speedup"] = scored.get("evaluation", {}).get("speedup")
    results["eval_speedup_lake"] = scored.get("lake", {}).get("speedup")


def report(results: dict[str, Any]) -> None:
    """Write reports/bench.json and reports/bench.md, and print the table."""
    table = headline(results) + "\n" + markdown(table_rows(results))
    write_json(results, BENCH_JSON)
    write_text(table, BENCH_MD)
    print(table)
