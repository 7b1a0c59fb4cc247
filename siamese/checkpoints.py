"""The training state that makes a run resumable: models/checkpoints/last.pt.

Saved at every evaluation: the model, optimiser, progress, best-so-far, metric history,
every random state and, with train.ema, the average of the weights. A rerun resumes from it
only when its resume key matches: the same train params, data artifacts, process count and
code (every library module training runs, CODE).
"""

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from siamese import paths
from siamese.atomic import atomic_path
from siamese.distributed import unwrap
from siamese.errors import PipelineError
from siamese.model import read_checkpoint
from siamese.trainlog import say

LAST = paths.CHECKPOINTS / "last.pt"
LIBRARY = Path(paths.__file__).parent
# The code a resumed run must share with the run that saved: the stage, every project module
# it imports and the C source of siamese.gemm's kernel (tests/test_stage_deps_list_their_imports
# checks that this is the train stage's code deps in dvc.yaml, and those, what importing
# tasks/train.py loads).
CODE = tuple(LIBRARY.parent / name for name in (
    "tasks/train.py", "siamese/atomic.py", "siamese/augment.py", "siamese/checkpoints.py",
    "siamese/config.py", "siamese/cpu.py", "siamese/distributed.py", "siamese/episodes.py",
    "siamese/errors.py", "siamese/gemm.py", "siamese/_gemm.c", "siamese/images.py",
    "siamese/lockcheck.py",
    "siamese/model.py", "siamese/objectives.py", "siamese/paths.py", "siamese/scoring.py",
    "siamese/trainlog.py",
))


@dataclass
class Progress:
    step: int = 0
    best_accuracy: float = -1.0
    best_step: int = 0
    stale: int = 0  # evaluations since the best one
    finished: bool = False


def resume_key(digest: str, world_size: int) -> str:
    """What must be equal for a resume to continue the same computation: params, inputs, code."""
    h = hashlib.sha256(f"{digest} world={world_size}".encode())
    for path in (paths.PIXELS, paths.IMAGES, paths.SPLIT, paths.PAIRS, paths.TRIALS, *CODE):
        h.update(Path(path).read_bytes() if Path(path).exists() else b"-")
    return h.hexdigest()


def rng_states(rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    return {"numpy": rng.bit_generator.state, "augment": gen.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_states(state: dict[str, Any], rng: np.random.Generator, gen: torch.Generator) -> None:
    rng.bit_generator.state = state["numpy"]
    gen.set_state(state["augment"])
    torch.set_rng_state(state["torch"])


def save_last(path: Path, key: str, objective: nn.Module, optimizer: torch.optim.Optimizer,
              progress: Progress, states: list, best: dict, history: list,
              average: nn.Module | None = None) -> None:
    state = {
        "resume_key": key, "progress": asdict(progress), "rng": states, "history": history,
        "model": on_cpu(cast(nn.Module, unwrap(objective).net)),
        "optimizer": optimizer.state_dict(),
        "best": best, "ema": None if average is None else on_cpu(average),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def on_cpu(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


def load_last(path: Path, key: str) -> dict[str, Any] | None:
    """The saved state to resume from, or None (with the reason said) to start fresh."""
    if not path.exists():
        return None
    try:
        state = read_checkpoint(path)
    except PipelineError as e:
        say(f"{e}; starting fresh")
        return None
    if state.get("resume_key") != key:
        say(f"{path}: saved by a run with other params, data, code or process count; "
            "starting fresh")
        return None
    if state["progress"]["finished"]:
        say(f"{path}: that run had finished; starting fresh")
        return None
    return state
