"""`siamese verify` never runs beside a stage: a running `dvc repro` holds DVC's repo lock
(.dvc/tmp/lock) except while a stage's command runs, and through that command DVC's rwlock on
the stage's outputs; verify takes both, so it meets one or the other and says so in one line,
touching nothing (issue 29, item 3). The flow's pre-stage verify does the same."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import REPO
from tests.flowkit import HOLD_LOCK
from tests.verifykit import BIN, background, make_project, sh, wait_for, waiting_project

SIAMESE = str(BIN / "siamese")
SEED_5 = "the model of seed 5"


@pytest.fixture
def running(tmp_path):
    """A project whose stage is running under `dvc repro` with a new seed, its new model.txt
    written; (the project, the repro). The stage ends when the test writes `go`."""
    project = waiting_project(tmp_path / "project")
    (project / "params.yaml").write_text("seed: 5\n")
    repro = background(project, "dvc", "repro")
    wait_for(project / "started", repro)
    yield project, repro
    (project / "go").write_text("")
    repro.wait(timeout=60)


def test_verify_beside_a_running_dvc_repro_says_so_and_touches_nothing(running):
    project, repro = running
    done = sh(project, SIAMESE, "verify", check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert re.fullmatch(
        rf"siamese verify: error: {re.escape(str(project))}: a DVC stage is running \(pid "
        rf"{repro.pid}: \S*dvc repro\); verify never checks outputs while a stage writes them: "
        r"rerun when it ends\n", done.stderr), done.stderr
    assert (project / "model.txt").read_text() == SEED_5
    (project / "go").write_text("")
    assert repro.wait(timeout=60) == 0, repro.communicate()[0]
    assert "up to date" in sh(project, "dvc", "status").stdout
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["model"]
    assert lock["params"]["params.yaml"]["seed"] == 5
    assert lock["outs"][0]["md5"] == hashlib.md5(SEED_5.encode()).hexdigest()
    assert (project / "model.txt").read_text() == SEED_5
    after = sh(project, SIAMESE, "verify")
    assert after.stdout == "verify: workspace: 1 good; cache: 1 good\n"


@pytest.mark.slow
def test_the_flows_verify_beside_a_running_dvc_repro_ends_the_run_in_one_line(
        running, request):
    request.getfixturevalue("prefect_session")
    from flows.pipeline import run_pipeline
    from siamese.errors import PipelineError

    project, repro = running
    with pytest.raises(PipelineError, match=r"a DVC stage is running \(pid \d+: .*dvc repro\)"):
        run_pipeline(repo=project)
    assert (project / "model.txt").read_text() == SEED_5


# `python -c HOLD_CHECKOUT` in a project: holds the checkout's run guard as a flow run does
# from its start to its end, printing "locked" once it holds it.
HOLD_CHECKOUT = """
import os, time
from pathlib import Path
from flows.guard import hold_checkout
with hold_checkout(Path("."), 0, f"pid {os.getpid()} (`siamese run`)"):
    print("locked", flush=True)
    time.sleep(120)
"""


def verify_while_held(project: Path, hold: str) -> tuple[subprocess.CompletedProcess, int]:
    """`siamese verify` while `python -c hold` holds a lock; (its result, the holder's pid)."""
    holder = background(project, sys.executable, "-c", hold, PYTHONPATH=str(REPO))
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        return sh(project, SIAMESE, "verify", check=False), holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_verify_while_dvc_holds_its_repo_lock_names_the_holder(tmp_path):
    """Between two stages, and while it commits one, `dvc repro` holds .dvc/tmp/lock."""
    project = make_project(tmp_path / "project")
    done, pid = verify_while_held(project, HOLD_LOCK)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith(f"siamese verify: error: DVC's lock {project / '.dvc/tmp/lock'} "
                                  f"is held by pid {pid}: ")
    assert len(done.stderr.splitlines()) == 1


def test_verify_beside_a_flow_run_between_its_stages_says_so(tmp_path):
    """Between two stages a flow run holds no DVC lock, only the checkout's run guard; a
    verify then holding DVC's lock would fail the next stage's `dvc repro` at it."""
    project = make_project(tmp_path / "project")
    done, pid = verify_while_held(project, HOLD_CHECKOUT)
    assert done.returncode == 1 and done.stdout == ""
    assert re.fullmatch(
        rf"siamese verify: error: {re.escape(str(project))}: a run holds this checkout \(pid "
        rf"{pid} \(`siamese run`\) since [-0-9: ]+UTC\); verify never runs beside one "
        r"\(the flow verifies before its stages\): rerun when it ends\n", done.stderr), done.stderr
    assert "verify: workspace: 3 good" in sh(project, SIAMESE, "verify").stdout
