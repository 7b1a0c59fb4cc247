"""Helpers for the tests of the Prefect flows: an offline Prefect home, real DVC projects
(the tiny four-stage one below, or a copy of this project on a tiny profile), the Prefect API
and environments for `siamese` and `prefect` commands run as subprocesses.

Prefect reads its settings when first imported, so `prefect_home()` sets the environment
and imports it once per test session (the `prefect_session` fixture of tests/conftest.py
calls it): every in-process flow run of the session shares one temporary server (its
start-up costs ~10 s) whose database lives in a temporary folder.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from tests import REPO
from tests.synthetic import SYNTHETIC_PARAMS

BIN = Path(sys.executable).parent
OFFLINE = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
}
_HOME: list[Path] = []
# The tiny profile's training: a few steps on the synthetic data (tiny_params).
TINY_TRAIN = {"steps": 6, "eval_every": 3, "episode_alphabets": 2, "episode_characters": 4,
              "threads": 1, "device": "cpu"}
# `python -c HOLD_LOCK` in a project: holds its DVC lock for 120 s (tests kill it sooner),
# printing "locked" once it holds it.
HOLD_LOCK = """
import sys, time
from dvc.repo import Repo
repo = Repo(".")
repo.lock.lock()
print("locked", flush=True)
time.sleep(120)
"""

# A real DVC pipeline of tiny Python stages, shaped like the project's: fetch (flaky when
# FLAKY_MARKER names a file not yet there), index, train (fails when train.fail), evaluate.
# dvc.yaml lists evaluate first, so the order has to come from DVC's graph.
STAGES_PY = '''
import hashlib, json, os, sys
from pathlib import Path
import yaml

p = yaml.safe_load(open("params.yaml"))
stage = sys.argv[1]
print(f"stage {stage} starting", flush=True)
if stage == "fetch":
    marker = os.environ.get("FLAKY_MARKER")
    if marker and not Path(marker).exists():
        Path(marker).write_text("failed once")
        sys.exit("fetch: transient network error")
    Path("data/raw").mkdir(parents=True, exist_ok=True)
    Path("data/raw/images.txt").write_text(p["fetch"]["content"])
elif stage == "index":
    digest = hashlib.sha256(Path("data/raw/images.txt").read_bytes()).hexdigest()
    Path("data/manifests").mkdir(parents=True, exist_ok=True)
    Path("data/manifests/dataset.json").write_text(json.dumps({"fingerprint": digest}))
elif stage == "train":
    if p["train"]["fail"]:
        sys.exit("train: boom (train.fail is true)")
    Path("models").mkdir(exist_ok=True)
    Path("models/model.txt").write_text(f"lr={p['train']['lr']}")
elif stage == "evaluate":
    lr = float(Path("models/model.txt").read_text().split("=")[1])
    Path("reports/evaluate").mkdir(parents=True, exist_ok=True)
    Path("reports/evaluate/picture.txt").write_text("a picture")
    metrics = {"valid": {"20-way": {"accuracy": round(1 - lr, 4), "ci95": [0.1, 0.2]}}}
    Path("reports/metrics.json").write_text(json.dumps(metrics))
print(f"stage {stage} done", flush=True)
'''

DVC_YAML = """
stages:
  evaluate:
    cmd: python stages.py evaluate
    deps: [models/model.txt, stages.py]
    metrics: [{reports/metrics.json: {cache: false}}]
    outs: [{reports/evaluate: {cache: false}}]
  fetch:
    cmd: python stages.py fetch
    params: [fetch]
    outs: [data/raw]
  index:
    cmd: python stages.py index
    deps: [data/raw]
    outs: [data/manifests/dataset.json]
  train:
    cmd: python stages.py train
    deps: [data/manifests/dataset.json]
    params: [train]
    outs: [models/model.txt]
"""

PARAMS_YAML = """
fetch:
  content: "some images"
train:
  lr: 0.25
  fail: false
"""


def prefect_home() -> Path:
    """Point Prefect at a temporary home, offline, then import it (once per session)."""
    if not _HOME:
        _HOME.append(Path(tempfile.mkdtemp(prefix="prefect-home-")))
        os.environ["PREFECT_HOME"] = str(_HOME[0])
        os.environ.pop("PREFECT_API_URL", None)
        os.environ.update(OFFLINE)
        from prefect.settings import get_current_settings

        home = Path(get_current_settings().home)
        assert home == _HOME[0], f"prefect was imported before its test home was set ({home})"
    return _HOME[0]


def run(args: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """Run a command with the venv's bin first on PATH; output captured as text."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **OFFLINE, **env}
    done = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def git_commit_all(root: Path, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], root)


def init_repo(root: Path) -> None:
    """git init + dvc init (analytics off) in `root`; a copied .dvc/ is kept as it is."""
    run(["git", "init", "-q", "-b", "main"], root)
    if not (root / ".dvc").exists():
        run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)


def make_tiny_project(root: Path) -> Path:
    """A real git + DVC project with the tiny four-stage pipeline above, committed."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stages.py").write_text(STAGES_PY)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text(PARAMS_YAML)
    init_repo(root)
    git_commit_all(root, "tiny pipeline")
    return root


def copy_project(dest: Path) -> None:
    """The project's files as in the working tree (tracked, and new files not ignored)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in listed.splitlines():
        source = REPO / name
        if name == "dvc.lock" or not source.is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name)


def tiny_params(root: Path, source: Path) -> None:
    """root/params.yaml on the tiny profile: the synthetic data at `source`, TINY_TRAIN."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for name, values in {**SYNTHETIC_PARAMS, "train": TINY_TRAIN}.items():
        params[name].update(values)
    params["fetch"]["source"] = str(source)
    params["evaluate"]["pictures"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def set_param(root: Path, section: str, key: str, value: object) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params[section][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def flow_run_records(flow_run_id):
    """The task runs (by name), their logs and the artifacts of one flow run, from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        tasks = {t.name: t for t in client.read_task_runs(flow_run_filter=runs)}
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=runs)}
    by_task: dict[str, list[str]] = {}
    names = {t.id: name for name, t in tasks.items()}
    for log in logs:
        by_task.setdefault(names.get(log.task_run_id, "flow"), []).append(log.message)
    return tasks, by_task, artifacts


def latest_flow_run_id():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)[0].id


def api(url: str, path: str, body: dict | None = None):
    """POST `body` to the Prefect server's API at `url` + `path`; the JSON answer."""
    request = urllib.request.Request(
        f"{url}{path}", data=json.dumps(body or {}).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a `siamese` or `prefect` command with its own Prefect home (and no
    PREFECT_API_URL unless `extra` sets one)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **OFFLINE,
           "PREFECT_HOME": str(home), **extra}
    env.pop("PREFECT_API_URL", None)
    return env | extra


# The processes of a test's commands, from /proc (Linux).

def children() -> dict[int, list[int]]:
    """Each process's children, by the parent's pid."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(condition, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.2)
    return False
