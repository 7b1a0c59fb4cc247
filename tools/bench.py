"""`siamese bench`: how fast each part of the pipeline runs, against the seed notebook's way.

Every figure is measured in one run, on this machine; every ratio compares two figures of the
same run. The seed notebook's ways (the baselines) are written here, faithfully: it decodes
each PNG from disk with PIL for each pair of each batch, and scores an n-way trial by running
the whole twin on n tiled copies of the query. Everything else calls the project's own code.

Sections: the data stages on the real data (each in its own process; peak memory is that
process's peak resident set size from os.wait4, interpreter and imports included, with an
`imports only` process for the floor), the training input path, the CPU training step, the
evaluation's trial scoring, and the overhead of DVC and the Prefect flow when all is cached.
Writes reports/bench.json (every figure) and reports/bench.md (the table it prints).

Headline keys: `input_path_speedup`, pairs/s of train.py's loader at the training profile's
image size over the seed's PNG path at 105x105 (the input its network takes), and
`input_path_speedup_same_size`, both at 105x105; `eval_speedup`, trials/s of the evaluate
stage's scoring over the seed's tiling on the 20-way evaluation trials (`eval_speedup_lake`:
on Lake's runs, which share their images more). `--quick` shrinks the sizes after the data
stages; `sizes=TINY` (the smoke test) shrinks everything and leaves DVC and Prefect out.
"""

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from siamese import paths
from siamese.atomic import write_json, write_text
from siamese.errors import PipelineError

DATA_STAGES = ("index", "split", "pairs", "trials")  # fetch: see bench_stages
KOCH_FLOP_PER_PAIR = 10.9e9  # forward + backward of both twins at 105x105 (see pair_flops)
EVAL_SETS = ("evaluation", "lake")  # each at its largest n_way (20 on the real data)
BENCH_JSON = paths.REPORTS / "bench.json"
BENCH_MD = paths.REPORTS / "bench.md"


@dataclass(frozen=True)
class Sizes:
    """How much of each measurement to do; FULL, QUICK and TINY below."""

    batch: int  # pairs per batch, both loaders
    project_batches: int  # batches through this project's loader
    seed_batches: int  # batches through the seed's PNG loader
    augment_batches: int
    steps: tuple[tuple[str, int, int, int], ...]  # (arch, image_size, batch, timed steps)
    seed_trials: int  # trials per set scored the seed's way (the project scores them all)
    stages: bool = True  # run the data stages on the real data
    pipeline: bool = True  # no-op `dvc repro` and the cached Prefect flow


FULL = Sizes(batch=128, project_batches=300, seed_batches=20, augment_batches=30,
             steps=(("compact", 28, 128, 10), ("koch", 105, 8, 3)), seed_trials=200)
QUICK = Sizes(batch=128, project_batches=60, seed_batches=5, augment_batches=8,
              steps=(("compact", 28, 128, 5), ("koch", 105, 4, 2)), seed_trials=50)
TINY = Sizes(batch=16, project_batches=4, seed_batches=2, augment_batches=2,
             steps=(("compact", 28, 16, 1),), seed_trials=5, pipeline=False)


# --- timing helpers -------------------------------------------------------------------------


def durations(fn: Callable[[], Any], calls: int, warmup: int = 1) -> list[float]:
    """Wall seconds of each of `calls` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(calls, 1)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def per_second(items: float, times: list[float]) -> float:
    """Items per second of one call, from the median call (robust to a busy machine)."""
    return items / max(statistics.median(times), 1e-9)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 2)


def run_child(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run a command; its wall seconds, exit status and peak RSS (MiB, from os.wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = output.decode(errors="replace")[-2000:]
        raise PipelineError(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return {"seconds": round(seconds, 3), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def child_env() -> dict[str, str]:
    """The environment of a child: this interpreter's bin first on PATH (dvc calls `siamese`)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


# --- 1. data stages -------------------------------------------------------------------------


