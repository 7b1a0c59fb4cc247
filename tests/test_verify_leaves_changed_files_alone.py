"""`siamese verify` repairs only what is provably corrupt: a workspace file whose inode, size
and mtime are those DVC last hashed (its state database) while its bytes are not. A file
changed since (an edit not yet committed, a stage's interrupted work) is reported as modified,
as `dvc status` says, and kept; a `persist` output is never replaced from the cache; a failed
repair leaves no temporary behind (issue 29, items 1, 2 and 11)."""

import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest

from tests.flowkit import OFFLINE, git_commit_all
from tests.verifykit import (
    BIN,
    background,
    dvc_project,
    flip,
    make_project,
    object_of,
    sh,
    training_project,
    wait_for,
)

SIAMESE = str(BIN / "siamese")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def test_a_users_edit_is_reported_modified_and_kept(project):
    """Issue 29, item 2: an edit of a tracked output, same size, not yet `dvc commit`ted."""
    out = project / "out.txt"
    edited = out.read_text().replace("the output", "our output")
    out.chmod(0o644)
    out.write_text(edited)
    assert "modified:" in sh(project, "dvc", "status").stdout
    done = sh(project, SIAMESE, "verify")
    assert done.stdout.splitlines()[0] == (
        f"modified out.txt in the workspace ({out}): changed since DVC hashed it, as `dvc status` "
        "says; left as it is (`dvc commit` records it, `dvc checkout --force` restores dvc.lock's)")
    assert "workspace: 2 good, 1 modified" in done.stdout
    assert out.read_text() == edited


def test_a_persist_output_a_killed_stage_left_is_kept_for_it_to_resume(tmp_path):
    """Issue 29, item 1: the stage killed (kill -9) after a checkpoint in its persist output;
    verify keeps the checkpoint, and the rerun resumes from it rather than starting fresh."""
    project = training_project(tmp_path / "project")
    (project / "params.yaml").write_text("steps: 8\n")
    repro = background(project, "dvc", "repro", STOP_AT="6")
    wait_for(project / "stopped", repro)
    os.kill(int((project / "stopped").read_text()), signal.SIGKILL)
    assert repro.wait(timeout=60) != 0
    ckpt = project / "ckpt.txt"
    assert ckpt.read_text() == "6"
    done = sh(project, SIAMESE, "verify")
    assert (f"modified ckpt.txt in the workspace ({ckpt}): changed since DVC hashed it, as `dvc "
            "status` says; left as it is (a persist output, which its stage resumes from)"
            ) in done.stdout.splitlines()
    assert ckpt.read_text() == "6"
    rerun = sh(project, "dvc", "repro")
    assert "resuming from step 6" in rerun.stdout
    assert (project / "model.txt").read_text() == "trained 8 steps"


def test_a_corrupt_persist_output_is_never_replaced_from_the_cache(tmp_path):
    project = training_project(tmp_path / "project")
    ckpt = project / "ckpt.txt"
    ckpt.write_text("4" * 40)  # long enough to flip
    sh(project, "dvc", "commit", "-f", "-q")
    flip(ckpt)
    flipped = ckpt.read_bytes()
    done = sh(project, SIAMESE, "verify")
    assert (f"corrupt ckpt.txt in the workspace ({ckpt}), left as it is: a persist output, never "
            "replaced from the cache (its stage checks it before resuming)"
            ) in done.stdout.splitlines()
    assert ckpt.read_bytes() == flipped


def limit_file_size(size: int):
    """A preexec_fn: files of the process may not grow past `size` bytes (writes past it fail
    with EFBIG, as a full disk fails them with ENOSPC; Python ignores SIGXFSZ)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def test_a_failed_repair_leaves_no_temporary(tmp_path):
    """Issue 29, item 11: the copy from the cache fails half-way, as on a full disk (here the
    file-size limit: DVC's state databases, 32 kB, stay under it)."""
    project = dvc_project(tmp_path / "project", "stages:\n  make:\n    cmd: python -c "
                          "\"open('big.txt', 'w').write('x' * 200_000)\"\n    outs: [big.txt]\n")
    big = project / "big.txt"
    flip(big)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([SIAMESE, "verify"], cwd=project, env=env, capture_output=True,
                          text=True, preexec_fn=limit_file_size(100_000))
    assert done.returncode == 1
    assert (f"could not repair big.txt in the workspace ({big}): File too large; left as it was"
            ) in done.stdout.splitlines()
    assert done.stderr == ("siamese verify: error: 1 repair(s) failed, the files left as they "
                           "were (see above)\n")
    assert list(project.glob(".*verify*")) == []
    assert "repaired big.txt in the workspace" in sh(project, SIAMESE, "verify").stdout


def test_the_temporaries_of_a_killed_verify_are_removed(project):
    """A verify killed mid-repair (kill -9) leaves `.NAME.verify-PID`; the next one removes
    those whose process no longer runs, in the workspace and in the cache."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    obj = object_of(project / ".dvc/cache", (project / "out.txt").read_bytes())
    left = [project / f".out.txt.verify-{gone.pid}",
            obj.with_name(f".{obj.name}.verify-{gone.pid}")]
    running = project / f".out.txt.verify-{os.getpid()}"  # a verify still at work
    for path in [*left, running]:
        path.write_text("half a copy")
    done = sh(project, SIAMESE, "verify")
    assert done.stdout.splitlines()[0] == (
        "removed 2 temporaries that a killed verify left beside the files it was repairing")
    assert [p.exists() for p in left] == [False, False] and running.exists()


@pytest.mark.slow
def test_a_flow_run_after_a_killed_stage_resumes_from_its_checkpoint(tmp_path, prefect_api):
    """Issue 29, item 1, as an operator meets it: `siamese run`, the stage killed (kill -9)
    after a checkpoint, `siamese run` again: the pre-stage verify keeps the checkpoint."""
    project = training_project(tmp_path / "project")
    git_commit_all(project, "a training")
    (project / "params.yaml").write_text("steps: 8\n")
    env = {"PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "home"), **OFFLINE}
    first = background(project, SIAMESE, "run", STOP_AT="6", **env)
    wait_for(project / "stopped", first)
    os.kill(int((project / "stopped").read_text()), signal.SIGKILL)
    assert first.wait(timeout=120) != 0, first.communicate()[0]
    second = sh(project, SIAMESE, "run", **env)
    log = second.stdout + second.stderr  # the flow's log, with the stage's output
    assert "modified ckpt.txt in the workspace" in log and "resuming from step 6" in log, log
    assert (project / "model.txt").read_text() == "trained 8 steps"
