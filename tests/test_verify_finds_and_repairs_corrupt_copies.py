"""`siamese verify`: every output of dvc.lock re-hashed in the workspace, the cache and the
remote; a corrupt copy is repaired from a good one, or removed for `dvc repro` to rebuild."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.verify import verify
from siamese.errors import PipelineError

BIN = Path(sys.executable).parent
MAKE = ("import pathlib; p = pathlib.Path; p('pics').mkdir(exist_ok=True); "
        "p('out.txt').write_text('the output ' * 100); "
        "[p(f'pics/{i}.txt').write_text(f'picture {i} ' * 50) for i in range(2)]")


def sh(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, check=check)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    sh(tmp_path, "git", "init", "-q")
    sh(tmp_path, "dvc", "init", "-q")
    sh(tmp_path, "dvc", "config", "core.analytics", "false")
    (tmp_path / "dvc.yaml").write_text(
        f"stages:\n  make:\n    cmd: python -c \"{MAKE}\"\n    outs: [out.txt, pics]\n")
    sh(tmp_path, "dvc", "repro", "-q")
    return tmp_path


def cached(root: Path, path: Path) -> Path:
    """The cache object of a workspace file (same bytes)."""
    data = path.read_bytes()
    return next(p for p in (root / ".dvc/cache").rglob("*")
                if p.is_file() and p.read_bytes() == data)


def flip(path: Path) -> None:
    """Sixteen bytes changed in place, size and mtime kept (what DVC does not notice)."""
    stat = path.stat()
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[10:26] = bytes(b ^ 0xFF for b in data[10:26])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_clean_project_verifies_clean(project):
    copies, repairs = verify(project)
    assert repairs == [] and {c.state for c in copies} == {"good"}
    assert {(c.place, c.relpath) for c in copies} == {
        (place, rel) for place in ("workspace", "cache") for rel in ("", "0.txt", "1.txt")}


def test_a_corrupt_workspace_file_with_its_mtime_kept_is_restored_from_the_cache(project):
    good = (project / "out.txt").read_bytes()
    flip(project / "out.txt")
    assert "up to date" in sh(project, "dvc", "status").stdout  # DVC does not see it
    _, repairs = verify(project)
    assert repairs == [f"repaired out.txt in the workspace ({project / 'out.txt'}) from the "
                       "cache's copy"]
    assert (project / "out.txt").read_bytes() == good


def test_a_corrupt_cache_object_is_restored_from_the_workspace(project):
    picture = project / "pics/1.txt"
    obj = cached(project, picture)
    flip(obj)
    _, repairs = verify(project)
    assert repairs == [f"repaired pics/1.txt in the cache ({obj}) from the workspace's copy"]
    assert obj.read_bytes() == picture.read_bytes()
    assert verify(project)[1] == []


def test_no_good_copy_left_is_removed_and_dvc_repro_rebuilds_it(project):
    """The issue's case: the cached copy corrupt, the workspace copy deleted: `dvc checkout`
    would serve the corrupt bytes; after verify, `dvc repro` rebuilds them."""
    good = (project / "out.txt").read_bytes()
    obj = cached(project, project / "out.txt")
    flip(obj)
    (project / "out.txt").unlink()
    done = sh(project, str(BIN / "siamese"), "verify", check=False)
    assert done.returncode == 1
    assert f"removed out.txt in the cache ({obj}): no good copy left" in done.stdout
    assert done.stderr == ("siamese verify: error: 1 corrupt file(s) had no good copy left and "
                           "were removed; `dvc repro` rebuilds them\n")
    sh(project, "dvc", "repro", "-q")
    assert (project / "out.txt").read_bytes() == good and obj.read_bytes() == good


def test_a_corrupt_remote_object_is_repaired_from_the_cache(project, tmp_path_factory):
    store = tmp_path_factory.mktemp("remote")
    sh(project, "dvc", "remote", "add", "-q", "-d", "shared", str(store))
    sh(project, "dvc", "push", "-q")
    obj = next(p for p in store.rglob("*") if p.is_file()
               and p.read_bytes() == (project / "pics/0.txt").read_bytes())
    flip(obj)
    assert verify(project)[1] == []  # without --remote, the remote is not read
    copies, repairs = verify(project, with_remote=True)
    assert [c.relpath for c in copies if c.state == "corrupt"] == ["0.txt"]
    assert repairs == [f"repaired pics/0.txt in the remote ({obj}) from the workspace's copy"]
    assert obj.read_bytes() == (project / "pics/0.txt").read_bytes()


def test_verify_remote_without_a_remote_is_one_line(project):
    with pytest.raises(PipelineError, match="no DVC remote is configured"):
        verify(project, with_remote=True)
