"""Temporaries of killed writers are removed by the next write of the same file; a disk that
fills during a write is one line naming the file, and the previous file stays."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from siamese.atomic import atomic_path, write_text
from siamese.errors import PipelineError


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "images.parquet"
    dead = dead_pid()
    left = [tmp_path / f".images.parquet.tmp-{dead}-x1y2", tmp_path / ".images.parquet.tmp-ab_c9"]
    for path in left:
        path.write_bytes(b"half a file")
    alive = tmp_path / f".images.parquet.tmp-{os.getppid()}-z"  # a writer still running
    alive.write_bytes(b"being written")
    other = tmp_path / f".split.parquet.tmp-{dead}-q"  # another file's: its own next write
    other.write_bytes(b"")
    write_text("new", target)
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [target.name, alive.name, other.name])


def test_a_folders_copy_set_aside_is_kept_until_the_folder_is_back(tmp_path):
    target = tmp_path / "pictures"
    aside = tmp_path / f".pictures.old-{dead_pid()}-k"
    (aside / "pictures").mkdir(parents=True)
    (aside / "pictures/a.png").write_bytes(b"the only copy")
    with atomic_path(tmp_path / "other.txt") as tmp:  # another target: not touched
        tmp.write_text("x")
    assert aside.exists()
    with atomic_path(target, is_dir=True) as tmp:  # target missing: the copy is the only one
        (tmp / "b.png").write_bytes(b"new")
    assert aside.exists()
    with atomic_path(target, is_dir=True) as tmp:  # target back: the copy goes
        (tmp / "c.png").write_bytes(b"newer")
    assert not aside.exists() and sorted(p.name for p in target.iterdir()) == ["c.png"]


@pytest.mark.parametrize("write", ["text", "npy"])
def test_a_full_disk_is_one_line_naming_the_file_and_the_previous_file_stays(tmp_path, write):
    """/dev/full answers every write with the kernel's ENOSPC, as a full disk does."""
    target = tmp_path / "pixels.npy"
    target.write_bytes(b"previous")

    def fill(tmp: Path) -> None:
        with open("/dev/full", "wb") as f:
            if write == "npy":
                np.save(f, np.zeros(1 << 20, dtype=np.uint8), allow_pickle=False)
            else:
                f.write(b"x" * 4096)
                f.flush()

    with pytest.raises(PipelineError) as raised, atomic_path(target) as tmp:
        fill(tmp)
    message = str(raised.value)
    assert message.startswith(f"{target}: disk full, not written (needs ") and "\n" not in message
    assert "bytes free on its file system" in message
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["pixels.npy"]


def test_a_checkpoint_written_by_two_processes_is_the_same_bytes(tmp_path):
    """torch.save names its archive's folder after the file name up to its last dot: the
    temporary's pid must not reach the bytes of model.pt."""
    write = ("import sys, torch; from siamese.atomic import atomic_path\n"
             "with atomic_path(sys.argv[1]) as tmp: torch.save({'w': torch.arange(4.0)}, tmp)\n")
    for run in ("a", "b"):
        subprocess.run([sys.executable, "-c", write, str(tmp_path / run / "model.pt")],
                       check=True)
    assert (tmp_path / "a/model.pt").read_bytes() == (tmp_path / "b/model.pt").read_bytes()
