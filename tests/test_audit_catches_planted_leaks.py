"""`siamese audit` on the synthetic data: a test image planted into the train role is caught
(same bytes, same pixels, and a copy shifted by a pixel), and with on_leak: fail the stage
stops with the pair named, changing nothing already built."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from siamese import paths
from siamese.errors import PipelineError
from siamese.images import load_pixels
from siamese.zips import read_files
from tasks import audit
from tests import REPO
from tests.flowkit import flow_run_records, git_commit_all, init_repo, latest_flow_run_id, run
from tests.stagekit import replace_in_raw, run_stage, snapshot

# The synthetic generator draws each drawer as the same strokes shifted by a pixel or two, so
# within an alphabet every role is near-identical to the others by construction: these tests
# count as leaks only what crosses from the train alphabets to the evaluation ones.
ACROSS_ALPHABETS = {"leak_between": ["train/test", "train/lake"]}


def set_audit(root: Path, **values) -> None:
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["audit"].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def shifted_png(png: bytes) -> bytes:
    """The image `png` moved one pixel right (no other synthetic drawer is drawn so)."""
    with Image.open(io.BytesIO(png)) as img:
        ink = np.asarray(img.convert("L")) < 128
    moved = np.zeros_like(ink)
    moved[:, 1:] = ink[:, :-1]
    out = io.BytesIO()
    Image.fromarray(np.where(moved, 0, 255).astype(np.uint8)).convert("1").save(out, "PNG")
    return out.getvalue()


@pytest.fixture
def planted(synthetic_project) -> dict[str, int]:
    """The synthetic project with two train images replaced: one by the bytes of a test image
    that Lake's runs use, one by another test image shifted by a pixel; index and split rerun."""
    root = synthetic_project
    images = pd.read_parquet(root / paths.IMAGES).set_index("image_id")
    roles = pd.read_parquet(root / paths.SPLIT).set_index("image_id")["role"]
    in_runs = set(pd.read_parquet(root / paths.LAKE_RUNS)["image_id"])
    train = roles.index[roles == "train"]
    test = roles.index[roles == "test"]
    ids = {"copy_of": int(next(i for i in test if i in in_runs)), "copy": int(train[0]),
           "shift_of": int(next(i for i in test if i not in in_runs)), "shift": int(train[-1])}
    copy_of, shift_of = read_files(root / paths.RAW, [images.at[ids["copy_of"], "path"],
                                                       images.at[ids["shift_of"], "path"]])
    replace_in_raw(root, {images.at[ids["copy"], "path"]: copy_of,
                          images.at[ids["shift"], "path"]: shifted_png(shift_of)})
    set_audit(root, **ACROSS_ALPHABETS)
    for stage in ("index", "split"):
        done = run_stage(root, stage, "unused")
        assert done.returncode == 0, done.stderr
    return ids


def ends(record: dict) -> tuple:
    return (record["kind"], record["a"]["image_id"], record["a"]["role"],
            record["b"]["image_id"], record["b"]["role"])


def test_audit_finds_the_planted_duplicates(planted, synthetic_project, monkeypatch):
    from siamese.config import load_params

    monkeypatch.chdir(synthetic_project)
    report = audit.run(load_params())
    copy, of = planted["copy"], planted["copy_of"]
    leaks = {ends(r) for r in report["pairs"] if r["leak"]}
    assert ("sha256", copy, "train", of, "test") in leaks
    assert ("pixels", copy, "train", of, "test") in leaks
    assert ("pixels", copy, "train", of, "lake") in leaks  # the Lake run image drawn from it
    assert ("near", planted["shift"], "train", planted["shift_of"], "test") in leaks
    planted_ids = {copy, planted["shift"]}
    assert all(r["a"]["image_id"] in planted_ids for r in report["pairs"] if r["leak"])
    assert report["pairs_by_roles"]["sha256"] == {"train/test": 1}
    assert report["roles"]["train"]["with_pixels_elsewhere"] == 1
    assert report["expected"] == {"lake_run_image_is_its_evaluation_image": 80}

    saved = json.loads((synthetic_project / audit.REPORT_JSON).read_text())
    assert saved["leaks"] == report["leaks"] == len(leaks)
    markdown = (synthetic_project / audit.REPORT_MD).read_text()
    assert "| train/test | 1 | 1 |" in markdown
    picture = f"sha256-{copy}-{of}.png"
    assert f"(audit/{picture})" in markdown
    with Image.open(synthetic_project / audit.PICTURES / picture) as img:
        assert img.width > 3 * 105


