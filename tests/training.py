"""Helpers for the training tests: a project folder over a built data folder, and its params;
the project's params with train edits; a checkpoint's weights."""

from pathlib import Path
from typing import Any

import yaml

from tests import REPO


def train_project(folder: Path, data_root: Path, **train: Any) -> dict[str, Any]:
    """folder/ with data -> data_root/data (read-only) and params.yaml (train edited); params."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "data").exists():
        (folder / "data").symlink_to((data_root / "data").resolve(), target_is_directory=True)
    params = yaml.safe_load((data_root / "params.yaml").read_text())
    params["train"].update(train)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def params_with(**train) -> dict:
    """The project's params.yaml, as a dict, with `train` merged into its train section."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(train)
    return params


def weights(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)["state_dict"]
