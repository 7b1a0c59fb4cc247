"""What training minimises and how: the two objectives, the optimiser, the learning rate.

- EpisodeLoss (train.objective: episodes): each query is scored against every support of
  its alphabet with the model's head (train.head) and a softmax cross-entropy picks its own
  character, in both directions; the one-shot test's own form.
- PairLoss (pairs): binary cross-entropy of "same character" on pairs (Koch's objective).

WeightAverage keeps the exponential moving average of the weights (train.ema) that is
validated and kept in their place.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from siamese.config import TrainConfig
from siamese.errors import PipelineError
from siamese.model import SiameseNet


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


def make_optimizer(cfg: TrainConfig, net: nn.Module) -> torch.optim.Optimizer:
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
        # fused: one ATen kernel, whose square root is the CPU's own (IEEE, the same bits
        # everywhere); the unfused Adam's torch.sqrt goes to MKL's, whose bits follow the CPU
        return torch.optim.Adam(groups, lr=cfg.lr, fused=True)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate for (1-based) `step`: constant, or cosine from lr to 0 over train.steps."""
    if cfg.schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / cfg.steps))


class WeightAverage:
    """Exponential moving average of a network's parameters and buffers (train.ema).

    It starts at the network's initial weights; after every optimiser step each float
    tensor moves (1 - decay) of the way towards the network's (batch-norm running statistics
    included; integer buffers such as the batch count are copied). All on the network's
    device, without waiting for it.
    """

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.net = copy.deepcopy(net).requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        pairs = zip([*self.net.parameters(), *self.net.buffers()],
                    [*net.parameters(), *net.buffers()], strict=True)
        floats: list[tuple[torch.Tensor, torch.Tensor]] = []
        others: list[tuple[torch.Tensor, torch.Tensor]] = []
        for average, current in pairs:
            (floats if average.is_floating_point() else others).append((average, current))
        if floats:
            averages, currents = zip(*floats, strict=True)
            torch._foreach_lerp_(list(averages), list(currents), 1 - self.decay)
        for average, current in others:
            average.copy_(current)
