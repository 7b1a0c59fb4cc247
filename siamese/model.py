"""The twin network: an embedding net shared by both inputs, and a head that scores two embeddings.

`build_model(arch, image_size, head=..., **options)` builds one of the architectures below with
one of the heads; `save_checkpoint` / `load_model` write and read the checkpoint dict that every
stage shares.

Architectures (train.arch):
- koch: Koch et al. 2015 exactly: conv 64@10x10, ReLU, maxpool 2, 128@7x7, ReLU, pool,
  128@4x4, ReLU, pool, 256@4x4, ReLU, flatten, FC 4096 + sigmoid (38,951,745 parameters
  at 105x105 with the koch head). Option `init: koch` draws Koch's initial weights.
- compact: `depth` blocks of conv3x3 (`width` channels) + batch norm + ReLU + maxpool 2,
  flatten, linear to `embedding` features: fast on a CPU at 28x28.

Heads (train.head): each maps embeddings a, b [..., D] (broadcasting) to the logit of "same
character", and has a `bias` that the train stage calibrates.
- koch: Koch's weighted L1, w . |a - b| + bias (the checkpoint keys head.weight, head.bias of
  every model before heads had a name; a checkpoint without `head` in its options is koch).
- euclidean: a prototypical network's -scale * ||a - b||^2 + bias.
- cosine: scale * cos(a, b) + bias.
"""

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from siamese import gemm
from siamese.atomic import atomic_path
from siamese.errors import PipelineError
from siamese.lockcheck import check_input

ARCHS = ("koch", "compact")
INITS = ("default", "koch")
CHECKPOINT_KEYS = (
    "arch", "image_size", "model_options", "state_dict", "step", "valid_accuracy", "params_digest",
)


class Conv2d(nn.Conv2d):
    """nn.Conv2d, computed by siamese.gemm's pinned kernel where it is active (stride 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if gemm.active(x) and self.stride == (1, 1) and self.dilation == (1, 1) \
                and self.groups == 1 and isinstance(self.padding, tuple) \
                and self.padding[0] == self.padding[1]:
            return gemm.conv2d(x, self.weight, self.bias, self.padding[0])
        return super().forward(x)


class Linear(nn.Linear):
    """nn.Linear, computed by siamese.gemm's pinned kernel where it is active."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if gemm.active(x):
            return gemm.linear(x, self.weight, self.bias)
        return super().forward(x)


