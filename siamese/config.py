"""params.yaml: one frozen, typed config per section, parsed and validated in one pass.

Each field declares its check next to it (`param(kind, lo=, hi=, choices=, check=)`);
`Section.parse` reads the section once, checks every field in order, then runs the class's
cross-field checks (`Section.validate`). A bad value is a PipelineError that names the
parameter (`params.yaml: train.lr must be > 0, got -0.01`). yaml is imported only by
`load_params`, so the stages that take a parsed dict import nothing but the standard library
from here.
"""

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from siamese import paths
from siamese.errors import PipelineError

if TYPE_CHECKING:
    import torch

ABSENT = object()  # a key the section does not have
FINGERPRINT = re.compile(r"[0-9a-f]{64}")
AUDIT_ROLES = ("train", "valid", "holdout", "test", "lake")


def load_params(path: Path | str = paths.PARAMS) -> dict[str, Any]:
    import yaml

    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: parameter file not found") from None
    except yaml.YAMLError as e:
        raise PipelineError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(params, dict):
        raise PipelineError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    value = params.get(name)
    if not isinstance(value, dict):
        raise PipelineError(f"params.yaml: section '{name}' is missing or not a mapping")
    return value


# ---------------------------------------------------------------- checks of one value


def typed(value: Any, name: str, kind: type) -> Any:
    """`value` checked to be of `kind` (float accepts an int, a number is never a bool)."""
    if value is ABSENT:
        raise PipelineError(f"params.yaml: {name} is missing")
    if isinstance(value, bool) and kind in (int, float):
        raise PipelineError(f"params.yaml: {name} must be a number, got {value!r}")
    if not isinstance(value, (int, float) if kind is float else kind):
        raise PipelineError(f"params.yaml: {name} has the wrong type: {value!r}")
    return float(value) if kind is float else value  # type: ignore[arg-type]  # checked above


