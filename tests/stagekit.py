"""Helpers for running the project's data stages in a folder: `siamese <stage>` on a source of
Omniglot zips (the real one, or tests/synthetic.py's), params.yaml with edits, and the inputs
broken on purpose (a source or raw zips with other bytes) to see a stage refuse them."""

import copy
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import REPO
from tests.synthetic import write_zip

# The real Omniglot zips, read-only (the `shared_data` fixture).
SHARED_DATA = Path(os.environ.get("OMNIGLOT_SHARED", REPO.parent / "shared" / "data" / "omniglot"))
# params first: dvc.yaml's first stage, whose output every other stage depends on
DATA_STAGES = ("params", "fetch", "index", "split", "pairs", "trials")


def siamese_command() -> str:
    """The `siamese` console script of the interpreter running the tests."""
    beside = Path(sys.executable).parent / "siamese"
    found = str(beside) if beside.exists() else shutil.which("siamese")
    if found is None:
        pytest.fail("the `siamese` command is not installed (pip install -e .)")
    return found


def write_params(root: Path, edits: dict[str, dict[str, Any]] | None = None) -> Path:
    """root/params.yaml: the project's params.yaml with `edits` merged into its sections."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    if not edits:
        shutil.copyfile(REPO / "params.yaml", path)
        return path
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, values in edits.items():
        params[name] = {**params.get(name, {}), **copy.deepcopy(values)}
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(root: Path, stage: str, source: Path | str) -> subprocess.CompletedProcess:
    """`siamese <stage>` in `root` with OMNIGLOT_SOURCE=source; output captured."""
    env = {**os.environ, "OMNIGLOT_SOURCE": str(source)}
    return subprocess.run([siamese_command(), stage], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)


def run_stages(root: Path, source: Path | str,
               stages: tuple[str, ...] = DATA_STAGES) -> subprocess.CompletedProcess:
    """Run `stages` in order in `root`; return the first failure, else the last result."""
    result = None
    for stage in stages:
        result = run_stage(root, stage, source)
        if result.returncode != 0:
            break
    return result


def build_data(root: Path, source: Path | str, edits: dict[str, dict[str, Any]] | None) -> Path:
    """A project folder at `root` with params (edited) and the five data stages run; or fail."""
    write_params(root, edits)
    result = run_stages(root, source)
    if result.returncode != 0:
        pytest.fail(f"data stages failed in {root}:\n{result.stdout}\n{result.stderr}")
    return root


def mutated_source(folder: Path, source: Path, zip_name: str,
                   edit: Callable[[dict[str, bytes]], None]) -> Path:
    """A copy of `source` in `folder` whose `zip_name` entries went through `edit` (in place),
    with SHA256SUMS rewritten to match, so that only the content is bad."""
    shutil.copytree(source, folder)
    with zipfile.ZipFile(folder / zip_name) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    edit(entries)
    write_zip(folder / zip_name, entries)
    write_sums(folder)
    return folder


def replace_in_raw(root: Path, replacements: dict[str, bytes]) -> None:
    """Rewrite the zips in root/data/raw with the files at manifest `paths` replaced, as if
    the source had shipped other bytes for them."""
    from siamese.zips import locate

    by_zip: dict[str, dict[str, bytes]] = {}
    for path, data in replacements.items():
        zip_name, entry = locate(path)
        by_zip.setdefault(zip_name, {})[entry] = data
    for zip_name, edits in by_zip.items():
        zip_path = root / "data" / "raw" / zip_name
        with zipfile.ZipFile(zip_path) as zf:
            entries = {name: zf.read(name) for name in zf.namelist()}
        entries.update(edits)
        write_zip(zip_path, entries)


def write_sums(folder: Path) -> None:
    """folder/SHA256SUMS for the zips in `folder`."""
    lines = [f"{hashlib.sha256(z.read_bytes()).hexdigest()}  {z.name}"
             for z in sorted(folder.glob("*.zip"))]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root/data, to show that a failed stage changed nothing."""
    data = root / "data"
    return {p.relative_to(data).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file()}
