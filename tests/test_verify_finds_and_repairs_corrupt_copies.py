"""`siamese verify`: every output of dvc.lock re-hashed in the workspace, the cache and the
remote; a corrupt copy is repaired from a good one, or removed for `dvc repro` to rebuild."""

from pathlib import Path

import pytest

from flows.verify import verify
from siamese.errors import PipelineError
from tests.verifykit import BIN, add_remote, flip, make_project, object_of, sh


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def lines(actions) -> list[str]:
    return [str(action) for action in actions]


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
    assert lines(repairs) == [f"repaired out.txt in the workspace ({project / 'out.txt'}) from "
                              "the cache's copy"]
    assert (project / "out.txt").read_bytes() == good


def test_a_corrupt_cache_object_is_restored_from_the_workspace(project):
    picture = project / "pics/1.txt"
    obj = object_of(project / ".dvc/cache", picture.read_bytes())
    flip(obj)
    _, repairs = verify(project)
    assert lines(repairs) == [f"repaired pics/1.txt in the cache ({obj}) from the workspace's copy"]
    assert obj.read_bytes() == picture.read_bytes()
    assert verify(project)[1] == []


def test_no_good_copy_left_is_removed_and_dvc_repro_rebuilds_it(project):
    """The issue's case: the cached copy corrupt, the workspace copy deleted: `dvc checkout`
    would serve the corrupt bytes; after verify, `dvc repro` rebuilds them."""
    good = (project / "out.txt").read_bytes()
    obj = object_of(project / ".dvc/cache", good)
    flip(obj)
    (project / "out.txt").unlink()
    done = sh(project, str(BIN / "siamese"), "verify", check=False)
    assert done.returncode == 1
    assert f"removed out.txt in the cache ({obj}): no good copy left" in done.stdout
    assert done.stderr == ("siamese verify: error: 1 corrupt file(s) had no good copy left and "
                           "were removed; `dvc repro` rebuilds them\n")
    sh(project, "dvc", "repro", "-q")
    assert (project / "out.txt").read_bytes() == good and obj.read_bytes() == good


def test_a_corrupt_remote_object_is_repaired_from_the_cache(project, tmp_path):
    store = add_remote(project, tmp_path / "remote")
    obj = object_of(store, (project / "pics/0.txt").read_bytes())
    flip(obj)
    assert verify(project)[1] == []  # without --remote, the remote is not read
    copies, repairs = verify(project, with_remote=True)
    assert [c.relpath for c in copies if c.state == "corrupt"] == ["0.txt"]
    assert lines(repairs) == [f"repaired pics/0.txt in the remote ({obj}) from the cache's copy"]
    assert obj.read_bytes() == (project / "pics/0.txt").read_bytes()


def test_verify_remote_without_a_remote_is_one_line(project):
    with pytest.raises(PipelineError, match="no DVC remote is configured"):
        verify(project, with_remote=True)
