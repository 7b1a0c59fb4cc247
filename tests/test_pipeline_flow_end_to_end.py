"""The real pipeline as a Prefect flow, on a tiny profile of this project.

The project's files are copied into a fresh git + DVC repository whose params.yaml fetches
the synthetic Omniglot (tests/synthetic.py) and trains for a few steps (copy_project and
tiny_params of tests/flowkit.py); the stage commands run that copy's code (PYTHONPATH). The
tests run in file order on one shared project.
"""

import io
import json
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from siamese import paths
from tests import REPO
from tests.flowkit import (
    copy_project,
    flow_run_records,
    git_commit_all,
    init_repo,
    latest_flow_run_id,
    run,
    tiny_params,
)
from tests.stagekit import write_sums
from tools import lineage

pytestmark = pytest.mark.slow
STAGES = ["params", "fetch", "index", "split", "audit", "pairs", "trials", "train", "evaluate"]
UPSTREAM_OF_METRICS = [s for s in STAGES if s != "audit"]  # nothing waits for the audit
TIMINGS: dict[str, float] = {}
# DVC experiments keep uncached metrics only if git tracks them (flows.sweep checks this);
# until the project's .gitignore says so, the copy gets these lines.
TRACK_METRICS = "!/reports/metrics.json\n!/reports/train/\n/reports/train/*\n" \
    "!/reports/train/metrics.json\n"


@pytest.fixture(scope="module")
def pipeline(request):
    request.getfixturevalue("prefect_session")
    from flows import pipeline

    return pipeline


@pytest.fixture(scope="module")
def project(tmp_path_factory, synthetic_source):
    root = tmp_path_factory.mktemp("e2e") / "project"
    root.mkdir()
    copy_project(root)
    tiny_params(root, synthetic_source)
    if subprocess.run(["git", "check-ignore", "-q", "--no-index", "reports/metrics.json"],
                      cwd=REPO).returncode == 0:
        with open(root / ".gitignore", "a") as f:
            f.write(TRACK_METRICS)
    init_repo(root)
    git_commit_all(root, "tiny profile")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("OMNIGLOT_SOURCE", raising=False)  # params.yaml says where the data is
        mp.setenv("PYTHONPATH", str(root))
        yield root


def outcomes(results) -> dict[str, str]:
    return {r["stage"]: r["outcome"] for r in results}


def test_flow_builds_the_pipeline_then_skips_every_stage(pipeline, project):
    start = time.monotonic()
    first = pipeline.run_pipeline(repo=project)
    TIMINGS["flow from scratch"] = time.monotonic() - start
    assert list(outcomes(first)) == STAGES and set(outcomes(first).values()) == {"ran"}
    metrics = json.loads((project / paths.METRICS).read_text())
    assert 0 <= metrics["valid"]["5-way"]["accuracy"] <= 1

    start = time.monotonic()
    second = pipeline.run_pipeline(repo=project)
    TIMINGS["flow, all cached"] = time.monotonic() - start
    assert set(outcomes(second).values()) == {"up to date"}
    TIMINGS["dvc repro inside the cached flow's tasks"] = sum(r["seconds"] for r in second)

    assert "up to date" in run(["dvc", "status"], project).stdout
    start = time.monotonic()
    assert "Running stage" not in run(["dvc", "repro"], project).stdout
    TIMINGS["dvc repro, all cached"] = time.monotonic() - start
    overhead = (TIMINGS["flow, all cached"] - TIMINGS["dvc repro, all cached"]) / len(STAGES)
    TIMINGS["flow overhead per stage (vs one dvc repro)"] = overhead
    print("\n" + "\n".join(f"{k}: {v:.1f} s" for k, v in TIMINGS.items()))


