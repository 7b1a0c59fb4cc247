"""A bare `dvc repro` with a typo in params.yaml stops before DVC removes any output.

DVC removes a stage's outputs just before it runs the stage's command, so a stage that finds a
typo in its own section had lost its outputs (the audit reports, which git tracks and DVC does
not cache, for good); a misspelled section got DVC's own error after DVC removed the stage's
outputs, and an unknown extra section was ignored. The first stage of dvc.yaml, params, checks
the whole params.yaml and every other stage depends on its output.

The project is copied into a fresh git + DVC repository whose outputs are stand-ins committed
with `dvc commit`: the params stage alone runs, for real, with the copy's code (PYTHONPATH).
"""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.flowkit import copy_project, git_commit_all, init_repo, run


def declared_outputs(stage: dict[str, Any]) -> list[str]:
    """The paths a stage of dvc.yaml writes: its outs, metrics and plots."""
    entries = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


def stand_in(path: Path) -> None:
    """A file (a name with a suffix) or a folder holding one, unless git already gave it."""
    if path.exists():
        return
    target = path if path.suffix else path / "stand-in.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"stand-in for {path.name}\n")


def snapshot(root: Path, outputs: list[str]) -> dict[str, bytes]:
    """Every file under `outputs`, by path, with its bytes."""
    found = {}
    for name in outputs:
        path = root / name
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            found[file.relative_to(root).as_posix()] = file.read_bytes()
    return found


def later_outputs(root: Path) -> list[str]:
    """The outputs of every stage but params."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return [path for name, stage in stages.items() if name != "params"
            for path in declared_outputs(stage)]


def repro(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["dvc", "repro", *args], root, check=check, PYTHONPATH=str(root))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bare-repro") / "project"
    root.mkdir()
    copy_project(root)
    init_repo(root)
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        if stage["cmd"] == "siamese params":  # its real output: valid params give these bytes
            repro(root, "--single-item", name)
        else:
            for path in declared_outputs(stage):
                stand_in(root / path)
    run(["dvc", "commit", "--force", "--quiet"], root)
    git_commit_all(root, "built")
    assert "changed" not in run(["dvc", "status"], root).stdout
    return root


@pytest.fixture
def project(built, tmp_path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(built, root, symlinks=True)
    return root


def edit_params(root: Path, old: str, new: str) -> None:
    text = (root / "params.yaml").read_text()
    assert old in text
    (root / "params.yaml").write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(("old", "new", "message"), [
    ("  near_bits: 14", "  near_bitz: 14",
     "audit.near_bitz is not a parameter (did you mean audit.near_bits?)"),
    ("\npairs:\n", "\npair:\n",
     "section 'pair' is not a section of the pipeline (did you mean pairs?)"),
    ("\ntrials:\n", "\nnotes:\n  first: 1\n\ntrials:\n",
     "section 'notes' is not a section of the pipeline"),
    ("  steps: 2000", "  steps: -5", "train.steps must be >= 1, got -5"),
])
def test_a_typo_stops_dvc_repro_before_any_output_is_removed(project, old, new, message):
    kept = snapshot(project, later_outputs(project))
    edit_params(project, old, new)
    done = repro(project, check=False)
    said = done.stdout + done.stderr
    assert snapshot(project, later_outputs(project)) == kept, said
    assert run(["git", "status", "--porcelain", "reports"], project).stdout == ""
    assert done.returncode != 0, said
    assert f"siamese params: error: params.yaml: {message}\n" in said
    assert "Running stage 'params'" in said and said.count("Running stage") == 1


def test_a_valid_edit_reruns_params_and_only_the_stages_that_read_the_edited_key(project):
    edit_params(project, "  seed: 4\n", "  seed: 5\n")
    repro(project, "params")
    assert set(json.loads(run(["dvc", "status", "--json"], project).stdout)) == {"train"}
