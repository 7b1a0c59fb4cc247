"""Under `dvc repro`, a stage refuses an input whose bytes are not what dvc.lock records for the
stage that wrote it: DVC trusts a file whose size and mtime it has seen, so a file scrambled in
place would flow downstream. Outside DVC nothing is checked."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from siamese import paths
from siamese.errors import PipelineError
from siamese.images import load_pixels
from siamese.lockcheck import check_input, file_md5

BIN = Path(sys.executable).parent


def flip_in_place(path: Path, offset: int = -40) -> None:
    """Sixteen bytes flipped, size and mtime kept, as a corrupt restore leaves them."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[offset:offset + 16] = bytes(b ^ 0xFF for b in data[offset:offset + 16])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def write_lock(root: Path, outs: dict[str, str]) -> None:
    entries = [{"path": p, "hash": "md5", "md5": md5, "size": 1} for p, md5 in outs.items()]
    (root / "dvc.lock").write_text(yaml.safe_dump(
        {"schema": "2.0", "stages": {"index": {"cmd": "siamese index", "outs": entries}}}))


@pytest.fixture
def in_stage(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_STAGE", "train")
    return tmp_path


def test_a_manifest_scrambled_after_its_stage_wrote_it_is_refused_in_one_line(in_stage):
    paths.IMAGES.parent.mkdir(parents=True)
    pd.DataFrame({"image_id": range(50), "character": ["Z" * 16] * 50}).to_parquet(
        paths.IMAGES, compression=None)
    write_lock(in_stage, {paths.IMAGES.as_posix(): file_md5(paths.IMAGES)})
    assert len(paths.read_manifest(paths.IMAGES, "index")) == 50

    data = paths.IMAGES.read_bytes()  # another character's name, the file still parses
    flip_in_place(paths.IMAGES, offset=data.index(b"Z" * 16) - len(data))
    assert len(pd.read_parquet(paths.IMAGES)) == 50
    with pytest.raises(PipelineError) as error:
        paths.read_manifest(paths.IMAGES, "index")
    line = str(error.value)
    assert line.startswith(f"{paths.IMAGES}: md5 ") and "\n" not in line
    assert "dvc.lock records for the index stage's output" in line
    assert "siamese verify" in line and "dvc repro --force index" in line


def test_packed_pixels_are_checked_too(in_stage):
    paths.PIXELS.parent.mkdir(parents=True)
    np.save(paths.PIXELS, np.zeros((4, 105, 14), dtype=np.uint8))
    write_lock(in_stage, {paths.PIXELS.as_posix(): file_md5(paths.PIXELS)})
    assert load_pixels(paths.PIXELS).shape == (4, 105, 105)
    flip_in_place(paths.PIXELS)
    with pytest.raises(PipelineError, match="pixels.npy: md5 .* index stage's output"):
        load_pixels(paths.PIXELS)


def test_nothing_is_checked_outside_dvc_or_for_files_the_lock_does_not_name(in_stage, monkeypatch):
    data = in_stage / "a.bin"
    data.write_bytes(b"x" * 64)
    write_lock(in_stage, {"a.bin": "0" * 32, "folder": "1" * 32 + ".dir"})
    (in_stage / "folder").mkdir()
    (in_stage / "folder" / "b.bin").write_bytes(b"y")
    check_input(Path("folder/b.bin"))  # a member of a folder output: DVC hashes the folder
    check_input(Path("other.bin"))  # not an output
    monkeypatch.delenv("DVC_STAGE")
    check_input(data.relative_to(in_stage))  # by hand or in a test: the workspace may differ
    monkeypatch.setenv("DVC_STAGE", "train")
    with pytest.raises(PipelineError, match="a.bin: md5"):
        check_input(Path("a.bin"))
    (in_stage / "dvc.lock").unlink()
    check_input(Path("a.bin"))  # no lock: nothing recorded


READ = ("from pathlib import Path; from siamese.lockcheck import check_input; "
        "check_input(Path('a.txt')); print('read', Path('a.txt').read_text())")


def test_real_dvc_repro_stops_the_stage_that_reads_a_scrambled_output(tmp_path):
    """DVC itself does not notice (same size and mtime: `dvc status` is clean)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    stages = {"write": {"cmd": "python -c \"open('a.txt', 'w').write('0123456789' * 10)\"",
                        "outs": ["a.txt"]},
              "read": {"cmd": f'python -c "{READ}"', "deps": ["a.txt"]}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))

    def dvc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["dvc", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True)

    for args in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(args, cwd=tmp_path, env=env, check=True)
    assert dvc("repro").returncode == 0
    flip_in_place(tmp_path / "a.txt", offset=10)
    assert "up to date" in dvc("status").stdout
    done = dvc("repro", "--force", "--single-item", "read")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if "a.txt: md5" in line]
    assert errors and "the write stage's output" in errors[0], done.stderr
    assert dvc("repro", "--force").returncode == 0  # the plain retry rebuilds it
