"""A stage command run by hand is never killed by its parent watch: not when its parent is
PID 1 (`setsid -f`, `nohup ... &` from a shell that exits at once, a PID namespace whose
PID 1 is `sh -c`), nor when the shell that started it under nohup exits while it runs; nor is
a stage of a `dvc repro` that is PID 1 itself. (That a stage still dies with the `dvc repro`
that started it: test_signals_stop_every_process.py.)
"""

import hashlib
import http.server
import os
import subprocess
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import yaml

from tests.stagekit import siamese_command

SPLIT_DONE = "split: "  # the last line of a `siamese split` that ran to its end


def env_for(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMNIGLOT_SOURCE", "DVC_STAGE")}
    return env | {"PATH": f"{Path(siamese_command()).parent}{os.pathsep}{env['PATH']}"}


def split_pids(project: Path) -> set[int]:
    """The `siamese split` processes running in `project`."""
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"siamese\0split" in (proc / "cmdline").read_bytes() and \
                    (proc / "cwd").resolve() == project.resolve():
                found.add(int(proc.name))
        except OSError:
            continue
    return found


def last_line(log: Path) -> str:
    lines = log.read_text().strip().splitlines() if log.exists() else []
    return lines[-1] if lines else ""


def wait_until_split_ends(project: Path, log: Path, seconds: float = 60) -> str:
    """The log's last line once the detached `siamese split` wrote its last line, or ended."""
    seen, deadline = False, time.monotonic() + seconds
    while time.monotonic() < deadline:
        if last_line(log).startswith(SPLIT_DONE):
            return last_line(log)
        running = bool(split_pids(project))
        if seen and not running:
            time.sleep(0.5)  # its last write, if any
            return last_line(log)
        seen = seen or running
        time.sleep(0.1)
    return last_line(log)


@pytest.mark.parametrize("launch", [
    "setsid -f siamese split > split.log 2>&1",
    "nohup siamese split > split.log 2>&1 &",
], ids=["setsid-f", "nohup-from-a-shell-that-exits"])
def test_a_stage_whose_parent_is_pid_1_completes(synthetic_project, launch):
    subprocess.run(["bash", "-c", launch], cwd=synthetic_project, env=env_for(synthetic_project),
                   check=True, timeout=30)
    line = wait_until_split_ends(synthetic_project, synthetic_project / "split.log")
    assert line.startswith(SPLIT_DONE), f"killed before its end; its log: {line!r}"


def test_a_stage_in_a_pid_namespace_under_sh_c_completes(synthetic_project):
    """`sh -c` is PID 1 there, as in a container whose entrypoint is a shell (or tini)."""
    as_root = [] if os.geteuid() == 0 else ["--map-root-user"]
    done = subprocess.run(["unshare", *as_root, "--pid", "--fork", "--mount-proc",
                           "sh", "-c", "siamese split"], cwd=synthetic_project,
                          env=env_for(synthetic_project), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith(SPLIT_DONE)


def test_a_stage_of_dvc_repro_as_pid_1_completes(synthetic_project):
    """A container whose entrypoint is `dvc repro`, with no $SHELL: DVC is PID 1 and runs the
    stage through dash's `sh -c`; the stage watches DVC, alive, and runs to its end."""
    as_root = [] if os.geteuid() == 0 else ["--map-root-user"]
    (synthetic_project / "dvc.yaml").write_text("stages:\n  split:\n    cmd: siamese split\n")
    env = {k: v for k, v in env_for(synthetic_project).items() if k != "SHELL"}
    dvc = [str(Path(siamese_command()).parent / "dvc")]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=synthetic_project, env=env, check=True)
    done = subprocess.run(["unshare", *as_root, "--pid", "--fork", "--mount-proc", *dvc,
                           "repro"], cwd=synthetic_project, env=env | {"DVC_NO_ANALYTICS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert SPLIT_DONE + "train" in done.stdout


def held_file_server(folder: Path, asked: threading.Event, release: threading.Event):
    """An HTTP server of `folder`'s files that answers nothing until `release` is set; `asked`
    is set at the first request."""
    class Held(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            asked.set()
            release.wait(60)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Held, directory=folder))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_nohup_keeps_a_stage_running_after_its_shell_exits(synthetic_project, synthetic_source):
    """The shell that ran `nohup siamese fetch &` is still there when fetch starts, and exits
    while fetch waits for its download: fetch runs on to its end."""
    asked, release = threading.Event(), threading.Event()
    server = held_file_server(synthetic_source, asked, release)
    params_file = synthetic_project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["fetch"]["source"] = f"http://127.0.0.1:{server.server_port}"
    params["fetch"]["md5"] = {name: hashlib.md5((synthetic_source / name).read_bytes()).hexdigest()
                              for name in params["fetch"]["files"]}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    log = synthetic_project / "fetch.log"
    shell = subprocess.Popen(["bash", "-c", "nohup siamese fetch > fetch.log 2>&1 & read _"],
                             cwd=synthetic_project, env=env_for(synthetic_project),
                             stdin=subprocess.PIPE)
    try:
        assert asked.wait(60), f"fetch never asked for its zips: {log.read_text()}"
        shell.stdin.close()  # the shell reads end-of-file and exits, fetch still waiting
        shell.wait(10)
        time.sleep(1)  # what a watch on the shell would have done, it has done now
        release.set()
        deadline = time.monotonic() + 60
        while not last_line(log).startswith("fetch: ") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert last_line(log).startswith("fetch: 3 zips"), log.read_text()
    finally:
        release.set()
        server.shutdown()
