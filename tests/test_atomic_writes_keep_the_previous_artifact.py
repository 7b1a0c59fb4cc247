"""siamese/atomic.py: a write that fails leaves the previous artifact as it was."""

import os

import pytest

from siamese import atomic
from siamese.atomic import atomic_path, write_text


def test_a_failed_file_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    write_text("old\n", target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_folder_is_replaced_whole_and_the_previous_one_removed(tmp_path):
    target = tmp_path / "pictures"
    for content in ("old", "new"):
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / f"{content}.png").write_text(content)
    assert [p.name for p in target.iterdir()] == ["new.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pictures"]


def test_a_folder_swap_killed_between_its_renames_keeps_the_previous_folder_whole(
    tmp_path, monkeypatch
):
    target = tmp_path / "pictures"
    with atomic_path(target, is_dir=True) as tmp:
        (tmp / "old.png").write_text("old")
    real_replace = os.replace

    def replace_then_die(src, dst):
        real_replace(src, dst)
        if str(src) == str(target):
            raise KeyboardInterrupt  # killed after moving the old folder aside

    monkeypatch.setattr(atomic.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt), atomic_path(target, is_dir=True) as tmp:
        (tmp / "new.png").write_text("new")
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".pictures.old-")]
    assert len(aside) == 1
    assert (aside[0] / "pictures" / "old.png").read_text() == "old"
