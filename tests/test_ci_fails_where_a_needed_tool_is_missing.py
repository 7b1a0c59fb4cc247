""".ci/run fails, not skips, where a test's own tool cannot be installed (issue 29, item 13): a
failed `apt-get install qemu-user` is one line and exit status 1 before any test runs, and under
CI=true the emulated-CPU test fails where qemu-x86_64 is missing (outside CI it is skipped).

.ci/run runs here with stand-ins on a PATH of their own: `id` (root), `apt-get`, and `make`,
which records how it was called instead of running the suite."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO

EMULATED = "tests/test_cpu_paths_pin_the_weights.py::" \
           "test_an_emulated_amd_and_intel_cpu_and_this_one_capped_compute_the_pinned_weights"
APT_FAILS = "#!/bin/sh\necho 'E: Unable to locate package qemu-user' >&2\nexit 100\n"
APT_INSTALLS = "#!/bin/sh\nexit 0\n"


def stand_ins(bin_dir: Path, apt_get: str) -> dict[str, str]:
    """A PATH of only stand-ins (and dirname): .ci/run's environment."""
    bin_dir.mkdir()
    scripts = {"id": "#!/bin/sh\necho 0\n", "apt-get": apt_get,
               "make": f'#!/bin/sh\necho "make $* CI=$CI" > "{bin_dir}/made"\n'}
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    return {"PATH": str(bin_dir)}


def ci_run(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("bash") or "/bin/bash", str(REPO / ".ci/run")], env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_failed_install_of_qemu_user_fails_ci_in_one_line_before_the_tests(tmp_path):
    done = ci_run(stand_ins(tmp_path / "bin", APT_FAILS))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "CI: apt-get install qemu-user failed (E: Unable to locate package qemu-user); the "
        "emulated-CPU test needs it"]
    assert not (tmp_path / "bin" / "made").exists()


def test_once_qemu_user_is_installed_ci_runs_the_tests_under_ci_true(tmp_path):
    done = ci_run(stand_ins(tmp_path / "bin", APT_INSTALLS))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "bin" / "made").read_text() == "make test CI=true\n"


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_the_emulated_cpu_test_fails_under_ci_where_qemu_is_missing(tmp_path, ci, outcome):
    env = {**os.environ, "PATH": str(tmp_path), "CI": ci}  # no qemu-x86_64 on it
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           EMULATED], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert outcome in done.stdout, done.stdout
    assert (done.returncode != 0) == (ci == "true")
    if ci:
        assert "CI=true and qemu-x86_64 is missing" in done.stdout
