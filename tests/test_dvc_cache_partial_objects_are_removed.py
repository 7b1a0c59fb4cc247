"""Partial objects that a DVC write stopped by a full disk (or a kill) leaves in the cache are
removed before the next pull or flow run, so the retry has the space it needs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import remote
from siamese.errors import PipelineError

BIN = Path(sys.executable).parent


def dvc_project(root: Path) -> Path:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for args in (["git", "init", "-q"], ["dvc", "init", "-q"],
                 ["dvc", "config", "core.analytics", "false"]):
        subprocess.run(args, cwd=root, check=True, env=env)
    (root / "data.txt").write_text("the images")
    subprocess.run(["dvc", "add", "-q", "data.txt"], cwd=root, check=True, env=env)
    return root


def plant_partial(root: Path) -> tuple[list[Path], Path]:
    objects = [p for p in (root / ".dvc/cache").rglob("*") if p.is_file()]
    assert len(objects) == 1
    partial = [objects[0].parent / ".Q2x9vLr3T0aA8bCdEfGh1w.tmp", root / ".dvc/cache/files/md5"
               / "ab" / ".Zz00Yy11Xx22Ww33Vv44Uu.tmp"]
    for path in partial:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 100_000)
    return partial, objects[0]


def test_the_partial_objects_go_and_the_objects_stay(tmp_path):
    root = dvc_project(tmp_path)
    partial, kept = plant_partial(root)
    assert remote.remove_partial_objects(root) == 2
    assert not any(p.exists() for p in partial) and kept.exists()
    assert remote.remove_partial_objects(root) == 0


def test_siamese_pull_removes_them_without_a_remote(tmp_path):
    root = dvc_project(tmp_path)
    partial, kept = plant_partial(root)
    done = subprocess.run([str(BIN / "siamese"), "pull"], cwd=root, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "dvc cache: removed 2 partial objects (200,000 bytes)" in done.stdout
    assert not any(p.exists() for p in partial) and kept.exists()


def test_a_held_lock_leaves_them_and_says_who_holds_it(tmp_path):
    root = dvc_project(tmp_path)
    partial, _ = plant_partial(root)
    hold = ("import sys; from dvc.repo import Repo, lock_repo\n"
            "with Repo('.') as repo, lock_repo(repo):\n"
            "    print('locked', flush=True); sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=root, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PipelineError, match=r"DVC's lock .* is held by pid"):
            remote.remove_partial_objects(root)
    finally:
        holder.communicate("")
    assert all(p.exists() for p in partial)