class KochHead(Linear):
    """Koch's weighted L1: logit = w . |a - b| + bias.

    A Linear(dim, 1), so that its state_dict keys (head.weight, head.bias) and Koch's
    initialisation are those of every checkpoint saved before heads had a name.
    """

    def __init__(self, dim: int):
        super().__init__(dim, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(torch.abs(a - b)).squeeze(-1)


class ScaledHead(nn.Module):
    """logit = scale * similarity(a, b) + bias, scale > 0 learnt as its log (so it never flips
    sign); the bias is what the train stage calibrates."""

    def __init__(self, scale: float):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.bias = nn.Parameter(torch.zeros(()))

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * self.similarity(a, b) + self.bias


class EuclideanHead(ScaledHead):
    """A prototypical network's negative squared distance (scale starts at 1)."""

    def __init__(self, dim: int):
        super().__init__(scale=1.0)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return -(a - b).square().sum(-1)


class CosineHead(ScaledHead):
    """Cosine similarity; cos lies in [-1, 1], so the scale starts at 10 for a usable softmax."""

    def __init__(self, dim: int):
        super().__init__(scale=10.0)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


HEADS: dict[str, type[nn.Module]] = {
    "koch": KochHead, "euclidean": EuclideanHead, "cosine": CosineHead,
}
DEFAULT_HEAD = "koch"  # the head of every checkpoint saved before heads had a name


def make_head(name: str, dim: int) -> nn.Module:
    """The head named `name` for `dim`-feature embeddings (only koch has weights per feature)."""
    if name not in HEADS:
        raise PipelineError(f"train.head must be one of {', '.join(HEADS)}; got {name!r}")
    return HEADS[name](dim)


class SiameseNet(nn.Module):
    """Embedding net + head: logit of 'same character' for two images; sigmoid -> P(same).

    The head is options["head"] (DEFAULT_HEAD when absent); options keep its name either way.
    """

    def __init__(self, arch: str, image_size: int, options: dict[str, Any],
                 features: nn.Module, dim: int):
        super().__init__()
        self.arch = arch
        self.image_size = image_size
        self.options = dict(options)
        self.features = features
        self.dim = dim
        self.head = make_head(self.options.setdefault("head", DEFAULT_HEAD), dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, S, S] float (ink = 1) -> [B, D]."""
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)  # 15-35% faster on CPU
        return self.features(x)

    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logits of 'same character' for embeddings [..., D] and [..., D] (broadcasting)."""
        return self.head(a, b)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.score(self.embed(x1), self.embed(x2))


def koch_features(image_size: int) -> tuple[nn.Module, int]:
    convs = nn.Sequential(
        Conv2d(1, 64, 10), nn.ReLU(), nn.MaxPool2d(2),
        Conv2d(64, 128, 7), nn.ReLU(), nn.MaxPool2d(2),
        Conv2d(128, 128, 4), nn.ReLU(), nn.MaxPool2d(2),
        Conv2d(128, 256, 4), nn.ReLU(), nn.Flatten(),
    )
    flat = conv_output_size(convs, image_size, "koch")
    return nn.Sequential(*convs, Linear(flat, 4096), nn.Sigmoid()), 4096


def compact_features(
    image_size: int, width: int, depth: int, embedding: int
) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(depth):
        layers += [Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
    convs = nn.Sequential(*layers, nn.Flatten())
    flat = conv_output_size(convs, image_size, "compact")
    return nn.Sequential(*convs, Linear(flat, embedding)), embedding


def conv_output_size(convs: nn.Module, image_size: int, arch: str) -> int:
    try:
        with torch.no_grad():
            return int(convs(torch.zeros(1, 1, image_size, image_size)).shape[1])
    except RuntimeError:
        msg = f"arch {arch}: image_size {image_size} is too small for this network"
        raise PipelineError(msg) from None


def koch_init(model: nn.Module) -> None:
    """Koch's initialisation: conv weights N(0, 0.01), FC weights N(0, 0.2), biases N(0.5, 0.01).

    (0.01 and 0.2 are the paper's standard deviations; the koch head is an FC layer, the
    other heads keep their scale and bias.)
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.01 if isinstance(m, nn.Conv2d) else 0.2)
            if m.bias is not None:
                nn.init.normal_(m.bias, 0.5, 0.01)


def resolve_device(name: str, source: str) -> torch.device:
    """'auto' -> CUDA when present, else the CPU; any other name must be a device this machine has.

    `source` says where the name came from (a parameter or an option), for the message.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PipelineError(f"{source}: {name!r} is not a device; use auto, cpu or cuda[:N]"
                            ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(f"{source}: {name!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PipelineError(
                f"{source}: {name!r} requested but this machine has "
                f"{torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise PipelineError(f"{source}: {name!r}: use auto, cpu or cuda[:N]")
    return device


def build_model(arch: str, image_size: int, head: str = DEFAULT_HEAD, **options: Any
                ) -> SiameseNet:
    """Build an architecture with a head by name; unknown names or options raise PipelineError.

    A checkpoint without `head` in its model_options gets DEFAULT_HEAD, the head it was saved
    with.
    """
    options = dict(options)
    init = options.pop("init", "default")
    if init not in INITS:
        raise PipelineError(f"model option init must be one of {', '.join(INITS)}; got {init!r}")
    if arch == "koch":
        features, dim = koch_features(image_size)
        kept: dict[str, Any] = {}
    elif arch == "compact":
        kept = {"width": int(options.pop("width", 64)), "depth": int(options.pop("depth", 4)),
                "embedding": int(options.pop("embedding", 128))}
        if min(kept.values()) < 1:
            raise PipelineError(f"arch compact: width, depth, embedding must be >= 1; got {kept}")
        features, dim = compact_features(image_size, **kept)
    else:
        raise PipelineError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}")
    if options:
        raise PipelineError(f"arch {arch}: unknown model options {sorted(options)}")
    model = SiameseNet(arch, image_size, {**kept, "init": init, "head": head}, features, dim)
    if init == "koch":
        koch_init(model)
    return model


def save_checkpoint(path: Path | str, model: SiameseNet, meta: dict[str, Any]) -> Path:
    """Write the shared checkpoint dict atomically; `meta` supplies step, valid_accuracy, digest."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint = {
        "arch": model.arch,
        "image_size": model.image_size,
        "model_options": dict(model.options),
        "state_dict": state,
        "step": int(meta.get("step", 0)),
        "valid_accuracy": float(meta.get("valid_accuracy", float("nan"))),
        "params_digest": str(meta.get("params_digest", "")),
        "cpu_paths": dict(meta.get("cpu_paths", {})),  # siamese.cpu.record; {}: not recorded
        "weights_sha256": weights_digest(state),
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return Path(path)


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of every tensor's name, dtype, shape and bytes, in order: a flipped byte that
    torch.load reads without a word is caught on load."""
    h = hashlib.sha256()
    for name, tensor in state.items():
        h.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_checkpoint(path: Path | str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """torch.load(weights_only=True) with clear errors for a missing or unreadable file."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise PipelineError(f"{path}: not a regular file (a folder, FIFO or device), so not a "
                            "checkpoint")
    if not path.is_file():
        raise PipelineError(f"{path}: checkpoint not found; run the train stage first")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = f"{path}: not a readable checkpoint ({type(e).__name__}: {first[:200]})"
        raise PipelineError(msg) from None
    if not isinstance(checkpoint, dict):
        raise PipelineError(f"{path}: not a checkpoint (a {type(checkpoint).__name__}, not a dict)")
    check_input(path)
    return checkpoint


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[SiameseNet, dict]:
    """Load the best checkpoint: (model in eval mode on `device`, its metadata without weights)."""
    path = Path(path)
    checkpoint = read_checkpoint(path, device)
    missing = [k for k in CHECKPOINT_KEYS if k not in checkpoint]
    if missing:
        raise PipelineError(f"{path}: not a model checkpoint (missing {', '.join(missing)})")
    try:
        model = build_model(checkpoint["arch"], int(checkpoint["image_size"]),
                            **checkpoint["model_options"])
    except PipelineError as e:
        raise PipelineError(f"{path}: {e}") from None
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[:3]
        raise PipelineError(
            f"{path}: weights do not match arch {checkpoint['arch']!r} at image_size "
            f"{checkpoint['image_size']} with head {model.options['head']!r} (a checkpoint of "
            f"another architecture or head?): {' '.join(first)}"
        ) from None
    recorded = checkpoint.get("weights_sha256")
    if recorded is not None and recorded != weights_digest(checkpoint["state_dict"]):
        raise PipelineError(f"{path}: its weights do not match the sha256 recorded when it was "
                            "saved (a damaged file); rebuild it (`dvc repro train`) or restore it "
                            "(`dvc checkout models/model.pt`)")
    meta = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "weights_sha256")}
    return model.to(device).eval(), meta
