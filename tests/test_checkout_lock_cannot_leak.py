"""The checkout's run guard (flows/guard.py) is a `flock` that the kernel releases when its
holder dies: a second run names the holder in one line, gives up after its wait in one line,
and takes the checkout at once after a kill -9 of the holder. (The same with real `siamese
run`s and Prefect: test_one_run_at_a_time_per_checkout.py.)"""

import re
import subprocess
import sys
import time

import pytest

from flows.guard import LOCK, hold_checkout
from siamese.errors import PipelineError

SINCE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
HOLD = """
import os, time
from pathlib import Path
from flows.guard import hold_checkout
with hold_checkout(Path("."), 0, f"pid {os.getpid()} (the holder)"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", HOLD], cwd=tmp_path,
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "held\n"
    yield process
    process.kill()
    process.wait()


def test_a_second_run_names_the_holder_and_gives_up_after_its_wait(tmp_path, holder, capsys):
    started = time.monotonic()
    said_at_the_end = (rf"still held by pid {holder.pid} \(the holder\) since {SINCE}; gave up "
                       r"after 1 s of waiting \(--wait\)")
    with pytest.raises(PipelineError, match=said_at_the_end), \
            hold_checkout(tmp_path, 1.0, "the second"):
        pass
    assert 1 <= time.monotonic() - started < 5
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and said[0].endswith("giving up after 1 s"), said
    assert re.search(rf"waiting for pid {holder.pid} \(the holder\) since {SINCE}, which "
                     "holds this checkout", said[0]), said


def test_kill_9_of_the_holder_frees_the_checkout_at_once(tmp_path, holder):
    holder.kill()
    holder.wait()
    started = time.monotonic()
    with hold_checkout(tmp_path, 0, "the next run"):
        assert re.fullmatch(f"the next run since {SINCE}", (tmp_path / LOCK).read_text())
    assert time.monotonic() - started < 1