def test_on_leak_fail_stops_with_the_pair_named_and_keeps_what_was_built(
    planted, synthetic_project
):
    set_audit(synthetic_project, on_leak="fail")
    before = snapshot(synthetic_project)
    done = run_stage(synthetic_project, "audit", "unused")
    assert done.returncode == 1
    message = done.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert "leak(s) across roles (audit.on_leak: fail)" in message
    assert f"sha256 train image {planted['copy']} (" in message
    assert f"= test image {planted['copy_of']} (" in message
    assert snapshot(synthetic_project) == before
    assert (synthetic_project / audit.REPORT_MD).exists()  # the reports explain the failure


def test_clean_synthetic_data_passes_on_leak_fail(synthetic_data_root, monkeypatch):
    monkeypatch.chdir(synthetic_data_root)
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["audit"].update(ACROSS_ALPHABETS, on_leak="fail")
    p = audit.audit_params(params)
    images = pd.read_parquet(paths.IMAGES)
    lake = pd.read_parquet(paths.LAKE_RUNS)
    pixels = audit.item_pixels(load_pixels(paths.PIXELS), images, lake)
    report = audit.audit(images, pd.read_parquet(paths.SPLIT), lake, pixels, p)
    assert report["leaks"] == 0
    assert report["pairs_by_roles"]["sha256"] == {} and report["pairs_by_roles"]["pixels"] == {}


@pytest.mark.parametrize(("values", "named"), [
    ({"on_leak": "explode"}, "audit.on_leak must be one of warn, fail"),
    ({"leak_between": ["train/nowhere"]}, "audit.leak_between: 'train/nowhere' is not"),
    ({"leak_between": [["train", "test"]]}, "audit.leak_between: ['train', 'test'] is not"),
    ({"min_overlap": 2}, "audit.min_overlap must be <= 1.0"),
])
def test_bad_audit_params_are_named(values, named):
    params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    params["audit"].update(values)
    with pytest.raises(PipelineError, match=named.replace("[", r"\[").replace("]", r"\]")):
        audit.audit_params(params)


def test_audit_stage_follows_split_and_train_does_not_wait_for_it():
    stages = yaml.safe_load((Path(__file__).parents[1] / "dvc.yaml").read_text())["stages"]
    order = list(stages)
    assert order.index("audit") == order.index("split") + 1
    assert paths.SPLIT.as_posix() in stages["audit"]["deps"]
    outs = [next(iter(o)) for o in stages["audit"]["outs"]]
    assert outs == [audit.REPORT_JSON.as_posix(), audit.REPORT_MD.as_posix(),
                    audit.PICTURES.as_posix()]
    for name, stage in stages.items():
        assert not any(dep.startswith("reports/audit") for dep in stage.get("deps", [])), name


@pytest.mark.slow
def test_on_leak_fail_stops_the_pipeline_flow_before_training(planted, synthetic_project, request):
    """The flow runs audit right after split: a leak fails it, and no later stage runs."""
    request.getfixturevalue("prefect_session")
    from flows.pipeline import run_pipeline

    root = synthetic_project
    for package in ("tasks", "siamese"):  # the stages' code deps (dvc.yaml)
        shutil.copytree(REPO / package, root / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, root)
    set_audit(root, on_leak="fail")
    init_repo(root)
    run(["dvc", "commit", "-f", "-q", "fetch"], root)  # the planted images are fetch's output
    git_commit_all(root, "planted")
    with pytest.raises(PipelineError, match=f"(?s)stage 'audit' failed.*train image "
                                            f"{planted['copy']} .* = test image"):
        run_pipeline(repo=root)
    tasks, _, _ = flow_run_records(latest_flow_run_id())
    assert sorted(tasks) == ["audit", "fetch", "index", "params", "split"]
    assert tasks["audit"].state.is_failed()
    assert tasks["split"].state.is_completed() and (root / paths.SPLIT).exists()
    assert not (root / paths.MODEL).exists()  # pairs, trials, train, evaluate never started


def test_candidates_that_none_overlap_enough_give_no_near_pairs():
    from tasks.audit import near_pairs

    mask = np.random.default_rng(0).random((2, 105, 105)) < 0.1
    packed = np.packbits(mask, axis=-1)  # two different drawings of the same ink density
    params = {"tolerance": 0, "near_bits": 256, "min_overlap": 1.0}
    near, work = near_pairs(packed, params, np.zeros((0, 2), dtype=np.int64))
    assert work["candidates"] == 1 and near.empty and list(near.columns[:2]) == ["a", "b"]