def check_range(value: float, name: str, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise PipelineError(f"params.yaml: {name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise PipelineError(f"params.yaml: {name} must be <= {hi}, got {value}")


def param(kind: type | None = None, *, lo: float | None = None, hi: float | None = None,
          choices: tuple[str, ...] | None = None,
          check: Callable[[Any, str], Any] | None = None) -> Any:
    """A section field: its type, range or choices, then `check(value, name)` (which returns
    the value to keep). With no `kind`, `check` gets the raw value (ABSENT if missing)."""
    return field(metadata={"kind": kind, "lo": lo, "hi": hi, "choices": choices,
                           "check": check})


def read(sec: dict[str, Any], key: str, name: str, spec: dict[str, Any]) -> Any:
    value = sec.get(key, ABSENT)
    if spec["kind"] is not None:
        value = typed(value, name, spec["kind"])
        if spec["kind"] in (int, float):
            check_range(value, name, spec["lo"], spec["hi"])
    if spec["choices"] is not None and value not in spec["choices"]:
        raise PipelineError(
            f"params.yaml: {name} must be one of {', '.join(spec['choices'])}; got {value!r}")
    return value if spec["check"] is None else spec["check"](value, name)


@dataclass(frozen=True)
class Section:
    """A params.yaml section: subclasses name it (`SECTION`) and declare its fields."""

    SECTION: ClassVar[str]

    @classmethod
    def parse(cls, params: dict[str, Any]) -> Self:
        sec = section(params, cls.SECTION)
        known = [f.name for f in fields(cls) if f.default is MISSING]
        refuse_unknown(params, sec, cls.SECTION, known)
        values = {name: read(sec, name, f"{cls.SECTION}.{name}", dict(f.metadata))
                  for f in fields(cls) if (name := f.name) in known}
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Cross-field checks (none by default)."""


def refuse_unknown(params: dict[str, Any], sec: dict[str, Any], name: str,
                   known: list[str]) -> None:
    """A section of params.yaml that no stage reads, or a key of this section that is not a
    parameter, is a typo: refused with the nearest known name, before anything runs."""
    import difflib

    def nearest(key: str, names: list[str], prefix: str = "") -> str:
        close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
        return f" (did you mean {prefix}{close[0]}?)" if close else ""

    sections = sorted(c.SECTION for c in Section.__subclasses__())
    for key in params:
        if key not in sections:
            raise PipelineError(f"params.yaml: section '{key}' is not a section of the "
                                f"pipeline{nearest(key, sections)}")
    for key in sec:
        if key not in known:
            raise PipelineError(f"params.yaml: {name}.{key} is not a parameter"
                                f"{nearest(key, known, name + '.')}")


def check_params(path: Path | str = paths.PARAMS) -> None:
    """Every section of params.yaml read and checked as its stage will read it, so that a
    typo stops a run before DVC touches anything (DVC removes a stage's outputs before it
    runs the stage's command, and that is where the stage would find the typo)."""
    check_sections(load_params(path))


def check_sections(params: dict[str, Any]) -> None:
    """Every section of `params` parsed and checked; unknown sections and keys refused."""
    for config in Section.__subclasses__():
        config.parse(params)


# ---------------------------------------------------------------- field checks


def positive(value: float, name: str) -> float:
    if value <= 0:
        raise PipelineError(f"params.yaml: {name} must be > 0, got {value}")
    return value


def even(value: int, name: str) -> int:
    if value % 2:
        raise PipelineError(f"params.yaml: {name} must be even (half same), got {value}")
    return value


def device_name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not (value in ("auto", "cpu") or value.startswith("cuda")):
        shown = None if value is ABSENT else value
        raise PipelineError(f"params.yaml: {name} must be auto, cpu or cuda[:N]; got {shown!r}")
    return value


def this_machines_device(value: str, name: str) -> "torch.device":
    """A device this machine has (auto: CUDA when present); imports torch only when called."""
    from siamese.model import resolve_device

    return resolve_device(value, f"params.yaml: {name}")


def fingerprint(value: Any, name: str) -> str | None:
    if value is ABSENT or value is None:
        return None
    if not FINGERPRINT.fullmatch(str(value)):
        raise PipelineError(f"params.yaml: {name} must be null or 64 hex digits, got {value!r}")
    return value


def zip_files(value: list, name: str) -> tuple[str, ...]:
    from siamese.zips import ZIPS

    if sorted(value) != sorted(ZIPS):
        raise PipelineError(f"params.yaml: {name} must be {list(ZIPS)}, got {value!r}")
    return tuple(value)


def md5_map(value: Any, name: str) -> dict[str, str]:
    value = {} if value is ABSENT else value or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise PipelineError(f"params.yaml: {name} must map file names to md5 strings")
    return value


def fetch_source(value: Any, name: str) -> str:
    """OMNIGLOT_SOURCE, when set, wins over fetch.source."""
    return os.environ.get("OMNIGLOT_SOURCE") or typed(value, name, str)


def int_list(value: list, name: str, lo: int) -> tuple[int, ...]:
    """A non-empty list of integers >= lo, sorted, each once."""
    if not value or not all(isinstance(n, int) and not isinstance(n, bool) for n in value):
        raise PipelineError(f"params.yaml: {name} must be a list of integers, got {value!r}")
    if min(value) < lo:
        raise PipelineError(f"params.yaml: {name} values must be >= {lo}, got {value!r}")
    return tuple(sorted(set(value)))


def n_ways(value: list, name: str) -> tuple[int, ...]:
    return int_list(value, name, 2)


def k_shots(value: list, name: str) -> tuple[int, ...]:
    return int_list(value, name, 1)


def names(value: list, name: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise PipelineError(f"params.yaml: {name} must be a list of names, got {value!r}")
    return tuple(sorted(set(value)))


def role_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if AUDIT_ROLES.index(a) <= AUDIT_ROLES.index(b) else (b, a)


def role_pairs(value: list, name: str) -> frozenset[tuple[str, str]]:
    """audit.leak_between ("train/test", ...) as a set of role pairs in AUDIT_ROLES order."""
    found = set()
    for entry in value:
        roles = entry.split("/") if isinstance(entry, str) else []
        if len(roles) != 2 or not set(roles) <= set(AUDIT_ROLES):
            raise PipelineError(f"params.yaml: {name}: {entry!r} is not two roles "
                                f"of {', '.join(AUDIT_ROLES)} as role/role")
        found.add(role_key(*roles))
    return frozenset(found)


def weight_decay(value: Any, name: str) -> float | tuple[float, ...]:
    """A number (L2 on every parameter) or a list: one L2 per conv/linear layer (Koch)."""
    if isinstance(value, list):
        values = tuple(typed(v, f"{name}[{i}]", float) for i, v in enumerate(value))
        for i, v in enumerate(values):
            check_range(v, f"{name}[{i}]", 0, None)
        return values
    value = typed(value, name, float)
    check_range(value, name, 0, None)
    return value


def omniglot_or_path(value: str, name: str) -> str:
    """data/raw (Omniglot, which fetch places there), or a folder or .zip that exists."""
    if Path(value) != paths.RAW and not Path(value).exists():
        raise PipelineError(f"params.yaml: {name} {value!r} is neither data/raw (Omniglot) nor "
                            "a folder or .zip of your images that exists")
    return value


# ---------------------------------------------------------------- the sections


@dataclass(frozen=True)
class DatasetConfig(Section):
    """The images: Omniglot's zips (source data/raw, where fetch places them) or a folder or
    .zip of the user's own, GROUP/CLASS/IMAGE or CLASS/IMAGE, read in place by index."""

    SECTION: ClassVar[str] = "dataset"
    source: str = param(str, check=omniglot_or_path)
    layout: str = param(str, choices=("group/class/image", "class/image"))
    test_by: str = param(str, choices=("group", "class"))
    test_count: int = param(int, lo=1)  # groups or classes, seeded, whose images are all test
    seed: int = param(int, lo=0)
    expected_fingerprint: str | None = param(check=fingerprint)

    def validate(self) -> None:
        if self.layout == "class/image" and self.test_by == "group":
            raise PipelineError("params.yaml: dataset.test_by group needs layout "
                                "group/class/image (class/image is one group); set it to class")

    @property
    def omniglot(self) -> bool:
        return Path(self.source) == paths.RAW


@dataclass(frozen=True)
class FetchConfig(Section):
    SECTION: ClassVar[str] = "fetch"
    source: str = param(check=fetch_source)
    files: tuple[str, ...] = param(list, check=zip_files)
    md5: dict[str, str] = param(check=md5_map)
    retries: int = param(int, lo=0)


@dataclass(frozen=True)
class IndexConfig(Section):
    SECTION: ClassVar[str] = "index"
    image_size: int = param(int, lo=1)
    drawers: int = param(int, lo=1)
    expected_fingerprint: str | None = param(check=fingerprint)
    expected_runs_fingerprint: str | None = param(check=fingerprint)


@dataclass(frozen=True)
class SplitConfig(Section):
    SECTION: ClassVar[str] = "split"
    protocol: str = param(str, choices=("lake", "koch", "vinyals"))
    by: str = param(str, choices=("drawer", "image"))
    train_drawers: int = param(int, lo=1)
    # a trial's query and candidates are by two drawers of the same slice
    valid_drawers: int = param(int, lo=2)
    holdout_drawers: int = param(int, lo=2)
    holdout_alphabets: int = param(int, lo=0)  # protocol lake: whole alphabets held out
    seed: int = param(int, lo=0)
    vinyals_train_alphabets: tuple[str, ...] = param(list, check=names)

    def validate(self) -> None:
        if self.holdout_alphabets and self.protocol != "lake":
            raise PipelineError("params.yaml: split.holdout_alphabets applies to protocol lake "
                                f"only; set it to 0 for protocol {self.protocol}")

    @property
    def drawers(self) -> int:
        """Drawers per character the three slices add up to (checked against the data)."""
        return self.train_drawers + self.valid_drawers + self.holdout_drawers


@dataclass(frozen=True)
class AuditConfig(Section):
    SECTION: ClassVar[str] = "audit"
    near_bits: int = param(int, lo=0, hi=16 * 16)  # of tasks/audit.py's GRID x GRID cells
    tolerance: int = param(int, lo=0, hi=3)
    min_overlap: float = param(float, lo=0.5, hi=1.0)
    leak_between: frozenset[tuple[str, str]] = param(list, check=role_pairs)
    on_leak: str = param(str, choices=("warn", "fail"))
    pictures: int = param(int, lo=0)


@dataclass(frozen=True)
class PairsConfig(Section):
    SECTION: ClassVar[str] = "pairs"
    train_count: int = param(int, lo=0, check=even)
    valid_count: int = param(int, lo=0, check=even)
    negatives: str = param(str, choices=("same_alphabet", "any"))
    seed: int = param(int, lo=0)


@dataclass(frozen=True)
class TrialsConfig(Section):
    SECTION: ClassVar[str] = "trials"
    n_way: tuple[int, ...] = param(list, check=n_ways)
    per_alphabet: int = param(int, lo=1)
    holdout_per_alphabet: int = param(int, lo=1)
    seed: int = param(int, lo=0)
    vinyals_n_way: tuple[int, ...] = param(list, check=n_ways)
    k_shot: tuple[int, ...] = param(list, check=k_shots)
    vinyals_trials: int = param(int, lo=1)


@dataclass(frozen=True)
class TrainConfig(Section):
    SECTION: ClassVar[str] = "train"
    arch: str = param(str, choices=("koch", "compact"))
    image_size: int = param(int, lo=8, hi=105)
    width: int = param(int, lo=1)
    embedding: int = param(int, lo=1)
    init: str = param(str, choices=("default", "koch"))
    head: str = param(str, choices=("koch", "euclidean", "cosine"))  # siamese.model.HEADS
    objective: str = param(str, choices=("episodes", "pairs"))
    device: str = param(check=device_name)
    seed: int = param(int, lo=0)
    steps: int = param(int, lo=1)
    max_minutes: float = param(float, lo=0)
    optimizer: str = param(str, choices=("adam", "sgd"))
    lr: float = param(float, check=positive)
    momentum: float = param(float, lo=0, hi=0.999)
    weight_decay: float | tuple[float, ...] = param(check=weight_decay)
    schedule: str = param(str, choices=("cosine", "constant"))
    batch_pairs: int = param(int, lo=2)
    episode_alphabets: int = param(int, lo=1)
    episode_characters: int = param(int, lo=2)
    rotations: int = param(int, lo=1, hi=4)
    augment_probability: float = param(float, lo=0, hi=1)
    eval_every: int = param(int, lo=1)
    patience: int = param(int, lo=0)
    ema: float = param(float, lo=0)  # < 1, checked in validate
    threads: int = param(int, lo=0)
    cpu_paths: str = param(str, choices=("avx2", "native"))  # siamese.cpu.PATHS
    digest: str = ""  # sha256 of the section as given (canonical JSON), set by parse

    @classmethod
    def parse(cls, params: dict[str, Any]) -> Self:
        config = super().parse(params)
        text = json.dumps(section(params, cls.SECTION), sort_keys=True, default=str)
        object.__setattr__(config, "digest", hashlib.sha256(text.encode()).hexdigest())
        return config

    def validate(self) -> None:
        if self.ema >= 1:
            raise PipelineError(f"params.yaml: train.ema must be < 1 (a decay), got {self.ema}")

    def model_options(self) -> dict[str, Any]:
        common = {"init": self.init, "head": self.head}
        if self.arch == "compact":
            return {"width": self.width, "embedding": self.embedding, **common}
        return common


@dataclass(frozen=True)
class EvaluateConfig(Section):
    SECTION: ClassVar[str] = "evaluate"
    seed: int = param(int, lo=0)
    pictures: int = param(int, lo=0, hi=100)
    device: "torch.device" = param(str, check=this_machines_device)
    batch_size: int = param(int, lo=1)
    tta: int = param(int, lo=0, hi=64)  # distorted copies averaged into each embedding

