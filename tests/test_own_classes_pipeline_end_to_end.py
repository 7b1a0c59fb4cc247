"""Your own classes, end to end: a fresh clone of the project whose params.yaml names the glyph
set (tools/glyphs.py, rendered from the machine's fonts) runs `dvc repro` whole, with no
Omniglot anywhere: a one-shot accuracy with its intervals, the audit, and `siamese lineage`
of the metrics naming the folder and its fingerprint; DVC watches the folder in place."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from siamese import paths
from tests.flowkit import TINY_TRAIN, copy_project, git_commit_all, init_repo, run
from tests.owndata import glyph_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clone(tmp_path_factory, glyph_source) -> tuple[Path, Path]:
    """(a committed copy of the project on the glyph set after `dvc repro`, the glyph folder)"""
    base = tmp_path_factory.mktemp("own-classes")
    source = Path(shutil.copytree(glyph_source, base / "glyphs"))
    root = base / "project"
    root.mkdir()
    copy_project(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    for name, values in {**glyph_params(source), "train": TINY_TRAIN}.items():
        params[name].update(values)
    params["evaluate"]["pictures"] = 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    init_repo(root)
    git_commit_all(root, "the glyph set")
    run(["dvc", "repro"], root, PYTHONPATH=str(root), OMNIGLOT_SOURCE="")
    return root, source


def test_dvc_repro_gives_one_shot_accuracy_with_intervals(clone):
    root, _ = clone
    metrics = json.loads((root / paths.METRICS).read_text())
    assert "lake" not in metrics  # Lake's runs only where the data is Omniglot
    one_shot = metrics["evaluation"]["3-way"]
    assert one_shot["trials"] == 10 and one_shot["alphabets"] == 1  # one test group
    assert one_shot["ci95"][0] <= one_shot["accuracy"] <= one_shot["ci95"][1]
    assert "| evaluation | 3 | 10 |" in (root / "reports/evaluate/report.md").read_text()


def test_the_audit_checks_the_roles_of_the_glyphs(clone):
    root, _ = clone
    audit = json.loads((root / "reports/audit.json").read_text())
    assert audit["roles"]["test"]["images"] == 4 * 6  # CLASSES x FONTS of the test group
    assert "Duplicate audit" in (root / "reports/audit.md").read_text()


def test_lineage_of_the_metrics_names_the_folder_and_its_fingerprint(clone):
    root, source = clone
    fingerprint = json.loads((root / paths.DATASET).read_text())["fingerprint"]
    done = run(["siamese", "lineage", str(paths.METRICS)], root, PYTHONPATH=str(root))
    assert f"images from:    {source}, fingerprint {fingerprint}" in done.stdout
    assert f".dir  {source}\n" in done.stdout  # index's input: the folder, as DVC hashed it
    image = run(["siamese", "lineage", "0"], root, PYTHONPATH=str(root)).stdout
    assert image.startswith("image 0: Cyrillic_capital/") and f"in {source}\n" in image
    forward = run(["siamese", "lineage", "0", "--reverse", "--json"], root, PYTHONPATH=str(root))
    rerun = set(json.loads(forward.stdout)["stages_rerun"])
    assert {"index", "split", "train", "evaluate"} <= rerun


def test_dvc_watches_the_folder_in_place(clone):
    root, source = clone
    assert "up to date" in run(["dvc", "status"], root).stdout
    image = sorted(source.rglob("*.png"))[0]
    kept = image.read_bytes()
    image.write_bytes(sorted(source.rglob("*.png"))[-1].read_bytes())
    try:
        status = run(["dvc", "status", "index"], root).stdout
        assert str(source) in status and "modified" in status
    finally:
        image.write_bytes(kept)