def bench_stages(scratch: Path) -> dict[str, Any]:
    """Each data stage as `siamese <stage>` in its own process, on a scratch copy of the outputs.

    The scratch folder holds a copy of params.yaml and the zips: fetched again from a local
    source (OMNIGLOT_SOURCE, or fetch.source when it is a folder), which times fetch too, or
    else linked to the project's data/raw, so the project's own artifacts are never touched.
    """
    from siamese.config import FetchConfig, load_params
    from tasks.fetch import is_url

    shutil.copy(paths.PARAMS, scratch / paths.PARAMS)
    env = child_env()
    imports = "import tasks.index, tasks.split, tasks.pairs, tasks.trials, tools.cli"
    out: dict[str, Any] = {"imports only": run_child([sys.executable, "-c", imports], scratch, env)}
    source = FetchConfig.parse(load_params(paths.PARAMS)).source
    if is_url(source):
        (scratch / paths.RAW).parent.mkdir(parents=True, exist_ok=True)
        (scratch / paths.RAW).symlink_to(paths.RAW.resolve(), target_is_directory=True)
        out["fetch"] = {"skipped": "the source is a URL; set OMNIGLOT_SOURCE to a folder"}
    else:
        out["fetch"] = run_child([sys.executable, "-m", "tools.cli", "fetch"], scratch,
                                 {**env, "OMNIGLOT_SOURCE": str(Path(source).resolve())})
    outputs = {"index": paths.IMAGES, "split": paths.SPLIT, "pairs": paths.PAIRS,
               "trials": paths.TRIALS}
    for stage in DATA_STAGES:
        entry = run_child([sys.executable, "-m", "tools.cli", stage], scratch, env)
        rows = len(pd.read_parquet(scratch / outputs[stage], columns=[]))
        unit = "images" if stage == "index" else "rows"
        entry.update({unit: rows, f"{unit}_per_s": round(rows / entry["seconds"], 1)})
        out[stage] = entry
    out["index: pack+write"] = bench_pack(scratch)
    return out


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


# --- 2. training input path -----------------------------------------------------------------


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


def train_config(params: dict[str, Any], **overrides: Any):
    """The train config from params.yaml with `overrides` (arch, image_size, objective, ...)."""
    from siamese.config import TrainConfig

    sec = dict(params.get("train", {}), **overrides)
    return TrainConfig.parse({**params, "train": sec})


def load_train_data(params: dict[str, Any], size: int):
    """train.py's own data loading at `size` (all images as one tensor); (data, seconds)."""
    from siamese.episodes import load_data

    cfg = train_config(params, image_size=size, objective="pairs")
    start = time.perf_counter()
    data = load_data(cfg, torch.device("cpu"))
    return data, time.perf_counter() - start


def bench_input(params: dict[str, Any], sizes: Sizes, data_by_size: dict,
                pngs: Path) -> dict[str, Any]:
    """Pairs per second delivered to the model, undistorted, same batch size: train.py's
    next_batch (packed pixels preloaded as one tensor at the training size, batches by
    indexing) at each size, against the seed's path (PNGs from disk to 105x105 tensors)."""
    from siamese.episodes import next_batch

    files = pd.read_parquet(paths.IMAGES, columns=["path"])["path"].to_numpy()
    data, _ = data_by_size[105]
    pairs = data.pairs[np.random.default_rng(0).permutation(len(data.pairs))]
    batches = iter([pairs[i * sizes.batch:(i + 1) * sizes.batch]
                    for i in range(sizes.seed_batches + 1)])

    def seed_step() -> None:
        rows = next(batches)
        seed_batch(pngs, files, rows[:, 0], rows[:, 1], 105)

    seed = per_second(sizes.batch, durations(seed_step, sizes.seed_batches))
    rows = pairs[: sizes.batch]
    x1, x2 = seed_batch(pngs, files, rows[:, 0], rows[:, 1], 105)
    ids = torch.from_numpy(np.concatenate([rows[:, 0], rows[:, 1]]))
    profile = int(train_config(params).image_size)
    run_pairs = int(train_config(params).steps) * sizes.batch  # what one training run takes
    out: dict[str, Any] = {
        "batch": sizes.batch, "seed_image_size": 105, "seed_pairs_per_s": round(seed, 1),
        "profile_image_size": profile, "run_pairs": run_pairs,
        "same_tensors_at_105": bool(torch.equal(torch.cat([x1, x2]), data.images[ids])),
    }
    rng, gen, cpu = np.random.default_rng(0), torch.Generator().manual_seed(0), torch.device("cpu")
    for size, (data, setup_s) in sorted(data_by_size.items()):
        cfg = train_config(params, image_size=size, objective="pairs", batch_pairs=sizes.batch,
                           augment_probability=0.0)
        ours = per_second(sizes.batch, durations(
            lambda cfg=cfg, data=data: next_batch(cfg, data, rng, gen, cpu), sizes.project_batches))
        out[f"at {size}"] = {
            "pairs_per_s": round(ours, 1), "speedup": ratio(ours, seed),
            "setup_s": round(setup_s, 2),
            "speedup_one_run_with_setup": ratio(run_pairs / seed, setup_s + run_pairs / ours),
        }
    out["speedup"] = out[f"at {profile}"]["speedup"] if f"at {profile}" in out else None
    out["speedup_same_size"] = out["at 105"]["speedup"]
    return out


