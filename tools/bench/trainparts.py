"""The training's own pieces as the benchmarks drive them: its config, data, batches and step.

The one module of the package that imports the training code (always inside a function, so
that importing it loads none of it). tools/bench/gpu.py uses pair_flops and step_runner.
"""

import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

KOCH_FLOP_PER_PAIR = 10.9e9  # forward + backward of both twins at 105x105 (see pair_flops)

Loader = Callable[[], tuple[torch.Tensor, torch.Tensor]]


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


def project_loader(cfg, data, rng: np.random.Generator, gen: torch.Generator,
                   device: torch.device) -> Loader:
    """A call of train.py's next_batch, ready to time: (x, side) of one batch each call."""
    from siamese.episodes import next_batch

    return lambda: next_batch(cfg, data, rng, gen, device)


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
            cast(Any, net).embed(torch.zeros(1, 1, size, size))
    finally:
        for h in handles:
            h.remove()
    return 2 * 3 * total[0]


def step_runner(cfg, data, device: torch.device | None = None, load: Loader | None = None):
    """(step, net, optimizer): one optimisation step as train.py's loop does it (next_batch, the
    objective under bf16 autocast on CUDA, backward, optimizer step) on a fresh model; with
    `load`, the batch comes from that loader instead (the seed's way)."""
    from siamese.episodes import next_batch
    from siamese.model import build_model
    from siamese.objectives import EpisodeLoss, PairLoss, make_optimizer

    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.arch, cfg.image_size, **cfg.model_options())
    net = net.to(device, memory_format=torch.channels_last).train()  # type: ignore[call-overload]
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

    return step, net, optimizer
