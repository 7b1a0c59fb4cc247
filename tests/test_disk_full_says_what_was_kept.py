"""A full disk is one line for every write, torch.save's included: the file, the bytes it needs
(where the size is not known before writing: more than what fit) and the bytes free, and
what is truly kept: the previous file, or none under `dvc repro`, which removed it first.

The write's temporary file is a link to /dev/full, which answers every write with the kernel's
ENOSPC, as a full disk does: the real writers (numpy, pyarrow, torch.save, DVC's stage) meet it.
"""

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from siamese.atomic import atomic_path, write_npy, write_parquet, write_text
from siamese.errors import PipelineError
from siamese.model import build_model, save_checkpoint
from tests import REPO
from tests.flowkit import git_commit_all, init_repo, run

# Installed as sitecustomize (for DVC's stage processes) or called in this process: the
# temporaries whose names start with $FULL_DISK_FOR are links to /dev/full.
FULL_DISK = """
import os
import tempfile

real_mkstemp = tempfile.mkstemp


def mkstemp(*args, **kwargs):
    fd, name = real_mkstemp(*args, **kwargs)
    if os.path.basename(name).startswith(os.environ["FULL_DISK_FOR"]):
        os.close(fd)
        os.unlink(name)
        os.symlink("/dev/full", name)
        fd = os.open(name, os.O_WRONLY)
    return fd, name
"""
LINE = (r"(?P<target>\S+): disk full, not written \(needs (?P<needs>(more than )?\d+ bytes), "
        r"\d+ bytes free on its file system\); (?P<kept>[^;]+); free space and rerun")


@pytest.fixture
def full_disk(monkeypatch) -> None:
    """Every temporary of siamese/atomic.py in this process writes to /dev/full."""
    names: dict[str, Callable] = {}
    exec(FULL_DISK, names)
    monkeypatch.setenv("FULL_DISK_FOR", ".")
    monkeypatch.setattr(tempfile, "mkstemp", names["mkstemp"])


def small_model(path: Path) -> None:
    save_checkpoint(path, build_model("compact", 28, width=8, depth=2, embedding=16),
                    {"step": 1, "valid_accuracy": 0.0, "params_digest": "t"})


def torch_save(path: Path) -> None:
    """As siamese/checkpoints.py saves models/checkpoints/last.pt."""
    with atomic_path(path) as tmp:
        torch.save({"weights": torch.zeros(1000)}, tmp)


FRAME = pd.DataFrame({"a": range(1000)})
# kind: (the write, the bytes it needs; None: as many as the file has where there is room)
WRITES: dict[str, tuple[Callable[[Path], object], str | None]] = {
    "text": (lambda path: write_text("x" * 1000, path), "1000 bytes"),
    "npy": (lambda path: write_npy(np.zeros((10, 100), np.uint8), path), "1128 bytes"),
    "parquet": (lambda path: write_parquet(FRAME, path), None),
    # torch.save's size is known once written: what fit (on /dev/full, nothing) is said
    "model.pt": (small_model, "more than 0 bytes"),
    "last.pt": (torch_save, "more than 0 bytes"),
}


def target_name(kind: str) -> str:
    return f"out.{kind}"


@pytest.mark.parametrize("kind", WRITES)
def test_a_full_disk_is_one_line_with_the_bytes_and_the_previous_file_kept(
        tmp_path_factory, tmp_path, kind, request):
    write, needs = WRITES[kind]
    if needs is None:
        room = tmp_path_factory.mktemp("room") / target_name(kind)
        write(room)
        needs = f"{room.stat().st_size} bytes"
    request.getfixturevalue("full_disk")
    target = tmp_path / target_name(kind)
    target.write_bytes(b"previous")
    with pytest.raises(PipelineError) as raised:
        write(target)
    said = re.fullmatch(LINE, str(raised.value))
    assert said, str(raised.value)
    assert said["target"] == str(target) and said["needs"] == needs
    assert said["kept"] == "the previous file is kept"
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_with_no_previous_file_the_line_says_so(tmp_path, full_disk, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    with pytest.raises(PipelineError, match="; there was no previous one; free space and rerun$"):
        write_text("x", tmp_path / "new.txt")
    assert list(tmp_path.iterdir()) == []


def test_under_dvc_repro_the_line_does_not_claim_the_removed_file_is_kept(tmp_path):
    """The params stage of dvc.yaml on a disk that fills as it writes data/params.checked."""
    root = tmp_path / "project"
    for package in ("tasks", "siamese"):  # the stage's code deps (dvc.yaml)
        shutil.copytree(REPO / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "params.yaml", root)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"params": stages["params"]}}))
    init_repo(root)
    run(["dvc", "repro"], root)
    git_commit_all(root, "params checked")
    checked = root / stages["params"]["outs"][0]
    assert checked.exists()
    text = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(text.replace("  seed: 4\n", "  seed: 5\n", 1))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FULL_DISK + "\ntempfile.mkstemp = mkstemp\n")
    done = run(["dvc", "repro"], root, check=False, PYTHONPATH=f"{site}{os.pathsep}{root}",
               FULL_DISK_FOR=f".{checked.name}.tmp-")  # the copy's code, on a full disk
    said = re.search(rf"siamese params: error: {LINE}\n", done.stdout + done.stderr)
    assert done.returncode != 0 and said, done.stdout + done.stderr
    assert said["target"] == str(checked.relative_to(root)) and not checked.exists()
    assert said["kept"] == ("no previous one is kept (dvc repro removes a stage's outputs "
                            "before running it)")
    assert not list(checked.parent.glob(f".{checked.name}.*"))  # no temporary left
