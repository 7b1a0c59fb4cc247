"""Where, with which random streams and how deterministically each training process runs.

Under `torchrun --nproc_per_node N` every process (rank) joins one process group, trains on
its own device and draws from its own random streams; otherwise there is one process, rank 0
of a world of 1. The device is chosen first (train.device or `--device`), then the process
group: gloo when the ranks train on the CPU (also on a machine with GPUs), nccl on CUDA.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from siamese import cpu
from siamese.config import TrainConfig
from siamese.errors import PipelineError
from siamese.model import resolve_device

# cuBLAS reductions are deterministic only with a fixed workspace (CUDA docs, "Results
# reproducibility"); read when cuBLAS first starts, so set before any CUDA work.
CUBLAS_WORKSPACE = ":4096:8"


def setup_distributed(cfg: TrainConfig, override: str | None) -> tuple[torch.device, int, int]:
    """(this rank's device, rank, world size); joins the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else 0
    source = "siamese train --device" if override else "params.yaml: train.device"
    requested = resolve_device(override or cfg.device, source)
    gpus = torch.cuda.device_count() if requested.type == "cuda" else 0
    device, backend = rank_device(requested, local_rank, gpus, source)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        torch.cuda.set_device(device)
    if world <= 1:
        return device, 0, 1
    dist.init_process_group(backend=backend)
    return device, dist.get_rank(), world


def rank_device(requested: torch.device, local_rank: int, gpus: int,
                source: str = "train.device") -> tuple[torch.device, str]:
    """(the device of the rank with `local_rank`, its process-group backend).

    CPU: every rank on the CPU, gloo. CUDA: the rank's own GPU, nccl: plain `cuda` is
    cuda:LOCAL_RANK, `cuda:N` is cuda:(N + LOCAL_RANK) (the ranks' GPUs start at N).
    """
    if requested.type != "cuda":
        return requested, "gloo"
    index = (requested.index or 0) + local_rank
    if index >= gpus:
        raise PipelineError(
            f"{source}: {str(requested)!r} puts local rank {local_rank} on cuda:{index}, but "
            f"this machine has {gpus} GPU(s); start fewer processes or a lower cuda:N")
    return torch.device("cuda", index), "nccl"


@contextmanager
def deterministic(cfg: TrainConfig) -> Iterator[None]:
    """Run training as deterministically as the hardware allows; settings restored after.

    train.threads pins the intra-op thread count (CPU kernels split reductions by it);
    train.cpu_paths chooses the convolution kernels (siamese.cpu.kernels);
    deterministic algorithms are on, warn-only as some CUDA kernels have none, without their
    filling of every new tensor with NaN (a check for reads of memory never written, which no
    op of the network makes: a sixth of a CPU step). Inter-op threads are left alone: they
    run independent ops side by side and never split one, so they cannot change a result.
    """
    threads, algorithms = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    memory: Any = torch.utils.deterministic  # a module whose setting is a property
    filling = memory.fill_uninitialized_memory
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    memory.fill_uninitialized_memory = False
    try:
        with cpu.kernels(cfg.cpu_paths):
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        memory.fill_uninitialized_memory = filling


def seeds(seed: int, rank: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent per-rank streams: episodes / pairs (numpy) and distortions (torch)."""
    sampler_seed, augment_seed = np.random.SeedSequence([seed, rank]).generate_state(2)
    gen = torch.Generator().manual_seed(int(augment_seed))
    return np.random.default_rng(int(sampler_seed)), gen


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)
