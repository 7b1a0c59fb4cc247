"""`siamese pull` / `siamese push` with the default DVC remote, on the tiny four-stage project:
no remote, a remote that holds everything, one that lacks or corrupts an object, one that is
wrong, unreachable or not permitted (as root too), a pull interrupted halfway, and DVC's lock
held by another process."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flowkit import BIN, HOLD_LOCK, OFFLINE, git_commit_all, make_tiny_project, run

pytestmark = pytest.mark.slow  # DVC remotes and Prefect runs: not in `make check`

MODEL = "models/model.txt"


def siamese(root: Path, *args: str) -> subprocess.CompletedProcess:
    return run([str(BIN / "siamese"), *args], root, check=False)


def object_path(storage: Path, root: Path, output: str) -> Path:
    """Where the remote keeps the object dvc.lock records for `output`."""
    import yaml

    lock = yaml.safe_load((root / "dvc.lock").read_text())
    md5 = next(o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])
               if o["path"] == output)
    return storage / "files" / "md5" / md5[:2] / md5[2:]


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file of the workspace and the local cache (not git, not DVC's tmp)."""
    skip = (root / ".git", root / ".dvc" / "tmp")
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not any(p.is_relative_to(s) for s in skip)}


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny project, built and committed, with a local-folder default remote it pushed to."""
    base = tmp_path_factory.mktemp("remote")
    project = make_tiny_project(base / "origin")
    storage = base / "storage"
    storage.mkdir()
    run(["dvc", "remote", "add", "-d", "storage", str(storage)], project)
    run(["dvc", "repro"], project)
    git_commit_all(project, "built")
    assert "files sent to DVC remote 'storage'" in siamese(project, "push").stdout
    return project, storage


@pytest.fixture
def clone(origin, tmp_path) -> tuple[Path, Path]:
    """A fresh clone of the origin, its remote a private copy of the origin's."""
    project, storage = origin
    mine = Path(shutil.copytree(storage, tmp_path / "storage"))
    run(["git", "clone", "-q", str(project), str(tmp_path / "clone")], tmp_path)
    root = tmp_path / "clone"
    run(["dvc", "remote", "modify", "--local", "storage", "url", str(mine)], root)
    return root, mine


def test_without_a_remote_pull_and_push_say_so_and_succeed(tmp_path):
    project = make_tiny_project(tmp_path / "tiny")
    for action in ("pull", "push"):
        done = siamese(project, action)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == (f"dvc {action}: skipped, no DVC remote is configured "
                                       "(`dvc remote add -d NAME URL`)")


@pytest.mark.slow
def test_siamese_run_pulls_first_and_pushes_with_push(tmp_path, prefect_api):
    """On the session's Prefect server: alone, `siamese run` would start a temporary one."""
    project = make_tiny_project(tmp_path / "tiny")
    storage = tmp_path / "storage"
    storage.mkdir()
    run(["dvc", "remote", "add", "-d", "storage", str(storage)], project)
    git_commit_all(project, "a remote")
    done = run([str(BIN / "siamese"), "run", "--push"], project,
               PREFECT_HOME=str(tmp_path / "home"), PREFECT_API_URL=prefect_api)
    output = done.stdout + done.stderr
    assert "dvc pull: 0 outputs restored from DVC remote 'storage'" in output
    assert "files sent to DVC remote 'storage'" in output
    assert object_path(storage, project, MODEL).read_text() == "lr=0.25"
    assert "4 stages: 4 ran" in done.stdout


def test_a_fresh_clone_restores_everything_and_nothing_reruns(clone):
    root, _ = clone
    start = time.monotonic()
    done = siamese(root, "pull")
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    assert "3 outputs restored from DVC remote 'storage'" in done.stdout
    assert "up to date" in run(["dvc", "status"], root).stdout
    assert "Running stage" not in run(["dvc", "repro"], root).stdout
    assert (root / MODEL).read_text() == "lr=0.25"
    print(f"\nsiamese pull into a fresh clone: {seconds:.1f} s")


def test_a_remote_lacking_an_object_names_it_and_its_stage_rebuilds(clone):
    root, storage = clone
    object_path(storage, root, MODEL).unlink()
    done = siamese(root, "pull")
    assert done.returncode == 0, done.stderr
    assert f"lacks {MODEL} (md5 " in done.stdout and "their stages will rebuild them" in done.stdout
    assert "2 outputs restored" in done.stdout
    repro = run(["dvc", "repro"], root).stdout
    assert "Running stage 'train'" in repro and "Running stage 'index'" not in repro
    assert "up to date" in run(["dvc", "status"], root).stdout


