"""Stage `train`: fit the twin network, keep the checkpoint that is best on validation trials.

Objectives (train.objective, siamese/objectives.py):
- pairs: binary cross-entropy on the train pairs of pairs.parquet (Koch's objective).
- episodes: per step, `episode_alphabets` alphabets x up to `episode_characters` characters x
  2 distinct drawers; each query is scored against every support of its alphabet with the
  model's head (train.head) and a softmax cross-entropy picks its own character, in both
  directions. This is the one-shot test's own form (docs/pipeline.md compares the two).

With train.ema > 0 an exponential moving average of the weights (batch-norm statistics
included) follows every optimiser step; it is what is validated, kept as the best and
written to models/model.pt.

The run is reproducible and resumable: every random draw comes from generators seeded from
train.seed whose states are saved, with the model, optimiser, weight average and best-so-far,
in models/checkpoints/last.pt at every evaluation (siamese/checkpoints.py). A killed run,
rerun with the same params, data and code, resumes from there and ends with the same weights
as an uninterrupted run (CPU). models/model.pt is written once, at the end: the best weights
with their head calibrated, so a run killed halfway leaves the previous model.pt as it was.

Determinism (siamese/distributed.py `deterministic`): a fixed thread count (train.threads; CPU
kernels split reductions by it) and torch's deterministic algorithms (warn-only: a few CUDA
kernels have none; cuBLAS gets a fixed workspace) make a rerun on the same machine give the
same weights bit for bit. Across CPUs, train.cpu_paths avx2 (set by `siamese train` before
torch loads, siamese/cpu.py) pins the kernels that the libraries would otherwise choose by
instruction set, so every x86-64 CPU with AVX2 computes the same weights; model.pt records the
paths. A GPU's kernels depend on its model and its CUDA/cuDNN versions, and on torch's.

Under `torchrun --nproc_per_node N` it trains with DistributedDataParallel: the device is
chosen first (each rank its own GPU, or the CPU), then the process group (nccl on CUDA, gloo
on the CPU); each rank draws its own episodes, rank 0 evaluates, averages the weights, logs
and writes checkpoints.

On a GPU the step does not make the host wait for the device: the loss stays there until a
log point (LOG_POINTS per evaluation interval) reads the losses since the last one at once
(the progress bar shows those), and a batch's indices, rotations and distortions are decided
on the host and copied from pinned memory.

This file is the loop; the data and batches are in siamese/episodes.py, the objectives and
optimiser in siamese/objectives.py, process set-up in siamese/distributed.py, the logs in
siamese/trainlog.py.
"""

import sys
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from siamese import cpu, paths
from siamese.checkpoints import (
    LAST,
    Progress,
    load_last,
    resume_key,
    rng_states,
    save_last,
    set_rng_states,
)
from siamese.config import TrainConfig
from siamese.distributed import deterministic, seeds, setup_distributed, unwrap
from siamese.episodes import Data, load_data, next_batch
from siamese.model import SiameseNet, build_model, save_checkpoint
from siamese.objectives import EpisodeLoss, PairLoss, WeightAverage, lr_at, make_optimizer
from siamese.scoring import credit, embed_images, trial_scores
from siamese.trainlog import TrainLog, draw_curves, progress_bar, say

LOG_POINTS = 5  # loss / lr log points per evaluation interval


def run(params: dict[str, Any], device: str | None = None) -> None:
    """Stage `train`: reads the data artifacts, writes models/model.pt and reports/train."""
    cfg = TrainConfig.parse(params)
    for warning in cpu.warnings(cfg.cpu_paths):
        say(warning)
    chosen, rank, world = setup_distributed(cfg, device)
    try:
        with deterministic(cfg):
            train(cfg, chosen, rank, world)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class TrainState:
    """What the loop carries from step to step: the run's parts, and the state saved at every
    evaluation (progress, best-so-far, history) from which a killed run resumes."""

    cfg: TrainConfig
    data: Data
    objective: nn.Module  # the loss around the network; DistributedDataParallel with ranks
    optimizer: torch.optim.Optimizer
    generators: tuple[np.random.Generator, torch.Generator]
    device: torch.device
    rank: int
    world: int
    key: str  # the resume key: params digest and world size
    average: WeightAverage | None = None  # rank 0's weight average (train.ema)
    progress: Progress = field(default_factory=Progress)
    best: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    log: TrainLog | None = None  # rank 0's

    @property
    def net(self) -> SiameseNet:
        return cast(SiameseNet, unwrap(self.objective).net)

    @property
    def judged(self) -> SiameseNet:
        """The weights validated and kept: the average's, if there is one."""
        return self.net if self.average is None else cast(SiameseNet, self.average.net)


