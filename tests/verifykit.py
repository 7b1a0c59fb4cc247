"""Helpers for the tests of `siamese verify`: small real DVC projects (a file and a folder
output; a stage that waits while it runs; a stage that checkpoints into a `persist` output),
bytes flipped with the mtime kept, a local-folder remote, and `dvc repro` run in the
background as an operator would."""

import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
MAKE = ("import pathlib; p = pathlib.Path; p('pics').mkdir(exist_ok=True); "
        "p('out.txt').write_text('the output ' * 100); "
        "[p(f'pics/{i}.txt').write_text(f'picture {i} ' * 50) for i in range(2)]")
# A stage that writes model.txt from params.yaml's seed, says so in `started`, then waits for
# the file `go` (a minute at most): a stage caught while it runs.
WAITING_STAGE = """
import pathlib, sys, time
p = pathlib.Path
seed = p("params.yaml").read_text().split(":")[1].strip()
p("model.txt").write_text(f"the model of seed {seed}")
p("started").write_text("model.txt written")
for _ in range(600):
    if p("go").exists():
        sys.exit(0)
    time.sleep(0.1)
sys.exit("no go within a minute")
"""
# A stage that trains `steps` steps, saving each in the persist output ckpt.txt and resuming
# from it; with STOP_AT set, it writes its pid into `stopped` at that step and waits (to be
# killed, as a kill -9 after a checkpoint).
TRAINING_STAGE = """
import os, pathlib, time
p = pathlib.Path
steps = int(p("params.yaml").read_text().split(":")[1])
start = int(p("ckpt.txt").read_text()) if p("ckpt.txt").exists() else 0
print(f"resuming from step {start}" if start else "starting fresh", flush=True)
for step in range(start + 1, steps + 1):
    p("ckpt.txt").write_text(str(step))
    if step == int(os.environ.get("STOP_AT", 0)):
        p("stopped").write_text(str(os.getpid()))
        time.sleep(60)
p("model.txt").write_text(f"trained {steps} steps")
"""


def sh(root: Path, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """A command in `root` with the venv's bin first on PATH; output captured as text."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.run(args, cwd=root, env=full_env, capture_output=True, text=True,
                          check=check)


def background(root: Path, *args: str, **env: str) -> subprocess.Popen:
    """A command started in `root` in a process group of its own, output captured."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **env}
    return subprocess.Popen(args, cwd=root, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(path: Path, process: subprocess.Popen, seconds: float = 60) -> None:
    """Until `path` exists; an AssertionError with the process's output if it ends first."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} never came:\n{process.communicate()[0]}")
        time.sleep(0.05)


def dvc_project(root: Path, dvc_yaml: str, files: dict[str, str] | None = None) -> Path:
    """A git + DVC project at `root` with `dvc_yaml` and `files`, reproduced once."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (root / name).write_text(text)
    (root / "dvc.yaml").write_text(dvc_yaml)
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "dvc", "config", "core.analytics", "false")
    sh(root, "dvc", "repro", "-q")
    return root


def make_project(root: Path) -> Path:
    """One stage, `make`, with a file output (out.txt) and a folder output (pics/, 2 files)."""
    return dvc_project(root, f"stages:\n  make:\n    cmd: python -c \"{MAKE}\"\n"
                             "    outs: [out.txt, pics]\n")


def waiting_project(root: Path) -> Path:
    """One stage, `model`, that waits while it runs (WAITING_STAGE); built once with seed 4."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "go").write_text("")
    dvc_project(root, "stages:\n  model:\n    cmd: python model.py\n    deps: [model.py]\n"
                      "    params: [seed]\n    outs: [model.txt]\n",
                {"model.py": WAITING_STAGE, "params.yaml": "seed: 4\n"})
    (root / "go").unlink()
    (root / "started").unlink()
    return root


def training_project(root: Path) -> Path:
    """One stage, `train` (TRAINING_STAGE), with ckpt.txt `persist: true`; 4 steps done."""
    return dvc_project(root, "stages:\n  train:\n    cmd: python train.py\n    deps: [train.py]\n"
                             "    params: [steps]\n"
                             "    outs: [{ckpt.txt: {persist: true}}, model.txt]\n",
                       {"train.py": TRAINING_STAGE, "params.yaml": "steps: 4\n"})


def add_remote(root: Path, store: Path) -> Path:
    """`store` as the project's default remote, everything pushed there."""
    sh(root, "dvc", "remote", "add", "-q", "-d", "shared", str(store))
    sh(root, "dvc", "push", "-q")
    return store


def object_of(store: Path, data: bytes) -> Path:
    """The object in a cache or remote folder that holds `data`."""
    return next(p for p in store.rglob("*") if p.is_file() and p.read_bytes() == data)


def listing_of(store: Path) -> Path:
    """The one `.dir` listing in a cache or remote folder."""
    (found,) = store.rglob("*.dir")
    return found


def flip(path: Path) -> None:
    """Sixteen bytes changed in place, size and mtime kept (what DVC does not notice)."""
    stat = path.stat()
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[10:26] = bytes(b ^ 0xFF for b in data[10:26])
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
