"""`siamese verify --remote` checks each folder's `.dir` listing against its md5 as well as
every file it names, restores what the remote lacks from a good copy, and says in one line
which folder it could not read (issue 29, item 6)."""

import ctypes
import json
import os
import subprocess
from pathlib import Path

import pytest

from flows.verify import verify
from tests.flowkit import git_commit_all
from tests.verifykit import BIN, add_remote, listing_of, make_project, object_of, sh

SIAMESE = str(BIN / "siamese")
# prctl(PR_CAPBSET_DROP, cap): what root loses to be refused like any user.
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


@pytest.fixture
def store(project, tmp_path) -> Path:
    return add_remote(project, tmp_path / "remote")


def lines(actions) -> list[str]:
    return [str(action) for action in actions]


def test_a_listing_with_two_md5s_swapped_is_repaired_from_the_cache(project, store, tmp_path):
    """Unrepaired, `dvc pull` in a fresh clone would swap the two files' contents."""
    listing = listing_of(store)
    entries = json.loads(listing.read_text())
    entries[0]["md5"], entries[1]["md5"] = entries[1]["md5"], entries[0]["md5"]
    listing.chmod(0o644)
    listing.write_text(json.dumps(entries))
    copies, actions = verify(project, with_remote=True)
    assert [(c.place, c.md5) for c in copies if c.state != "good"] == [
        ("remote", listing.parent.name + listing.name)]
    assert lines(actions) == [
        f"repaired pics/ (its .dir listing) in the remote ({listing}) from the cache's copy"]
    assert listing.read_bytes() == listing_of(project / ".dvc/cache").read_bytes()
    git_commit_all(project, "a project with a remote")
    sh(tmp_path, "git", "clone", "-q", str(project), "clone")
    sh(tmp_path / "clone", "dvc", "pull", "-q")
    assert [(tmp_path / "clone/pics" / name).read_text() for name in ("0.txt", "1.txt")] == [
        (project / "pics" / name).read_text() for name in ("0.txt", "1.txt")]


def test_a_corrupt_local_listing_is_repaired_from_the_remote(project, store):
    listing = listing_of(project / ".dvc/cache")
    listing.chmod(0o644)
    listing.write_text(listing.read_text().replace("0.txt", "9.txt"))
    _, actions = verify(project, with_remote=True)
    assert lines(actions) == [
        f"repaired pics/ (its .dir listing) in the cache ({listing}) from the remote's copy"]
    assert listing.read_bytes() == listing_of(store).read_bytes()


def test_a_missing_remote_object_is_named_and_restored_from_the_cache(project, store):
    picture = project / "pics/1.txt"
    obj = object_of(store, picture.read_bytes())
    obj.unlink()
    done = sh(project, SIAMESE, "verify", "--remote")
    assert done.stdout.splitlines() == [
        f"restored pics/1.txt in the remote ({obj}), which lacked it, from the cache's copy",
        "verify: workspace: 3 good; cache: 4 good; remote: 3 good, 1 missing"]
    assert obj.read_bytes() == picture.read_bytes()


def refused_like_any_user() -> None:
    """A preexec_fn: root keeps its uid but no longer reads past a folder's permissions (any
    other user is refused already)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_an_unreadable_shard_folder_is_one_line(project, store):
    shard = object_of(store, (project / "pics/0.txt").read_bytes()).parent
    shard.chmod(0)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    try:
        done = subprocess.run([SIAMESE, "verify", "--remote"], cwd=project, env=env,
                              capture_output=True, text=True, preexec_fn=refused_like_any_user)
    finally:
        shard.chmod(0o755)
    assert done.returncode == 1
    assert (f"cannot read {shard} (the remote's): Permission denied; 1 file(s) there not "
            "checked, fix it and rerun") in done.stdout.splitlines()
    assert done.stderr == "siamese verify: error: 1 folder(s) could not be read (see above)\n"
