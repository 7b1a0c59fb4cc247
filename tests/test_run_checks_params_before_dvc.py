"""`siamese run` (and every flow run of the project's pipeline) checks the whole params.yaml
before DVC touches anything: DVC would remove a stage's outputs before the stage found the
typo."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO

SIAMESE = Path(sys.executable).parent / "siamese"


def siamese_run(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PREFECT_HOME": str(root / ".prefect")}
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([str(SIAMESE), "run"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("edit", "message"), [
    (("pairs:", "pair:"), "section 'pair' is not a section of the pipeline (did you mean pairs?)"),
    (("  lr: 0.002", "  lrr: 0.002"), "train.lrr is not a parameter (did you mean train.lr?)"),
    (("  steps: 2000", "  steps: -5"), "train.steps must be >= 1, got -5"),
])
def test_a_bad_parameter_stops_the_run_before_any_stage(tmp_path, edit, message):
    shutil.copy(REPO / "dvc.yaml", tmp_path)
    text = (REPO / "params.yaml").read_text()
    assert edit[0] in text
    (tmp_path / "params.yaml").write_text(text.replace(edit[0], edit[1], 1))
    built = tmp_path / "data/manifests/pairs.parquet"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"an output DVC would have removed")
    done = siamese_run(tmp_path)
    assert done.returncode == 1
    assert done.stderr == f"siamese run: error: params.yaml: {message}\n"
    assert built.read_bytes() == b"an output DVC would have removed"
    assert not list((tmp_path / ".prefect").rglob("*.db"))  # no Prefect server started