def test_changed_train_param_reruns_train_and_evaluate_only(pipeline, project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lr"] = 0.001
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    results = outcomes(pipeline.run_pipeline(repo=project))
    # params reruns on any edit of params.yaml (or its run cache restores its output, where
    # these params were checked before); its output's bytes stay, so DVC skips the rest
    assert results.pop("params") in ("ran", "restored")
    assert results == {**dict.fromkeys(STAGES[1:7], "up to date"), "train": "ran",
                       "evaluate": "ran"}
    assert "up to date" in run(["dvc", "status"], project).stdout
    _, _, artifacts = flow_run_records(latest_flow_run_id())
    table = json.loads(artifacts["omniglot-metrics"].data)
    assert {row["metric"] for row in table} >= {"valid/5-way/accuracy", "lake/20-way/accuracy"}
    [provenance] = json.loads(artifacts["omniglot-provenance"].data)
    assert provenance["fingerprint"] == json.loads((project / paths.DATASET).read_text())[
        "fingerprint"]
    assert provenance["metrics"] == "reports/metrics.json"
    git_commit_all(project, "lr 0.001, built")


def test_dvc_exp_run_of_part_of_the_pipeline_works_in_a_fresh_clone(project, tmp_path,
                                                                    monkeypatch):
    """A clone has dvc.lock but no cache: `dvc exp run train` builds fetch ... train, and DVC,
    saving the experiment, reads every plot's data, evaluate's too, which never ran here."""
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert (clone / "reports/plots/roc.csv").exists()  # git keeps the plots' data
    monkeypatch.setenv("PYTHONPATH", str(clone))
    done = run(["dvc", "exp", "run", "train", "-n", "part", "-S", "train.lr=0.002"], clone,
               check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    shown = run(["dvc", "exp", "show", "--json"], clone).stdout
    assert '"part"' in shown


def test_two_point_queued_sweep_compares_the_experiments(project, pipeline):
    from flows.sweep import run_sweep

    rows = run_sweep(["train.lr=0.003,0.01"], jobs=2, repo=project)
    assert sorted(r["train.lr"] for r in rows) == ["0.003", "0.01"]  # ranked by holdout
    assert {r["state"] for r in rows} == {"success"}
    assert all(0 <= r["valid/5-way/accuracy"] <= 1 for r in rows)
    table = next((project / "reports/sweep").glob("*.md")).read_text()
    assert "valid/5-way/accuracy" in table and "| 0.003 |" in table
    assert "up to date" in run(["dvc", "status"], project).stdout  # the workspace is as it was


def changed_source(folder: Path, source: Path) -> tuple[Path, str]:
    """A copy of the synthetic source with one image's bytes changed (one more ink pixel)."""
    shutil.copytree(source, folder)
    zip_path = folder / "images_background.zip"
    with zipfile.ZipFile(zip_path) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    name = sorted(n for n in entries if n.endswith(".png"))[0]
    image = Image.open(io.BytesIO(entries[name])).convert("1")
    image.putpixel((0, 0), 0)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    entries[name] = buf.getvalue()
    from tests.synthetic import write_zip

    write_zip(zip_path, entries)
    write_sums(folder)
    return folder, name


def test_lineage_of_the_metrics_changes_with_an_input_image(project, tmp_path, synthetic_source):
    before = run(["siamese", "lineage", "reports/metrics.json"], project).stdout
    record = lineage.lineage("reports/metrics.json", project)
    assert [s["stage"] for s in record["stages"]] == UPSTREAM_OF_METRICS
    assert record["matches_lock"] is True and record["warnings"] == []
    assert record["images_by_role"] and record["trials"]
    head = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert record["git"]["lock_revision"] == head and not record["git"]["lock_uncommitted"]

    source, name = changed_source(tmp_path / "source", synthetic_source)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["fetch"]["source"] = str(source)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "trials"], project)  # the data stages only: the images changed
    after = run(["siamese", "lineage", "reports/metrics.json"], project).stdout
    assert after != before
    assert "warning: stage 'train' was built from data/manifests/images.parquet" in after
    old = {o["path"]: o["md5"] for s in record["stages"] for o in s["outs"]}
    new = lineage.lineage("reports/metrics.json", project)
    fetched = "data/raw"  # fetch's output, the folder of the zips
    assert {o["path"]: o["md5"] for s in new["stages"] for o in s["outs"]}[
        fetched] != old[fetched]
    image_id = 0  # the first path in sorted order is the changed image
    assert lineage.lineage(str(image_id), project)["path"] == name
