"""`siamese run` (the nightly pipeline) and `siamese sweep` started together on one checkout:
the second waits for the first (Prefect's global concurrency limit for the checkout), and
neither fails at DVC's lock."""

import os
import subprocess
import time

import pytest

from tests.flowkit import BIN, OFFLINE, git_commit_all, make_tiny_project, run

pytestmark = pytest.mark.slow  # a Prefect server, a flow run and a sweep

SLOW_TRAIN = 'elif stage == "train":\n'


def test_run_and_sweep_together_take_turns(prefect_api, tmp_path):
    project = make_tiny_project(tmp_path / "tiny")
    spans = tmp_path / "train-spans.txt"
    stages = (project / "stages.py").read_text()
    assert SLOW_TRAIN in stages
    (project / "stages.py").write_text(stages.replace(SLOW_TRAIN, SLOW_TRAIN + (
        "    import time\n"
        f"    open({str(spans)!r}, 'a').write(f'start {{time.time()}}\\n')\n"
        "    time.sleep(6)\n"
        f"    open({str(spans)!r}, 'a').write(f'end {{time.time()}}\\n')\n")))
    run(["dvc", "repro"], project)
    git_commit_all(project, "built")
    spans.unlink()
    env = {**OFFLINE, "PREFECT_API_URL": prefect_api, "PREFECT_HOME": str(tmp_path / "home")}
    commands = [[str(BIN / "siamese"), "run", "--force"],
                [str(BIN / "siamese"), "sweep", "--set", "train.lr=0.5"]]
    path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    procs = []
    for command in commands:
        procs.append(subprocess.Popen(command, cwd=project, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT,
                                      env={**os.environ, **env, "PATH": path}))
        time.sleep(0.5)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not any("lock" in out and "held" in out for out in outputs)
    times = [float(line.split()[1]) for line in spans.read_text().splitlines()]
    starts, ends = times[0::2], times[1::2]
    assert len(starts) == 2 and len(ends) == 2
    assert ends[0] <= starts[1]  # one training at a time: the second began after the first
