"""The CPU code paths and memory allocator of a process that computes weights or scores.

Set once, at the start of every `siamese` command (tools/cli.py), before torch is imported:
the libraries read these settings when they load, never after; `kernels` then chooses, in the
process, which library convolves.

Code paths (train.cpu_paths). The libraries pick their kernels by the CPU they find, and each
kernel rounds its sums in its own order, so the same seed gives other weights on another CPU:
- ATen's own kernels (elementwise ops, reductions, the optimiser, im2col): by the instructions,
  `ATEN_CPU_CAPABILITY`;
- MKL's matrix multiplies and vector maths (exp, log, sqrt): by the instructions and the vendor,
  `MKL_CBWR` (conditional numerical reproducibility). Its AVX2 branch is the same on every
  Intel CPU only: on an AMD CPU MKL still chooses other small-matrix, exp, log and sqrt
  kernels. Its COMPATIBLE branch (SSE2, without the approximate reciprocals whose bits differ
  between vendors) is the one Intel documents as the same on every vendor's CPU
  (docs/reproducibility.md);
- oneDNN's and NNPACK's convolutions: by the instructions (`ONEDNN_MAX_CPU_ISA`) and by more
  (their blocking may follow the CPU's cache sizes), which no setting fixes.
`avx2` pins ATen to its AVX2 kernels, which every x86-64 CPU since 2013-2015 runs, MKL to its
COMPATIBLE branch, and computes the convolutions and linear layers by siamese.gemm, whose
every sum is a chain of fused multiply-adds in a fixed order, the same bits whatever
instructions compute it (the thread count is pinned too, train.threads); oneDNN's ISA stays
pinned for any other op torch hands it. `native` leaves each library to pick the fastest
path for the CPU at hand.

Allocator. glibc's malloc hands large freed blocks back to the kernel and faults them in again
on the next step: a third of a training run's CPU time went to the kernel. `tune_allocator`
keeps them in the process (mallopt), which changes no computed value.
"""

import ctypes
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from siamese.errors import PipelineError

PATHS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_CBWR": "COMPATIBLE", "MKL_DYNAMIC": "FALSE"},
    "native": {},
}
SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "MKL_DYNAMIC")
DEFAULT = "avx2"
# The instruction sets that decide which kernels the libraries may pick.
FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
         "amx_tile", "amx_bf16")

# glibc mallopt parameters (malloc.h) and the values set: blocks up to 1 GiB come from the
# heap, which is neither trimmed nor grown by less than 512 MiB at a time.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
ALLOCATOR = {M_MMAP_THRESHOLD: 1 << 30, M_TRIM_THRESHOLD: 2**31 - 1, M_TOP_PAD: 512 << 20}


def pin_paths(choice: str) -> dict[str, str]:
    """Set the code paths of `choice` for this process; the settings in force afterwards.

    `native` removes nothing a user set in the environment; `avx2` overrides it.
    """
    if choice not in PATHS:
        raise ValueError(f"cpu paths must be one of {', '.join(PATHS)}, got {choice!r}")
    os.environ.update(PATHS[choice])
    return in_force()


def in_force() -> dict[str, str]:
    return {name: os.environ.get(name, "") for name in SETTINGS}


@contextmanager
def kernels(choice: str) -> Iterator[None]:
    """Within: the matrix-multiply kernels of `choice` (`avx2`: the network's convolutions and
    linear layers by siamese.gemm's pinned OpenBLAS kernel, on torch's thread count, and
    neither oneDNN nor NNPACK for anything else); the previous ones restored after."""
    import torch

    from siamese import gemm

    if choice == "native":
        yield
        return
    onednn, nnpack = torch._C._get_mkldnn_enabled(), torch._C._get_nnpack_enabled()
    torch._C._set_mkldnn_enabled(False)
    torch._C._set_nnpack_enabled(False)
    try:
        with gemm.pinned(torch.get_num_threads()):
            yield
    finally:
        torch._C._set_mkldnn_enabled(onednn)
        torch._C._set_nnpack_enabled(nnpack)


def tune_allocator() -> bool:
    """Keep freed memory in the process (glibc only); True if every setting took."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return all(libc.mallopt(option, value) == 1 for option, value in ALLOCATOR.items())


def cpu_model() -> str:
    for line in read_cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Of FLAGS, those this CPU has."""
    for line in read_cpuinfo().splitlines():
        if line.startswith("flags"):
            have = set(line.split(":", 1)[1].split())
            return [f for f in FLAGS if f in have]
    return []


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def unreproducible_reason(choice: str) -> str | None:
    """Why this machine cannot compute the `avx2` path's weights, or None if it can."""
    if choice != "avx2":
        return None
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"this is a {platform.machine()} CPU, not x86-64"
    if not {"avx2", "fma"} <= set(cpu_flags()):
        return f"this CPU ({cpu_model()}) has no AVX2/FMA"
    return None


def warnings(choice: str) -> list[str]:
    """One line for each reason this process's weights may differ from the committed ones."""
    lines = []
    if (reason := unreproducible_reason(choice)) is not None:
        lines.append(f"train.cpu_paths {choice}: {reason}; its weights will differ from the "
                     "committed ones")
    elif choice != "native" and (in_force() != PATHS[choice] or not kernels_in_force()):
        lines.append(f"train.cpu_paths {choice} is not in force in this process (it is set by "
                     "`siamese train` before torch loads); its weights may differ from the "
                     "committed ones")
    return lines


def kernels_in_force() -> bool:
    """Whether torch, if loaded, chose the `avx2` path's ATen kernels: it reads its setting when
    it loads, never after."""
    torch = sys.modules.get("torch")
    return torch is None or torch.backends.cpu.get_cpu_capability() == "AVX2"


def gemm_isa() -> str | None:
    """The instructions siamese.gemm's kernel runs on here (None where it is not built)."""
    from siamese import gemm

    try:
        return gemm.isa()
    except PipelineError:
        return None


def record(choice: str) -> dict[str, str]:
    """What a checkpoint records: the choice and the settings in force (the same on every
    machine that computes the same weights, so the checkpoint's bytes are too)."""
    return {"cpu_paths": choice, **in_force()}


def trained_with(meta: dict[str, Any]) -> str:
    """The train.cpu_paths a checkpoint's metadata records (the default where it records none),
    so that scoring convolves as training did."""
    recorded = meta.get("cpu_paths") or {}
    choice = recorded.get("cpu_paths") if isinstance(recorded, dict) else None
    return choice if choice in PATHS else DEFAULT


def describe(choice: str) -> dict[str, Any]:
    """The machine and the settings in force, for logs, the probe and `siamese bench`."""
    torch = sys.modules.get("torch")
    return {
        "cpu_paths": choice,
        "settings": in_force(),
        "aten_capability": torch.backends.cpu.get_cpu_capability() if torch else None,
        "onednn_convolutions": torch._C._get_mkldnn_enabled() if torch else None,
        "gemm_isa": gemm_isa(),
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "machine": platform.machine(),
    }