def test_a_corrupt_object_is_named_nothing_changes_and_a_retry_completes(clone):
    root, storage = clone
    corrupt = object_path(storage, root, MODEL)
    corrupt.chmod(0o644)
    corrupt.write_text("lr=0.99")
    before = digest(root)
    done = siamese(root, "pull")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"siamese pull: error: DVC remote 'storage' ({storage}): corrupt object: {MODEL} "
        f"(md5 {corrupt.parent.name}{corrupt.name[:10]}): its content does not match its hash, "
        "so nothing was checked out. DVC drops such a copy from a local-folder remote "
        "(elsewhere delete it); rerun to rebuild it"]
    after = digest(root)
    assert {k: v for k, v in after.items() if not k.startswith(".dvc/cache/")} == before
    assert not (root / MODEL).exists()
    retry = siamese(root, "pull")  # DVC dropped the corrupt copy: now it is missing
    assert retry.returncode == 0 and f"lacks {MODEL}" in retry.stdout
    run(["dvc", "repro"], root)
    assert (root / MODEL).read_text() == "lr=0.25"


def unreachable_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/dvc"  # nothing listens there


def test_a_wrong_or_unreachable_remote_fails_naming_it_and_changes_nothing(clone):
    root, storage = clone
    faults = {
        str(storage.parent / "nowhere"): "wrong path: ",
        str(root / "dvc.yaml"): "is not a folder",
        unreachable_url(): "unreachable: ",
    }
    for url, reason in faults.items():
        run(["dvc", "remote", "modify", "--local", "storage", "url", url], root)
        before = digest(root)
        done = siamese(root, "pull")
        assert done.returncode == 1
        [line] = done.stderr.strip().splitlines()
        assert line.startswith(f"siamese pull: error: DVC remote 'storage' ({url}): ")
        assert reason in line
        assert digest(root) == before
    run(["dvc", "remote", "modify", "--local", "storage", "url", str(storage)], root)
    assert siamese(root, "pull").returncode == 0  # the retry, once the URL is right
    assert "up to date" in run(["dvc", "status"], root).stdout


# Root reads any folder through CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: as root (CI), the
# command runs without them, so that a folder of mode 0 denies it too.
WITHOUT_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
                    "--inh-caps=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


def test_a_remote_without_permission_fails_naming_it(clone):
    """Mode 0: pull cannot read it; mode 0o555 (read-only): push cannot write to it."""
    root, storage = clone
    for mode, action, what in ((0, "pull", "read"), (0o555, "push", "write")):
        storage.chmod(mode)
        try:
            probe = run([*WITHOUT_OVERRIDE, "test", "-w" if mode else "-r", str(storage)], root,
                        check=False)
            done = run([*WITHOUT_OVERRIDE, str(BIN / "siamese"), action], root, check=False)
        finally:
            storage.chmod(0o755)
        assert probe.returncode != 0, f"{oct(mode)}: the fault did not happen"
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [
            f"siamese {action}: error: DVC remote 'storage' ({storage}): no permission to {what} "
            f"{storage}"]


def test_a_held_dvc_lock_is_named_and_a_retry_completes(clone):
    root, _ = clone
    env = {**os.environ, **OFFLINE}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK], cwd=root, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = digest(root)
        done = siamese(root, "pull")
        assert done.returncode == 1
        [line] = done.stderr.strip().splitlines()
        assert f"DVC's lock {root / '.dvc/tmp/lock'} is held by pid {holder.pid}: " in line
        assert digest(root) == before
    finally:
        holder.kill()
        holder.wait()
    assert siamese(root, "pull").returncode == 0
    assert "up to date" in run(["dvc", "status"], root).stdout


def test_a_pull_interrupted_halfway_leaves_no_half_output_and_a_retry_completes(origin, tmp_path):
    """Many objects, so that the kill lands during the transfer."""
    project, _ = origin
    work = Path(shutil.copytree(project, tmp_path / "bulk-origin", symlinks=True))
    bulk = work / "bulk"
    bulk.mkdir()
    for i in range(3000):
        (bulk / f"{i:05d}.txt").write_text(f"file {i}\n")
    storage = tmp_path / "bulk-storage"
    storage.mkdir()
    run(["dvc", "remote", "modify", "--local", "storage", "url", str(storage)], work)
    run(["dvc", "add", "-q", "bulk"], work)
    git_commit_all(work, "bulk")
    assert siamese(work, "push").returncode == 0
    root = tmp_path / "clone"
    run(["git", "clone", "-q", str(work), str(root)], tmp_path)
    run(["dvc", "remote", "modify", "--local", "storage", "url", str(storage)], root)
    env = {**os.environ, **OFFLINE, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    puller = subprocess.Popen([str(BIN / "siamese"), "pull"], cwd=root, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = root / ".dvc" / "cache" / "files" / "md5"
    deadline = time.monotonic() + 60
    while puller.poll() is None and time.monotonic() < deadline:
        if cache.is_dir() and sum(1 for p in cache.rglob("*") if p.is_file()) > 300:
            break
        time.sleep(0.02)
    assert puller.poll() is None, "the pull ended before it could be interrupted"
    puller.send_signal(signal.SIGKILL)
    puller.wait()
    assert not (root / "bulk").exists()  # no half checkout: the workspace is as it was
    done = siamese(root, "pull")
    assert done.returncode == 0, done.stderr
    assert len(list((root / "bulk").iterdir())) == 3000
    assert "up to date" in run(["dvc", "status"], root).stdout