def bench_augment(params: dict[str, Any], sizes: Sizes, data_by_size: dict) -> dict[str, Any]:
    """siamese.augment.distort alone on a batch of pairs, at each training size."""
    from siamese.augment import distort

    p = train_config(params).augment_probability
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"probability": p}
    for size, (data, _) in data_by_size.items():
        x = data.images[: 2 * sizes.batch].contiguous()
        rate = per_second(sizes.batch, durations(lambda x=x: distort(x, gen, p),
                                                 sizes.augment_batches))
        out[f"pairs_per_s at {size}"] = round(rate, 1)
    return out


# --- 3. training step -----------------------------------------------------------------------


def pair_flops(net: torch.nn.Module, size: int) -> float:
    """FLOPs of one training pair: 2 images x (forward + backward = 3 forwards) of the
    embedding net's convolutions and linear layers (multiply-adds count 2)."""
    total = [0.0]

    def hook(module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total[0] += 2.0 * output[0].numel() * k
        elif isinstance(module, torch.nn.Linear):
            total[0] += 2.0 * module.in_features * module.out_features

    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            net.embed(torch.zeros(1, 1, size, size))
    finally:
        for h in handles:
            h.remove()
    return 2 * 3 * total[0]


Loader = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def step_runner(cfg, data, device: torch.device | None = None, load: Loader | None = None):
    """(step, net): one optimisation step as train.py's loop does it (next_batch, the
    objective under bf16 autocast on CUDA, backward, optimizer step) on a fresh model; with
    `load`, the batch comes from that loader instead (the seed's way)."""
    from siamese.episodes import next_batch
    from siamese.model import build_model
    from siamese.objectives import EpisodeLoss, PairLoss, make_optimizer

    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.arch, cfg.image_size, **cfg.model_options())
    net = net.to(device, memory_format=torch.channels_last).train()
    objective = (EpisodeLoss if cfg.objective == "episodes" else PairLoss)(net)
    optimizer = make_optimizer(cfg, net)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)

    def step() -> None:
        x, side = load() if load else next_batch(cfg, data, rng, gen, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = objective(x, side)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, net


def bench_steps(params: dict[str, Any], sizes: Sizes, data_by_size: dict,
                pngs: Path) -> dict[str, Any]:
    """Pairs per second of a training step per (arch, size): the project's step (its loader and
    distortions) and the seed-style step (PNGs from disk for every pair, no distortion)."""
    files = pd.read_parquet(paths.IMAGES, columns=["path"])["path"].to_numpy()
    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    for arch, size, batch, steps in sizes.steps:
        data, _ = data_by_size[size]
        cfg = train_config(params, arch=arch, image_size=size, objective="pairs",
                           batch_pairs=batch)
        pairs = data.pairs[np.random.default_rng(1).permutation(len(data.pairs))]
        chunks = iter([pairs[i * batch:(i + 1) * batch] for i in range(steps + 1)])

        def seed_load(size=size, chunks=chunks) -> tuple[torch.Tensor, torch.Tensor]:
            rows = next(chunks)
            x1, x2 = seed_batch(pngs, files, rows[:, 0], rows[:, 1], size)
            return torch.cat([x1, x2]), torch.from_numpy(rows[:, 2])

        ours_step, net = step_runner(cfg, data)
        ours = per_second(batch, durations(ours_step, steps))
        seed_step, _ = step_runner(cfg, data, load=seed_load)
        seed = per_second(batch, durations(seed_step, steps))
        flops = pair_flops(net, size)
        out[f"{arch} at {size}"] = {
            "batch": batch, "steps": steps, "pairs_per_s": round(ours, 2),
            "seed_pairs_per_s": round(seed, 2), "speedup": ratio(ours, seed),
            "gflop_per_pair": round(flops / 1e9, 3),
            "gflop_per_s": round(ours * flops / 1e9, 1),
        }
    out["profile"] = profile_step(params, data_by_size, sizes.steps[0][3])
    return out


def profile_step(params: dict[str, Any], data_by_size: dict, steps: int) -> dict[str, Any]:
    """Images per second of the training profile's own step (params.yaml's train section)."""
    from siamese.episodes import next_batch

    cfg = train_config(params)
    data, _ = data_by_size[cfg.image_size]
    x, _ = next_batch(cfg, data, np.random.default_rng(0), torch.Generator().manual_seed(0),
                      torch.device("cpu"))
    step, _ = step_runner(cfg, data)
    return {"arch": cfg.arch, "image_size": cfg.image_size, "objective": cfg.objective,
            "images_per_step": len(x), "steps": steps,
            "images_per_s": round(per_second(len(x), durations(step, steps)), 1)}


# --- 4. evaluation --------------------------------------------------------------------------


class EmbedCounter:
    """Counts the images that pass through the embedding net (one 'network pass' each)."""

    def __init__(self, net: torch.nn.Module):
        self.net = net
        self.images = 0

    def __enter__(self) -> "EmbedCounter":
        embed = self.net.embed

        def counted(x: torch.Tensor) -> torch.Tensor:
            self.images += len(x)
            return embed(x)

        self.net.embed = counted
        return self

    def __exit__(self, *exc: object) -> None:
        del self.net.embed


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


def project_trial_scores(model, pixels: np.ndarray, trials: pd.DataFrame,
                         batch_size: int) -> np.ndarray:
    """The evaluate stage's scoring: each image the trials name embedded once (embedding_table),
    then siamese.scoring.trial_scores runs the head alone on the table."""
    from siamese.scoring import trial_scores
    from tasks.evaluate import EmbeddingTable, embedding_table, needed_ids

    no_pairs = pd.DataFrame({"left_id": [], "right_id": []}, dtype="int64")
    table = embedding_table(model, pixels, needed_ids(trials, no_pairs), "cpu", batch_size)
    return trial_scores(EmbeddingTable(model), table, trials, "cpu", batch_size=len(table))


def compare_scoring(model, pixels: np.ndarray, trials: pd.DataFrame, seed_trials: int,
                    batch_size: int) -> dict[str, Any]:
    """The evaluate stage's scoring against the seed's tiling, same model, same trials."""
    net = getattr(model, "module", model)
    project_trial_scores(model, pixels, trials.iloc[:2], batch_size)  # warm up both paths
    seed_trial_scores(model, pixels, trials.iloc[:2])
    with EmbedCounter(net) as counter:
        start = time.perf_counter()
        ours = project_trial_scores(model, pixels, trials, batch_size)
        ours_s = time.perf_counter() - start
    ours_passes = counter.images
    subset = trials.iloc[:seed_trials]
    with EmbedCounter(net) as counter:
        start = time.perf_counter()
        seed = seed_trial_scores(model, pixels, subset)
        seed_s = time.perf_counter() - start
    ours_rate, seed_rate = len(trials) / ours_s, len(subset) / seed_s
    same = bool(np.array_equal(ours[: len(subset)].argmax(1), seed.argmax(1)))
    return {
        "trials": len(trials), "seed_trials": len(subset),
        "trials_per_s": round(ours_rate, 1), "seed_trials_per_s": round(seed_rate, 1),
        "passes_per_trial": round(ours_passes / len(trials), 2),
        "seed_passes_per_trial": round(counter.images / len(subset), 2),
        "speedup": ratio(ours_rate, seed_rate), "same_predictions": same,
        "max_abs_logit_diff": float(np.abs(ours[: len(subset)] - seed).max()),
    }


def eval_model(params: dict[str, Any]):
    """The trained model if there is one, else a fresh one of the train profile (same speed)."""
    from siamese.model import build_model, load_model

    if paths.MODEL.is_file():
        model, meta = load_model(paths.MODEL, "cpu")
        return model, f"{paths.MODEL} ({meta['arch']} at {meta['image_size']})"
    cfg = train_config(params)
    torch.manual_seed(0)
    model = build_model(cfg.arch, cfg.image_size).eval()
    return model, f"untrained {model.arch} at {model.image_size} (no {paths.MODEL} yet)"


def bench_eval(params: dict[str, Any], sizes: Sizes) -> dict[str, Any]:
    """The evaluate stage's trial scoring against the seed's, per trial set at its largest n."""
    from siamese.config import EvaluateConfig
    from siamese.images import load_pixels

    model, which = eval_model(params)
    pixels = load_pixels(paths.PIXELS)
    trials = pd.read_parquet(paths.TRIALS)
    batch_size = EvaluateConfig.parse(params).batch_size
    out: dict[str, Any] = {"model": which, "batch_size": batch_size}
    for trial_set in EVAL_SETS:
        chosen = trials[trials["trial_set"] == trial_set]
        if len(chosen):
            n_way = int(chosen["n_way"].max())
            group = chosen[chosen["n_way"] == n_way].sort_values("trial_id")
            out[f"{trial_set} {n_way}-way"] = compare_scoring(model, pixels, group,
                                                              sizes.seed_trials, batch_size)
    return out


# --- 5. DVC and Prefect when everything is cached ------------------------------------------


def pipeline_env() -> dict[str, str]:
    """As the Makefile sets it: Prefect's home in the project, its temporary server, offline."""
    env = child_env()
    env.setdefault("PREFECT_HOME", str(Path(".prefect").resolve()))
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    return env


def dvc_clean(env: dict[str, str], *targets: str) -> str | None:
    """None when `dvc status` finds the targets (with their upstream stages) up to date, else
    why not: a no-op repro is only timed when it cannot run a stage."""
    dvc = [sys.executable, "-m", "dvc"]
    proc = subprocess.run([*dvc, "status", "--json", "--with-deps", *targets], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return f"dvc status failed: {proc.stderr.strip()[-300:]}"
    text = proc.stdout.strip()
    if text not in ("{}", ""):
        changed = ", ".join(sorted(json.loads(text)))
        return f"not up to date ({changed}); run `dvc repro` first"
    return None


def bench_dvc_noop() -> dict[str, Any]:
    """A no-op `dvc repro`: of the whole pipeline when it is all up to date, else of the data
    stages (`dvc repro trials`) when they are; never a repro that would run a stage."""
    env = pipeline_env()
    targets: list[str] = []
    why = dvc_clean(env)
    if why:
        targets = ["trials"]
        if dvc_clean(env, *targets):
            return {"skipped": why}
    try:
        entry = run_child([sys.executable, "-m", "dvc", "repro", *targets], Path("."), env)
    except PipelineError as e:  # e.g. another dvc process holds the lock
        return {"skipped": str(e)[-300:]}
    return {"targets": " ".join(targets) or "all stages", **entry,
            **({"whole_pipeline": why} if why else {})}


def bench_pipeline(stages: int, noop: dict[str, Any]) -> dict[str, Any]:
    """A fully cached `siamese run` (one Prefect task per stage) against Prefect's own start
    (an empty flow run in a process of its own, on the same temporary server) and against the
    no-op `dvc repro` of the whole pipeline (bench_dvc_noop)."""
    if noop.get("targets") != "all stages":
        return {"skipped": noop.get("whole_pipeline") or noop.get("skipped", "")}
    empty = "from prefect import flow\nflow(name='empty')(lambda: None)()"
    try:
        start = run_child([sys.executable, "-c", empty], Path("."), pipeline_env())
        flow = run_child([sys.executable, "-m", "tools.cli", "run"], Path("."), pipeline_env())
    except PipelineError as e:
        return {"skipped": str(e)[-300:]}
    return {
        "stages": stages, "dvc_repro_noop_s": noop["seconds"], "cached_flow_s": flow["seconds"],
        "prefect_empty_flow_s": start["seconds"], "flow_peak_rss_mib": flow["peak_rss_mib"],
        "overhead_per_stage_s": round((flow["seconds"] - start["seconds"]) / stages, 2),
        "flow_over_dvc_noop": ratio(flow["seconds"], noop["seconds"]),
    }


def dvc_cache_size() -> dict[str, Any]:
    """Files and bytes held by the project's DVC cache (.dvc/cache)."""
    files = [p for p in Path(".dvc/cache").rglob("*") if p.is_file()]
    return {"files": len(files), "mib": round(sum(p.stat().st_size for p in files) / 2**20, 1)}


# --- the run --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "load_average_at_start": os.getloadavg()[0],
    }


def check_inputs() -> None:
    from siamese.zips import ZIPS

    needed = (*(paths.RAW / name for name in ZIPS), paths.IMAGES, paths.PIXELS, paths.SPLIT,
              paths.PAIRS, paths.TRIALS)
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise PipelineError(f"bench needs the data stages' outputs ({', '.join(missing)} "
                            "missing); run `dvc repro pairs trials` first, from the repository "
                            "root")


def count_stages() -> int:
    import yaml

    return len(yaml.safe_load(Path("dvc.yaml").read_text())["stages"])


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
        profile = int(train_config(params).image_size)
        data_by_size = measure("load", lambda: {
            size: load_train_data(params, size)
            for size in sorted({105, profile, *(s[1] for s in sizes.steps)})})
        pngs = measure("unpack_pngs", lambda: unpack_pngs(Path(scratch) / "pngs"))
        results["input_path"] = measure(
            "input_path", lambda: bench_input(params, sizes, data_by_size, pngs))
        results["augment"] = measure(
            "augment", lambda: bench_augment(params, sizes, data_by_size))
        results["train_step"] = measure(
            "train_step", lambda: bench_steps(params, sizes, data_by_size, pngs))
    data_by_size.clear()  # free the image tensors before the evaluation loads its own
    results["evaluation"] = measure("evaluation", lambda: bench_eval(params, sizes))
    if sizes.pipeline:
        results["prefect"] = measure("prefect", lambda: bench_pipeline(count_stages(), noop))
        results["dvc_cache"] = dvc_cache_size()
    results["input_path_speedup"] = results["input_path"]["speedup"]
    results["input_path_speedup_same_size"] = results["input_path"]["speedup_same_size"]
    scored = {k.split()[0]: e for k, e in results["evaluation"].items() if isinstance(e, dict)}
    results["eval_speedup"] = scored.get("evaluation", {}).get("speedup")
    results["eval_speedup_lake"] = scored.get("lake", {}).get("speedup")
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    table = headline(results) + "\n" + markdown(table_rows(results))
    write_json(results, BENCH_JSON)
    write_text(table, BENCH_MD)
    print(table)
    return results


# --- the table ------------------------------------------------------------------------------


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        value = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value} {unit}".strip()


