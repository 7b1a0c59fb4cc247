"""Stage `train`: fit the twin network, keep the checkpoint that is best on validation trials.

Objectives (train.objective):
- pairs: binary cross-entropy on the train pairs of pairs.parquet (Koch's objective).
- episodes: per step, `episode_alphabets` alphabets x up to `episode_characters` characters x
  2 distinct drawers; each query is scored against every support of its alphabet with the
  Koch head and a softmax cross-entropy picks its own character, in both directions. This is
  the one-shot test's own form, and on a CPU it beats pairs by ~25 points (notes).

The run is reproducible and resumable: every random draw comes from generators seeded from
train.seed whose states are saved, with the model, optimiser and best-so-far, in
models/checkpoints/last.pt at every evaluation. A killed run, rerun with the same params, data
and code, resumes from there and ends with the same weights as an uninterrupted run (CPU).
Under `torchrun --nproc_per_node N` it trains with DistributedDataParallel; each rank draws
its own episodes, rank 0 evaluates, logs and writes checkpoints.
"""

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from siamese import paths
from siamese.atomic import atomic_path, write_json
from siamese.augment import distort
from siamese.errors import PipelineError
from siamese.images import load_pixels, to_tensor
from siamese.model import (
    SiameseNet,
    build_model,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
)
from siamese.params import check_range, get_choice, get_float, get_int, section
from siamese.scoring import credit, embed_images, trial_scores

LAST = paths.CHECKPOINTS / "last.pt"
CURVES = paths.TRAIN_LIVE / "curves.png"
JSON_LOG = paths.TRAIN_LIVE / "log.jsonl"
LIBRARY = Path(paths.__file__).parent
CODE = (Path(__file__), LIBRARY / "model.py", LIBRARY / "augment.py")
LOG_POINTS = 5  # loss / lr log points per evaluation interval


@dataclass(frozen=True)
class Config:
    arch: str
    image_size: int
    objective: str
    device: str
    seed: int
    steps: int
    max_minutes: float
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float | tuple[float, ...]
    schedule: str
    batch_pairs: int
    episode_alphabets: int
    episode_characters: int
    rotations: int
    augment_probability: float
    eval_every: int
    patience: int
    threads: int
    width: int
    embedding: int
    init: str

    def model_options(self) -> dict[str, Any]:
        if self.arch == "compact":
            return {"width": self.width, "embedding": self.embedding, "init": self.init}
        return {"init": self.init}


def parse_config(params: dict[str, Any]) -> Config:
    """Validate params.yaml's `train` section; every bad value is a PipelineError naming it."""
    sec = section(params, "train")

    def positive(key: str) -> float:
        value = get_float(sec, key, f"train.{key}")
        if value <= 0:
            raise PipelineError(f"params.yaml: train.{key} must be > 0, got {value}")
        return value

    return Config(
        arch=get_choice(sec, "arch", "train.arch", ("koch", "compact")),
        image_size=get_int(sec, "image_size", "train.image_size", lo=8, hi=105),
        objective=get_choice(sec, "objective", "train.objective", ("episodes", "pairs")),
        device=get_device(sec, "device", "train.device"),
        seed=get_int(sec, "seed", "train.seed", lo=0),
        steps=get_int(sec, "steps", "train.steps", lo=1),
        max_minutes=get_float(sec, "max_minutes", "train.max_minutes", lo=0),
        optimizer=get_choice(sec, "optimizer", "train.optimizer", ("adam", "sgd")),
        lr=positive("lr"),
        momentum=get_float(sec, "momentum", "train.momentum", lo=0, hi=0.999),
        weight_decay=weight_decay(sec),
        schedule=get_choice(sec, "schedule", "train.schedule", ("cosine", "constant")),
        batch_pairs=get_int(sec, "batch_pairs", "train.batch_pairs", lo=2),
        episode_alphabets=get_int(sec, "episode_alphabets", "train.episode_alphabets", lo=1),
        episode_characters=get_int(sec, "episode_characters", "train.episode_characters", lo=2),
        rotations=get_int(sec, "rotations", "train.rotations", lo=1, hi=4),
        augment_probability=get_float(sec, "augment_probability", "train.augment_probability",
                                      lo=0, hi=1),
        eval_every=get_int(sec, "eval_every", "train.eval_every", lo=1),
        patience=get_int(sec, "patience", "train.patience", lo=0),
        threads=get_int(sec, "threads", "train.threads", lo=0),
        width=get_int(sec, "width", "train.width", lo=1),
        embedding=get_int(sec, "embedding", "train.embedding", lo=1),
        init=get_choice(sec, "init", "train.init", ("default", "koch")),
    )


