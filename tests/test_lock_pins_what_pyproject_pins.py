"""The locked install: requirements.lock holds every pin of pyproject.toml, with a hash, and
tools/lockfile.py turns pip's installation report into it."""

import re
import tomllib

import pytest

from tests import REPO
from tools import lockfile

PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(\[[^]]*\])?==(?P<version>\S+)$")
LOCKED = re.compile(r"^(?P<name>\S+)==(?P<version>\S+) \\\n    --hash=sha256:[0-9a-f]{64}$", re.M)


def locked(path) -> dict[str, str]:
    return {m["name"]: m["version"] for m in LOCKED.finditer(path.read_text())}


def test_the_lock_holds_every_pin_of_pyproject_and_the_build_tools():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    lock = locked(REPO / "requirements.lock")
    for requirement in wanted:
        pin = PIN.match(requirement)
        assert pin, f"pyproject.toml: {requirement} is not pinned with =="
        name = pin["name"].lower()
        # 2.13.0+cpu is torch 2.13.0's CPU build: a local label, which == ignores.
        assert lock.get(name, "").split("+")[0] == pin["version"], (
            f"requirements.lock lacks {requirement}: run `make lock`")
    build = locked(REPO / "requirements-build.lock")
    assert set(build) == {"pip", "setuptools"} and all(lock[n] == v for n, v in build.items())
    assert lock["torch"] == "2.13.0+cpu"


def entry(name: str, version: str, info: dict) -> dict:
    return {"metadata": {"name": name, "version": version}, "download_info": info}


def test_a_report_becomes_hashed_pins_and_the_project_itself_is_left_out(tmp_path):
    wheel = {"url": "file:///w/a.whl", "archive_info": {"hashes": {"sha256": "a" * 64}}}
    report = {"environment": {"implementation_name": "cpython", "python_full_version": "3.11.7",
                              "sys_platform": "linux", "platform_machine": "x86_64"},
              "install": [entry("Zeta", "1.0", wheel), entry("pip", "26.3", wheel),
                          entry("setuptools", "84.2.1", wheel),
                          entry("siamese-omniglot", "0.1.0", {"url": "file:///r", "dir_info": {}})]}
    lockfile.write_locks(report, tmp_path)
    assert locked(tmp_path / "requirements.lock") == {
        "pip": "26.3", "setuptools": "84.2.1", "zeta": "1.0"}
    assert "cpython 3.11.7, linux x86_64" in (tmp_path / "requirements.lock").read_text()
    assert locked(tmp_path / "requirements-build.lock") == {"pip": "26.3", "setuptools": "84.2.1"}
    report["install"].append(entry("vcs", "1", {"url": "git+https://x/y", "vcs_info": {}}))
    with pytest.raises(SystemExit, match="no sha256 for vcs"):
        lockfile.write_locks(report, tmp_path)


def test_every_package_of_the_project_is_installed():
    """A folder with an __init__.py under a listed package, itself unlisted, would be left out of
    a wheel (setuptools warns at every install)."""
    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = {".".join(init.parent.relative_to(REPO).parts)
             for top in listed if "." not in top for init in (REPO / top).rglob("__init__.py")}
    assert found == set(listed)
