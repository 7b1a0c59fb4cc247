"""The import layers of pyproject.toml's contracts (lint-imports, run by `make lint`):
tools > flows > tasks > siamese, and no stage imports another."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests import REPO

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("tools", "flows", "tasks", "siamese")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def copy_tree(to: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(REPO / package, to / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", to)
    return to


def test_the_layers_hold_on_this_tree():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_a_flow_importing_a_tool_breaks_the_layers(tmp_path):
    root = copy_tree(tmp_path)
    with open(root / "flows/report.py", "a") as f:
        f.write("\nfrom tools.lineage import load_lock  # noqa: E402\n")
    done = lint_imports(root)
    assert done.returncode == 1
    assert "flows is not allowed to import tools" in done.stdout
    assert "flows.report -> tools.lineage" in done.stdout


def test_a_stage_importing_another_stage_breaks_independence(tmp_path):
    root = copy_tree(tmp_path)
    with open(root / "tasks/evaluate.py", "a") as f:
        f.write("\nimport tasks.train  # noqa: E402\n")
    done = lint_imports(root)
    assert done.returncode == 1 and "each stage stands alone BROKEN" in done.stdout
