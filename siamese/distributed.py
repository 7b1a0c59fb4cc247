"""Where and with which random streams each training process runs.

Under `torchrun --nproc_per_node N` every process (rank) joins one process group, trains on
its own device (plain `cuda` is the rank's GPU) and draws from its own random streams;
otherwise there is one process, rank 0 of a world of 1.
"""

import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from siamese.config import TrainConfig
from siamese.model import resolve_device


def setup_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return dist.get_rank(), world, local_rank


def training_device(cfg: TrainConfig, override: str | None, local_rank: int) -> torch.device:
    """train.device or the --device override; under torchrun, plain `cuda` is this rank's GPU."""
    source = "siamese train --device" if override else "params.yaml: train.device"
    device = resolve_device(override or cfg.device, source)
    if device.type == "cuda" and device.index is None and dist.is_initialized():
        device = torch.device("cuda", local_rank)
    return device


def seeds(seed: int, rank: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent per-rank streams: episodes / pairs (numpy) and distortions (torch)."""
    sampler_seed, augment_seed = np.random.SeedSequence([seed, rank]).generate_state(2)
    gen = torch.Generator().manual_seed(int(augment_seed))
    return np.random.default_rng(int(sampler_seed)), gen


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)