def stage_rows(stages: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for name, e in stages.items():
        if "skipped" in e:
            rows.append(("data", name, "skipped: " + e["skipped"], "", ""))
            continue
        rate = next(((k, v) for k, v in e.items() if k.endswith("_per_s")), None)
        parts = [fmt(rate[1], rate[0].replace("_per_s", "/s"))] if rate else []
        parts.append(fmt(e["seconds"], "s"))
        if "peak_rss_mib" in e:
            parts.append(f"peak RSS {fmt(e['peak_rss_mib'], 'MiB')}")
        target = f" ({e['targets']})" if "targets" in e else ""
        rows.append(("data", name + target, ", ".join(parts), "", ""))
    return rows


def table_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    """(part, measure, this project, seed notebook, ratio) for every headline figure."""
    rows = stage_rows(r.get("data_stages", {}))
    i = r["input_path"]
    for key, e in i.items():
        if isinstance(e, dict):
            rows.append(("input path", f"pairs/s, batch {i['batch']}: project {key} (setup "
                         f"{fmt(e['setup_s'], 's')}), seed at {i['seed_image_size']}",
                         fmt(e["pairs_per_s"]), fmt(i["seed_pairs_per_s"]), fmt(e["speedup"], "x")))
            rows.append(("input path", f"one training run's {i['run_pairs']:,} pairs {key}, "
                         "setup included", "", "", fmt(e["speedup_one_run_with_setup"], "x")))
    for key, value in r["augment"].items():
        if key.startswith("pairs_per_s"):
            rows.append(("augment", f"distort alone, pairs/s {key.split(' ', 1)[1]}",
                         fmt(value), "", ""))
    steps = r["train_step"]
    for key, e in steps.items():
        if isinstance(e, dict) and key != "profile":
            rows.append(("train step", f"{key}, batch {e['batch']}, {steps['threads']} threads, "
                         f"pairs/s ({fmt(e['gflop_per_s'], 'GFLOP/s')})",
                         fmt(e["pairs_per_s"]), fmt(e["seed_pairs_per_s"]), fmt(e["speedup"], "x")))
    pr = steps["profile"]
    rows.append(("train step", f"the profile's own step: {pr['arch']} at {pr['image_size']}, "
                 f"{pr['objective']}, {pr['images_per_step']} images/step, images/s",
                 fmt(pr["images_per_s"]), "", ""))
    ev = r["evaluation"]
    for key, e in ev.items():
        if isinstance(e, dict):
            rows.append(("evaluation", f"{key} trials/s (same predictions: "
                         f"{e['same_predictions']})", fmt(e["trials_per_s"]),
                         fmt(e["seed_trials_per_s"]), fmt(e["speedup"], "x")))
            rows.append(("evaluation", f"{key} network passes per trial",
                         fmt(e["passes_per_trial"]), fmt(e["seed_passes_per_trial"]), ""))
    p = r.get("prefect")
    if p and "skipped" in p:
        rows.append(("prefect", "cached flow", "skipped: " + p["skipped"], "", ""))
    elif p:
        both = f"{fmt(p['cached_flow_s'], 's')} vs {fmt(p['dvc_repro_noop_s'], 's')}"
        rows.append(("prefect", f"cached `siamese run` vs no-op `dvc repro` ({p['stages']} "
                     "stages)", both, "", ""))
        rows.append(("prefect", "empty flow run (Prefect's own start)",
                     fmt(p["prefect_empty_flow_s"], "s"), "", ""))
        rows.append(("prefect", "overhead per stage over Prefect's own start",
                     fmt(p["overhead_per_stage_s"], "s"), "", ""))
        rows.append(("prefect", "cached `siamese run` / no-op `dvc repro`",
                     fmt(p["flow_over_dvc_noop"], "x"), "", ""))
    if "dvc_cache" in r:
        c = r["dvc_cache"]
        rows.append(("dvc", "DVC cache", f"{c['files']:,} files, {fmt(c['mib'], 'MiB')}", "", ""))
    return rows


def headline(r: dict[str, Any]) -> str:
    """Where and how it was measured: a busy machine (other work on its cores) makes the
    multi-threaded paths wait for descheduled threads, so say so next to the figures."""
    m = r["machine"]
    busy = max(m["load_average_at_start"], m["load_average_at_end"]) > 0.5 * (m["cpus"] or 1)
    return (f"siamese bench: {m['cpus']} CPUs, {m['torch_threads']} torch threads, torch "
            f"{m['torch']}; load average {m['load_average_at_start']:.1f} -> "
            f"{m['load_average_at_end']:.1f}{' (a busy machine: noisy figures)' if busy else ''}"
            f"; {r['seconds']} s. input_path_speedup {r['input_path_speedup']}, "
            f"eval_speedup {r['eval_speedup']}.\n")


def markdown(rows: list[tuple[str, ...]]) -> str:
    header = ("part", "measure", "this project", "seed notebook", "ratio")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
