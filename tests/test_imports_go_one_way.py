"""The import layers of pyproject.toml's contracts (lint-imports, run by `make lint`):
tools > flows > tasks > siamese, and no stage imports another."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("flows/report.py", "from tools.lineage import load_lock", "flows.report -> tools.lineage"),
    ("tasks/evaluate.py", "import tasks.train", "each stage stands alone BROKEN"),
])
def test_a_planted_import_breaks_the_contract(tmp_path, module, line, broken):
    root = copy_tree(tmp_path)
    with open(root / module, "a") as f:
        f.write(f"\n{line}  # noqa: E402\n")
    done = lint_imports(root)
    assert done.returncode == 1 and broken in done.stdout, done.stdout
