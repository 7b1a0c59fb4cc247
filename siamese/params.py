"""params.yaml: loading, and the checks that turn a bad value into a clear error.

Each stage validates its own section with these helpers, so that the message names the
parameter (`train.lr`), the file and the value.
"""

from pathlib import Path
from typing import Any

import yaml

from siamese import paths
from siamese.errors import PipelineError


def load_params(path: Path | str = paths.PARAMS) -> dict[str, Any]:
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


def get(sec: dict[str, Any], key: str, name: str, kind: type | tuple[type, ...]) -> Any:
    """Return `sec[key]`, checked to be of `kind`; `name` is the dotted name for messages."""
    if key not in sec:
        raise PipelineError(f"params.yaml: {name} is missing")
    value = sec[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise PipelineError(f"params.yaml: {name} must be a number, got {value!r}")
    if kind is float:
        kind = (int, float)
    if not isinstance(value, kind):
        raise PipelineError(f"params.yaml: {name} has the wrong type: {value!r}")
    return value


def get_int(
    sec: dict[str, Any], key: str, name: str, lo: int | None = None, hi: int | None = None
) -> int:
    value = get(sec, key, name, int)
    check_range(value, name, lo, hi)
    return value


def get_float(
    sec: dict[str, Any], key: str, name: str, lo: float | None = None, hi: float | None = None
) -> float:
    value = float(get(sec, key, name, float))
    check_range(value, name, lo, hi)
    return value


def get_choice(sec: dict[str, Any], key: str, name: str, choices: tuple[str, ...]) -> str:
    value = get(sec, key, name, str)
    if value not in choices:
        raise PipelineError(
            f"params.yaml: {name} must be one of {', '.join(choices)}; got {value!r}"
        )
    return value


def check_range(value: float, name: str, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise PipelineError(f"params.yaml: {name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise PipelineError(f"params.yaml: {name} must be <= {hi}, got {value}")
