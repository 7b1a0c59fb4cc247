"""`siamese lineage --diff A B` on a git + DVC project of the synthetic data: two revisions that
differ in one parameter and one image show exactly those, and nothing else."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from siamese import paths
from siamese.errors import PipelineError
from siamese.zips import read_files
from tests import REPO
from tests.flowkit import BIN, git_commit_all, init_repo, run, set_param
from tests.stagekit import replace_in_raw
from tools import revisions

STAGES = ("index", "split")


def rebuild(root: Path) -> None:
    """Rerun index and split, then record them in dvc.lock and the DVC cache."""
    for stage in STAGES:
        run([str(BIN / "siamese"), stage], root)
    run(["dvc", "commit", "-f", "-q", *STAGES], root)


@pytest.fixture(scope="module")
def history(tmp_path_factory, synthetic_data_root) -> tuple[Path, str]:
    """Revision A (HEAD~1): the synthetic data built; B (HEAD): train.lr changed and one
    image's pixels changed. Returns the project and the changed image's path."""
    root = Path(shutil.copytree(synthetic_data_root, tmp_path_factory.mktemp("diff") / "p"))
    for package in ("tasks", "siamese"):  # the stages' code deps (dvc.yaml)
        shutil.copytree(REPO / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root)
    init_repo(root)
    run(["dvc", "commit", "-f", "-q", *STAGES], root)
    git_commit_all(root, "A")
    changed = "images_background/Alpha/character01/0001_01.png"
    donor = "images_background/Alpha/character02/0002_01.png"
    replace_in_raw(root, {changed: read_files(root / paths.RAW, [donor])[0]})
    set_param(root, "train", "lr", 0.001)
    rebuild(root)
    git_commit_all(root, "B")
    return root, changed


def test_diff_shows_the_one_parameter_and_the_one_image(history):
    root, changed = history
    before = run(["git", "status", "--porcelain"], root).stdout
    rec = revisions.diff("HEAD~1", "HEAD", root)
    assert rec["params"] == [{"name": "train.lr", "from": 0.002, "to": 0.001, "change": "changed"}]
    images = rec["images"]
    assert images["changed"]["count"] == 1 and images["changed"]["paths"] == [changed]
    assert sum(images["changed"]["by_role"].values()) == 1
    assert images["added"]["count"] == images["removed"]["count"] == 0
    assert images["role_changed"]["count"] == 0
    assert rec["code"] == [] and rec["metrics"] == []
    assert run(["git", "status", "--porcelain"], root).stdout == before

    text = run([str(BIN / "siamese"), "lineage", "--diff", "HEAD~1", "HEAD"], root).stdout
    assert "## Parameters: 1 changed" in text and "`train.lr`: 0.002 -> 0.001" in text
    assert "- changed: 1 (by role: " in text and f"  - `{changed}`" in text
    assert "## Code: 0 file(s)" in text
    as_json = run([str(BIN / "siamese"), "lineage", "--diff", "HEAD~1", "HEAD", "--json"], root)
    assert json.loads(as_json.stdout)["images"] == images


def test_experiment_names_and_code_changes(history, tmp_path):
    root, _ = history
    run(["git", "update-ref", "refs/exps/aa/bbbb/lucky-lark", "HEAD~1"], root)
    assert revisions.resolve(root, "lucky-lark") == revisions.resolve(root, "HEAD~1")
    assert revisions.code_changed(root, "HEAD~1", "HEAD") == []
    (root / "tasks" / "split.py").write_text("# changed\n")
    (root / "notes.txt").write_text("not a dependency\n")
    git_commit_all(root, "C")
    try:
        rows = revisions.code_changed(root, "HEAD~1", "HEAD")
        assert rows == [{"file": "tasks/split.py", "stages": ["split"]}]
    finally:
        run(["git", "reset", "-q", "--hard", "HEAD~1"], root)


def test_metrics_change_against_the_old_interval():
    a = {"evaluation/20-way/accuracy": {"value": 0.8, "ci95": [0.77, 0.83]},
         "verification/auc": {"value": 0.9, "ci95": None}}
    b = {"evaluation/20-way/accuracy": {"value": 0.86, "ci95": [0.83, 0.88]},
         "verification/auc": {"value": 0.91, "ci95": None}}
    rows = {r["metric"]: r for r in revisions.diff_metrics(a, b)}
    assert rows["evaluation/20-way/accuracy"]["change"] == 0.06
    assert rows["evaluation/20-way/accuracy"]["outside_ci95"] is True
    assert rows["verification/auc"]["outside_ci95"] is None
    b["evaluation/20-way/accuracy"]["value"] = 0.82
    assert revisions.diff_metrics(a, b)[0]["outside_ci95"] is False


def test_bad_revisions_and_missing_cache_objects_are_one_line_errors(history):
    root, _ = history
    with pytest.raises(PipelineError, match="'no-such-rev': neither a git revision nor a DVC"):
        revisions.diff("no-such-rev", "HEAD", root)
    done = run([str(BIN / "siamese"), "lineage", "--diff", "nope", "HEAD"], root, check=False)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "'nope'" in done.stderr
    cache = revisions.cache_dir(root)
    lock = subprocess.run(["git", "show", "HEAD~1:dvc.lock"], cwd=root, capture_output=True,
                          text=True, check=True).stdout
    md5 = lock.split("path: data/manifests/images.parquet")[-1].split("md5: ")[1].split()[0]
    obj = cache / md5[:2] / md5[2:]
    saved = obj.read_bytes()
    obj.chmod(0o644)
    obj.unlink()
    try:
        missing = f"images.parquet at HEAD~1 \\(md5 {md5}\\): not in the DVC cache"
        with pytest.raises(PipelineError, match=missing):
            revisions.diff("HEAD~1", "HEAD", root)
    finally:
        obj.write_bytes(saved)