def train(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> None:
    data = load_data(cfg, device)
    torch.manual_seed(cfg.seed)
    net = build_model(cfg.arch, cfg.image_size, **cfg.model_options())
    net = net.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    objective: nn.Module = (EpisodeLoss if cfg.objective == "episodes" else PairLoss)(net)
    optimizer = make_optimizer(cfg, net)
    # The average is rank 0's alone: it validates and saves, and its batch-norm statistics
    # are the ones DistributedDataParallel hands every rank.
    average = WeightAverage(net, cfg.ema) if cfg.ema and rank == 0 else None
    state = TrainState(cfg, data, objective, optimizer, seeds(cfg.seed, rank), device, rank,
                       world, resume_key(cfg.digest, world), average)
    resume(state)
    if world > 1:
        state.objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    state.log = TrainLog(state.history) if rank == 0 else None
    loop(state)
    if rank == 0:
        if state.best:  # model.pt is written here only: the best weights, head calibrated
            model = best_model(net, state.best)
            calibrate_head(model, data, device)
            save_checkpoint(paths.MODEL, model,
                            {**state.best, "cpu_paths": cpu.record(cfg.cpu_paths)})
        if state.log:
            state.log.close()


def resume(state: TrainState) -> None:
    """Continue from models/checkpoints/last.pt if it is this run's (same key)."""
    saved = load_last(LAST, state.key)
    if saved is None:
        return
    state.net.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    set_rng_states(saved["rng"][state.rank], *state.generators)
    if state.average is not None:
        state.average.net.load_state_dict(saved["ema"])
    state.progress = Progress(**saved["progress"])
    state.best, state.history = saved["best"], saved["history"]
    say(f"resuming from {LAST} at step {state.progress.step} of {state.cfg.steps}")


def train_step(state: TrainState, step: int) -> tuple[torch.Tensor, int]:
    """One optimiser step, the weight average following; (loss on the device, images)."""
    cfg, optimizer = state.cfg, state.optimizer
    lr = lr_at(cfg, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, side = next_batch(cfg, state.data, *state.generators, state.device)
    with torch.autocast(state.device.type, dtype=torch.bfloat16,
                        enabled=state.device.type == "cuda"):
        loss = state.objective(x, side)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if state.average is not None:
        state.average.update(state.net)
    return loss.detach(), len(x)


def loop(state: TrainState) -> None:
    cfg, progress = state.cfg, state.progress
    log_every = max(1, cfg.eval_every // LOG_POINTS)
    unit, per_item = ("images/s", 1) if cfg.objective == "episodes" else ("pairs/s", 2)
    started = since = time.monotonic()
    losses: list[torch.Tensor] = []
    items = 0
    bar = progress_bar(total=cfg.steps, initial=progress.step, disable=state.rank != 0,
                       desc="train", unit="step", dynamic_ncols=True, mininterval=2.0,
                       file=sys.stderr)
    state.net.train()
    for step in range(progress.step + 1, cfg.steps + 1):
        loss, batch = train_step(state, step)
        losses.append(loss)
        items += batch
        bar.update(1)
        entry: dict[str, float] = {}
        if step % log_every == 0 or step == cfg.steps:
            # The one wait for the device between evaluations: the losses since the last log.
            mean = float(np.mean(torch.stack(losses).double().cpu().numpy()))
            now = time.monotonic()
            rate = items * state.world / per_item / max(now - since, 1e-9)
            bar.set_postfix_str(f"loss {mean:.3f}, {rate:,.0f} {unit}", False)
            entry = {"step": step, "loss": mean, "lr": lr_at(cfg, step)}
            losses, items, since = [], 0, now
        out_of_time = time_is_up(cfg, started, state.world, state.device, bool(entry))
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            entry = {"step": step, **entry}
            stop = evaluate(state, step, entry)
            progress.step = step
            progress.finished = stop or out_of_time or step == cfg.steps
            state.history.append(entry)
            checkpoint_state(state)
            if progress.finished:
                say(f"stopping at step {step}: "
                    + ("out of time" if out_of_time else "no improvement" if stop else "done"))
                break
        elif entry:
            state.history.append(entry)
            if state.log:
                state.log.log(entry)
    bar.close()


def time_is_up(cfg: TrainConfig, started: float, world: int, device: torch.device,
               log_point: bool) -> bool:
    """train.max_minutes reached. With several ranks, rank 0 decides for all, and only at log
    points: the broadcast makes every rank wait for its device."""
    if cfg.max_minutes <= 0:
        return False
    up = time.monotonic() - started > cfg.max_minutes * 60
    if world == 1:
        return up
    if not log_point:
        return False
    flag = torch.tensor([float(up)], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def evaluate(state: TrainState, step: int, entry: dict) -> bool:
    """Validate (rank 0), keep the best model; True when patience has run out (all ranks)."""
    progress = state.progress
    result = [0.0]
    if state.rank == 0:
        result = [valid_accuracy(state.judged, state.data, state.device)]
    if dist.is_initialized():
        dist.broadcast_object_list(result, src=0)
    accuracy = result[0]
    entry["valid_accuracy"] = accuracy
    if accuracy > progress.best_accuracy:
        progress.best_accuracy, progress.best_step, progress.stale = accuracy, step, 0
        state.best.clear()
        state.best.update(
            step=step, valid_accuracy=accuracy, params_digest=state.cfg.digest,
            state_dict={k: v.detach().cpu().clone()
                        for k, v in state.judged.state_dict().items()})
    else:
        progress.stale += 1
    entry["best_valid_accuracy"] = progress.best_accuracy
    entry["best_step"] = progress.best_step
    return 0 < state.cfg.patience <= progress.stale


def valid_accuracy(net: SiameseNet, data: Data, device: torch.device) -> float:
    scores = trial_scores(net, data.images, data.valid, device)
    return float(credit(scores, data.valid["answer"].to_numpy()).mean())


def best_model(net: SiameseNet, best: dict) -> SiameseNet:
    """A copy of `net`'s architecture holding the best weights."""
    model = build_model(net.arch, net.image_size, **net.options)
    model.load_state_dict(best["state_dict"])
    return model


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
        cast(Any, model.head).bias -= float(threshold)
    model.cpu()
    say(f"head bias shifted by {-threshold:+.3f}: {correct[i] / len(same):.1%} of "
        f"{len(same):,} train pairs verified right at P(same) = 0.5")


def checkpoint_state(state: TrainState) -> None:
    states: list[Any] = [rng_states(*state.generators)]
    if state.world > 1:
        states = [None] * state.world
        dist.all_gather_object(states, rng_states(*state.generators))
    if state.rank == 0:
        save_last(LAST, state.key, state.objective, state.optimizer, state.progress, states,
                  state.best, state.history, None if state.average is None else state.average.net)
        if state.log:
            state.log.log(state.history[-1])
        draw_curves(state.history)
