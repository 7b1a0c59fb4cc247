"""The training input path, the distortions and the CPU training step, against the seed's.

`data_by_size` maps an image size to train.py's loaded data at that size and its setup
seconds ((data, seconds), from trainparts.load_train_data); `pngs` is the unpacked PNG folder.
"""

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from siamese import paths
from tools.bench.seed import seed_batch
from tools.bench.sizes import Sizes
from tools.bench.timing import durations, per_second, ratio
from tools.bench.trainparts import pair_flops, project_loader, step_runner, train_config


def image_files() -> np.ndarray:
    """Each image's PNG path (relative to the unpacked zips), indexed by image id."""
    return pd.read_parquet(paths.IMAGES, columns=["path"])["path"].to_numpy()


def bench_input(params: dict[str, Any], sizes: Sizes, data_by_size: dict,
                pngs: Path) -> dict[str, Any]:
    """Pairs per second delivered to the model, undistorted, same batch size: train.py's
    next_batch (packed pixels preloaded as one tensor at the training size, batches by
    indexing) at each size, against the seed's path (PNGs from disk to 105x105 tensors)."""
    files = image_files()
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
    out.update(project_input(params, sizes, data_by_size, seed, run_pairs))
    out["speedup"] = out[f"at {profile}"]["speedup"] if f"at {profile}" in out else None
    out["speedup_same_size"] = out["at 105"]["speedup"]
    return out


def project_input(params: dict[str, Any], sizes: Sizes, data_by_size: dict, seed: float,
                  run_pairs: int) -> dict[str, Any]:
    """{"at SIZE": ...}: train.py's next_batch at each size against the seed's pairs/s, alone
    and over one training run's `run_pairs` with the loader's setup included."""
    out: dict[str, Any] = {}
    rng, gen, cpu = np.random.default_rng(0), torch.Generator().manual_seed(0), torch.device("cpu")
    for size, (data, setup_s) in sorted(data_by_size.items()):
        cfg = train_config(params, image_size=size, objective="pairs", batch_pairs=sizes.batch,
                           augment_probability=0.0)
        load = project_loader(cfg, data, rng, gen, cpu)
        ours = per_second(sizes.batch, durations(load, sizes.project_batches))
        out[f"at {size}"] = {
            "pairs_per_s": round(ours, 1), "speedup": ratio(ours, seed),
            "setup_s": round(setup_s, 2),
            "speedup_one_run_with_setup": ratio(run_pairs / seed, setup_s + run_pairs / ours),
        }
    return out


def bench_augment(params: dict[str, Any], sizes: Sizes, data_by_size: dict) -> dict[str, Any]:
    """siamese.augment.distort alone on a batch of pairs, at each training size."""
    from siamese.augment import distort

    p = train_config(params).augment_probability
    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"probability": p}
    for size, (data, _) in data_by_size.items():
        x = data.images[: 2 * sizes.batch].contiguous()
        rate = per_second(sizes.batch, durations(partial(distort, x, gen, p),
                                                 sizes.augment_batches))
        out[f"pairs_per_s at {size}"] = round(rate, 1)
    return out


def bench_steps(params: dict[str, Any], sizes: Sizes, data_by_size: dict,
                pngs: Path) -> dict[str, Any]:
    """Pairs per second of a training step per (arch, size): the project's step (its loader and
    distortions) and the seed-style step (PNGs from disk for every pair, no distortion)."""
    files = image_files()
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

        ours_step, net, _ = step_runner(cfg, data)
        ours = per_second(batch, durations(ours_step, steps))
        seed_step, _, _ = step_runner(cfg, data, load=seed_load)
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
    cfg = train_config(params)
    data, _ = data_by_size[cfg.image_size]
    x, _ = project_loader(cfg, data, np.random.default_rng(0), torch.Generator().manual_seed(0),
                          torch.device("cpu"))()
    step, _, _ = step_runner(cfg, data)
    return {"arch": cfg.arch, "image_size": cfg.image_size, "objective": cfg.objective,
            "images_per_step": len(x), "steps": steps,
            "images_per_s": round(per_second(len(x), durations(step, steps)), 1)}