def get_device(sec: dict[str, Any], key: str, name: str) -> str:
    value = sec.get(key)
    if not isinstance(value, str) or not (value in ("auto", "cpu") or value.startswith("cuda")):
        raise PipelineError(f"params.yaml: {name} must be auto, cpu or cuda[:N]; got {value!r}")
    return value


def weight_decay(sec: dict[str, Any]) -> float | tuple[float, ...]:
    """A number (L2 on every parameter) or a list: one L2 per conv/linear layer (Koch)."""
    value = sec.get("weight_decay")
    if isinstance(value, list):
        for v in value:
            check_range(float(v), "train.weight_decay[]", 0, None)
        return tuple(float(v) for v in value)
    return get_float(sec, "weight_decay", "train.weight_decay", lo=0)


def train_params_digest(params: dict[str, Any]) -> str:
    """sha256 of the train section (canonical JSON): what a checkpoint was trained with."""
    text = json.dumps(section(params, "train"), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def resume_key(digest: str, world_size: int) -> str:
    """What must be equal for a resume to continue the same computation: params, inputs, code."""
    h = hashlib.sha256(f"{digest} world={world_size}".encode())
    for path in (paths.PIXELS, paths.IMAGES, paths.SPLIT, paths.PAIRS, paths.TRIALS, *CODE):
        h.update(Path(path).read_bytes() if Path(path).exists() else b"-")
    return h.hexdigest()


# ---------------------------------------------------------------- data


@dataclass
class Data:
    images: torch.Tensor               # [N, 1, S, S] on the training device, by image_id
    alphabets: list[list[np.ndarray]]  # per train alphabet, per character: its train image ids
    pairs: np.ndarray                  # [P, 3] left_id, right_id, same (objective pairs)
    valid: pd.DataFrame                # valid trials of the largest n_way (20)


def load_data(cfg: Config, device: torch.device) -> Data:
    pixels = load_pixels(paths.PIXELS)
    images = to_tensor(pixels, cfg.image_size).to(device)
    del pixels
    table = paths.read_manifest(paths.IMAGES, "index",
                                ["image_id", "alphabet", "character_id", "drawer"])
    split = paths.read_manifest(paths.SPLIT, "split", ["image_id", "role"])
    train = table.merge(split[split["role"] == "train"], on="image_id")
    groups = character_groups(train)
    if not groups:
        raise PipelineError(f"{paths.SPLIT}: no character has two train images")
    pairs = paths.read_manifest(paths.PAIRS, "pairs", ["left_id", "right_id", "same", "role"])
    pairs = pairs[pairs["role"] == "train"][["left_id", "right_id", "same"]]
    if cfg.objective == "pairs" and pairs.empty:
        raise PipelineError(f"{paths.PAIRS}: no train pairs")
    trials = paths.read_manifest(paths.TRIALS, "trials",
                                 ["trial_set", "n_way", "query_id", "candidate_ids", "answer"])
    valid = trials[trials["trial_set"] == "valid"]
    if valid.empty:
        raise PipelineError(f"{paths.TRIALS}: no valid trials to select the model on")
    valid = valid[valid["n_way"] == valid["n_way"].max()]  # 20-way with the default params
    return Data(images, groups, pairs.to_numpy(dtype=np.int64), valid.reset_index(drop=True))


def character_groups(train: pd.DataFrame) -> list[list[np.ndarray]]:
    """Train image ids per alphabet per character (sorted, so the order is reproducible)."""
    groups = []
    for _, alphabet in train.sort_values("image_id").groupby("alphabet", sort=True):
        chars = [g["image_id"].to_numpy() for _, g in alphabet.groupby("character_id", sort=True)]
        chars = [c for c in chars if len(c) >= 2]
        if len(chars) >= 2:
            groups.append(chars)
    return groups


def sample_episode(rng: np.random.Generator, groups: list[list[np.ndarray]], alphabets: int,
                   characters: int, rotations: int = 1) -> tuple[np.ndarray, ...]:
    """(support ids, query ids, block of each, quarter turns of each) for one episode.

    A block is an alphabet seen at one of `rotations` quarter turns (each rotation of a
    character is a class of its own); each character of a block gives two drawers.
    """
    support, query, block, turns = [], [], [], []
    pool = len(groups) * rotations
    for k, g in enumerate(rng.choice(pool, size=min(alphabets, pool), replace=False)):
        chars = groups[g // rotations]
        for c in rng.choice(len(chars), size=min(characters, len(chars)), replace=False):
            s, q = rng.choice(chars[c], size=2, replace=False)
            support.append(s)
            query.append(q)
            block.append(k)
            turns.append(g % rotations)
    return np.array(support), np.array(query), np.array(block), np.array(turns)


def rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate image i of [B, 1, S, S] by turns[i] quarter turns."""
    for k in range(1, 4):
        chosen = turns == k
        if chosen.any():
            x[chosen] = torch.rot90(x[chosen], k, dims=(2, 3))
    return x


# ---------------------------------------------------------------- objectives


class EpisodeLoss(nn.Module):
    """Softmax cross-entropy of each query over the supports of its alphabet, both ways."""

    def __init__(self, net: SiameseNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        emb = self.net.embed(x)
        support, query = emb.chunk(2)
        logits = self.net.score(query[:, None, :], support[None, :, :]).float()
        logits = logits.masked_fill(block[:, None] != block[None, :], float("-inf"))
        target = torch.arange(len(block), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class PairLoss(nn.Module):
    """Koch's objective: binary cross-entropy of 'same character' on pairs."""

    def __init__(self, net: SiameseNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        left, right = self.net.embed(x).chunk(2)
        logits = self.net.score(left, right).float()
        return F.binary_cross_entropy_with_logits(logits, same.float())


def next_batch(cfg: Config, data: Data, rng: np.random.Generator, gen: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(augmented images [2B, 1, S, S], side info) for one step of the objective."""
    if cfg.objective == "episodes":
        support, query, block, turns = sample_episode(
            rng, data.alphabets, cfg.episode_alphabets, cfg.episode_characters, cfg.rotations)
        ids, side = np.concatenate([support, query]), block
        x = data.images[torch.from_numpy(ids).to(device)]
        if cfg.rotations > 1:
            x = rotate(x, torch.from_numpy(np.concatenate([turns, turns])).to(device))
    else:
        count = min(cfg.batch_pairs, len(data.pairs))
        rows = data.pairs[rng.choice(len(data.pairs), size=count, replace=False)]
        ids, side = np.concatenate([rows[:, 0], rows[:, 1]]), rows[:, 2]
        x = data.images[torch.from_numpy(ids).to(device)]
    return distort(x, gen, cfg.augment_probability), torch.from_numpy(side).to(device)


def make_optimizer(cfg: Config, net: nn.Module) -> torch.optim.Optimizer:
    if isinstance(cfg.weight_decay, tuple):
        layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if len(layers) != len(cfg.weight_decay):
            raise PipelineError(
                f"params.yaml: train.weight_decay lists {len(cfg.weight_decay)} values; arch "
                f"{cfg.arch} has {len(layers)} conv/linear layers (give one each, or a number)"
            )
        in_layers = {id(p) for m in layers for p in m.parameters()}
        rest = [p for p in net.parameters() if id(p) not in in_layers]
        groups = [{"params": list(m.parameters()), "weight_decay": wd}
                  for m, wd in zip(layers, cfg.weight_decay, strict=True)]
        groups.append({"params": rest, "weight_decay": 0.0})
    else:
        groups = [{"params": list(net.parameters()), "weight_decay": cfg.weight_decay}]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_at(cfg: Config, step: int) -> float:
    """Learning rate for (1-based) `step`: constant, or cosine from lr to 0 over train.steps."""
    if cfg.schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / cfg.steps))


def valid_accuracy(net: SiameseNet, data: Data, device: torch.device) -> float:
    scores = trial_scores(net, data.images, data.valid, device)
    return float(credit(scores, data.valid["answer"].to_numpy()).mean())


# ---------------------------------------------------------------- run state


@dataclass
class Progress:
    step: int = 0
    best_accuracy: float = -1.0
    best_step: int = 0
    stale: int = 0  # evaluations since the best one
    finished: bool = False


def training_device(cfg: Config, override: str | None, local_rank: int) -> torch.device:
    """train.device or the --device override; under torchrun, plain `cuda` is this rank's GPU."""
    source = "siamese train --device" if override else "params.yaml: train.device"
    device = resolve_device(override or cfg.device, source)
    if device.type == "cuda" and device.index is None and dist.is_initialized():
        device = torch.device("cuda", local_rank)
    return device


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


def seeds(seed: int, rank: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent per-rank streams: episodes / pairs (numpy) and distortions (torch)."""
    sampler_seed, augment_seed = np.random.SeedSequence([seed, rank]).generate_state(2)
    gen = torch.Generator().manual_seed(int(augment_seed))
    return np.random.default_rng(int(sampler_seed)), gen


def rng_states(rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    return {"numpy": rng.bit_generator.state, "augment": gen.get_state(),
            "torch": torch.get_rng_state()}


def set_rng_states(state: dict[str, Any], rng: np.random.Generator, gen: torch.Generator) -> None:
    rng.bit_generator.state = state["numpy"]
    gen.set_state(state["augment"])
    torch.set_rng_state(state["torch"])


def save_last(path: Path, key: str, objective: nn.Module, optimizer: torch.optim.Optimizer,
              progress: Progress, states: list, best: dict, history: list) -> None:
    state = {
        "resume_key": key, "progress": asdict(progress), "rng": states, "history": history,
        "model": {k: v.detach().cpu() for k, v in unwrap(objective).net.state_dict().items()},
        "optimizer": optimizer.state_dict(), "best": best,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_last(path: Path, key: str) -> dict[str, Any] | None:
    """The saved state to resume from, or None (with the reason said) to start fresh."""
    if not path.exists():
        return None
    try:
        state = read_checkpoint(path)
    except PipelineError as e:
        return say(f"{e}; starting fresh")
    if state.get("resume_key") != key:
        return say(f"{path}: saved by a run with other params, data, code or process count; "
                   "starting fresh")
    if state["progress"]["finished"]:
        return say(f"{path}: that run had finished; starting fresh")
    return state


def say(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"train: {message}", file=sys.stderr, flush=True)


def unwrap(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


# ---------------------------------------------------------------- logging


class TrainLog:
    """Step-indexed metrics via dvclive (reports/train), or JSON lines where it is missing.

    The history lives in the training state, so a resumed run replays it and the logs hold
    exactly the steps of the computation that produced the weights.
    """

    def __init__(self, history: list[dict[str, float]]):
        try:
            from dvclive import Live
        except ImportError:
            self.live = None
            JSON_LOG.parent.mkdir(parents=True, exist_ok=True)
            JSON_LOG.write_text("")
        else:
            self.live = Live(dir=str(paths.TRAIN_LIVE), dvcyaml=False, save_dvc_exp=False)
        self.summary: dict[str, float] = {}
        for entry in history:
            self.log(entry)

    def log(self, entry: dict[str, float]) -> None:
        metrics = {k: v for k, v in entry.items() if k != "step" and not k.startswith("best")}
        self.summary.update(entry)
        if self.live is None:
            with open(JSON_LOG, "a") as f:
                f.write(json.dumps(entry, sort_keys=True) + "\n")
            write_json(self.summary, paths.TRAIN_LIVE / "metrics.json")
            return
        self.live.step = int(entry["step"])
        for name, value in metrics.items():
            self.live.log_metric(name, value)
        for name in ("best_valid_accuracy", "best_step"):
            if name in entry:
                self.live.log_metric(name, entry[name], plot=False)
        self.live.make_summary()

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


def draw_curves(history: list[dict[str, float]], target: Path = CURVES) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((ax_loss, "loss", "training loss"),
                           (ax_acc, "valid_accuracy", "valid n-way accuracy (largest n)")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points, strict=True), marker="." if key != "loss" else None)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the loop


def run(params: dict[str, Any], device: str | None = None) -> None:
    """Stage `train`: reads the data artifacts, writes models/model.pt and reports/train."""
    cfg = parse_config(params)
    rank, world, local_rank = setup_distributed()
    try:
        chosen = training_device(cfg, device, local_rank)
        train(cfg, train_params_digest(params), chosen, rank, world)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: Config, digest: str, device: torch.device, rank: int, world: int) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_data(cfg, device)
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.arch, cfg.image_size, **cfg.model_options())
    net = net.to(device, memory_format=torch.channels_last)
    objective: nn.Module = (EpisodeLoss if cfg.objective == "episodes" else PairLoss)(net)
    optimizer = make_optimizer(cfg, net)
    rng, gen = seeds(cfg.seed, rank)
    key = resume_key(digest, world)
    progress, best, history = Progress(), {}, []
    state = load_last(LAST, key)
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_states(state["rng"][rank], rng, gen)
        progress, best, history = Progress(**state["progress"]), state["best"], state["history"]
        say(f"resuming from {LAST} at step {progress.step} of {cfg.steps}")
    if world > 1:
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    log = TrainLog(history) if rank == 0 else None
    loop(cfg, data, objective, optimizer, (rng, gen), progress, best, history, log,
         (digest, key, device, rank, world))
    if rank == 0:
        if best:  # saved again: DVC removes model.pt before it reruns a stage
            model = best_model(net, best)
            calibrate_head(model, data, device)
            save_checkpoint(paths.MODEL, model, best)
        log.close()


def train_step(cfg: Config, data: Data, objective: nn.Module, optimizer: torch.optim.Optimizer,
               generators: tuple, device: torch.device, step: int) -> tuple[float, int]:
    """One optimiser step; (loss, images in the batch)."""
    lr = lr_at(cfg, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, side = next_batch(cfg, data, *generators, device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = objective(x, side)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item(), len(x)


def loop(cfg: Config, data: Data, objective: nn.Module, optimizer: torch.optim.Optimizer,
         generators: tuple, progress: Progress, best: dict, history: list,
         log: TrainLog | None, ctx: tuple) -> None:
    from tqdm import tqdm

    digest, key, device, rank, world = ctx
    net = unwrap(objective).net
    log_every = max(1, cfg.eval_every // LOG_POINTS)
    unit, per_item = ("images/s", 1) if cfg.objective == "episodes" else ("pairs/s", 2)
    started, losses, step_time = time.monotonic(), [], None
    bar = tqdm(total=cfg.steps, initial=progress.step, disable=rank != 0, desc="train",
               unit="step", dynamic_ncols=True, mininterval=2.0, file=sys.stderr)
    net.train()
    for step in range(progress.step + 1, cfg.steps + 1):
        t0 = time.monotonic()
        loss, items = train_step(cfg, data, objective, optimizer, generators, device, step)
        losses.append(loss)
        took = time.monotonic() - t0
        step_time = took if step_time is None else 0.95 * step_time + 0.05 * took
        bar.update(1)
        bar.set_postfix_str(f"loss {loss:.3f}, "
                            f"{items * world / per_item / step_time:,.0f} {unit}", False)
        entry: dict[str, float] = {}
        if step % log_every == 0 or step == cfg.steps:
            entry = {"step": step, "loss": float(np.mean(losses)), "lr": lr_at(cfg, step)}
            losses = []
        out_of_time = time_is_up(cfg, started, world, device)
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            entry = {"step": step, **entry}
            stop = evaluate(net, data, device, rank, step, progress, best, entry, cfg.patience,
                            digest)
            progress.step = step
            progress.finished = stop or out_of_time or step == cfg.steps
            history.append(entry)
            checkpoint_state(key, objective, optimizer, progress, generators, best, history,
                             log, rank, world)
            if progress.finished:
                say(f"stopping at step {step}: "
                    + ("out of time" if out_of_time else "no improvement" if stop else "done"))
                break
        elif entry:
            history.append(entry)
            if log:
                log.log(entry)
    bar.close()


def time_is_up(cfg: Config, started: float, world: int, device: torch.device) -> bool:
    """train.max_minutes reached (decided by rank 0 for all ranks)."""
    if cfg.max_minutes <= 0:
        return False
    up = torch.tensor([float(time.monotonic() - started > cfg.max_minutes * 60)], device=device)
    if world > 1:
        dist.broadcast(up, src=0)
    return bool(up.item())


def evaluate(net: SiameseNet, data: Data, device: torch.device, rank: int, step: int,
             progress: Progress, best: dict, entry: dict, patience: int, digest: str) -> bool:
    """Validate (rank 0), keep the best model; True when patience has run out (all ranks)."""
    result = [0.0]
    if rank == 0:
        result = [valid_accuracy(net, data, device)]
    if dist.is_initialized():
        dist.broadcast_object_list(result, src=0)
    accuracy = result[0]
    entry["valid_accuracy"] = accuracy
    if accuracy > progress.best_accuracy:
        progress.best_accuracy, progress.best_step, progress.stale = accuracy, step, 0
        best.clear()
        best.update(step=step, valid_accuracy=accuracy, params_digest=digest,
                    state_dict={k: v.detach().cpu().clone() for k, v in net.state_dict().items()})
        if rank == 0:
            save_best(net, best)
    else:
        progress.stale += 1
    entry["best_valid_accuracy"] = progress.best_accuracy
    entry["best_step"] = progress.best_step
    return 0 < patience <= progress.stale


def best_model(net: SiameseNet, best: dict) -> SiameseNet:
    """A copy of `net`'s architecture holding the best weights."""
    model = build_model(net.arch, net.image_size, **net.options)
    model.load_state_dict(best["state_dict"])
    return model


def save_best(net: SiameseNet, best: dict) -> None:
    save_checkpoint(paths.MODEL, best_model(net, best), best)


def calibrate_head(model: SiameseNet, data: Data, device: torch.device) -> None:
    """Shift the head's bias so that logit 0 (P(same) = 0.5) best separates the train pairs.

    The episode objective's softmax is blind to the bias, which ends anywhere; verification
    accuracy and the probabilities of `siamese classify` need it meaningful. Rankings, and so
    every n-way accuracy, are unchanged by the shift.
    """
    if len(data.pairs) == 0:
        return
    ids = np.unique(data.pairs[:, :2])
    emb = embed_images(model.to(device), data.images, ids, device)
    left, right = np.searchsorted(ids, data.pairs[:, 0]), np.searchsorted(ids, data.pairs[:, 1])
    with torch.no_grad():
        logits = model.score(emb[left].to(device), emb[right].to(device)).double().cpu().numpy()
    order = np.argsort(logits, kind="stable")
    sorted_logits, same = logits[order], data.pairs[order, 2].astype(bool)
    # Threshold below position i: pairs before it are called different, from it on same.
    correct = np.concatenate([[0], np.cumsum(~same)]) + np.concatenate(
        [np.cumsum(same[::-1])[::-1], [0]])
    i = int(np.argmax(correct))
    edges = np.concatenate([[sorted_logits[0] - 1], sorted_logits, [sorted_logits[-1] + 1]])
    threshold = (edges[i] + edges[i + 1]) / 2
    with torch.no_grad():
        model.head.bias -= float(threshold)
    model.cpu()
    say(f"head bias shifted by {-threshold:+.3f}: {correct[i] / len(same):.1%} of "
        f"{len(same):,} train pairs verified right at P(same) = 0.5")


def checkpoint_state(key: str, objective: nn.Module, optimizer, progress: Progress,
                     generators: tuple, best: dict, history: list, log: TrainLog | None,
                     rank: int, world: int) -> None:
    states = [rng_states(*generators)]
    if world > 1:
        states = [None] * world
        dist.all_gather_object(states, rng_states(*generators))
    if rank == 0:
        save_last(LAST, key, objective, optimizer, progress, states, best, history)
        log.log(history[-1])
        draw_curves(history)
