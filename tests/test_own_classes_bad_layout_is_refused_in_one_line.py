"""Your own classes (dataset.source a folder or .zip): index reads the glyph set in place, the
same images as a zip give the same fingerprint, and each thing it cannot use is refused in one
line naming the file and what is wrong, exit 1, with what was built before left as it was:
a class with one image, an unreadable image, a file outside the layout, fewer classes than the
largest n-way; and a dataset section it cannot use stops the params stage. A CLASS/IMAGE folder
is one group, split by class."""

import json
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from siamese import paths
from tests.owndata import CLASSES, FONTS, glyph_params
from tests.stagekit import run_stage, run_stages, snapshot, write_params

GROUPS = 6  # tools/glyphs.py's SCRIPTS
A = "Latin_capital/LATIN_CAPITAL_LETTER_A"


def built(root: Path, source: Path, **dataset) -> Path:
    """root with params for the glyphs at `source` and the params and index stages run."""
    write_params(root, glyph_params(source, **dataset))
    result = run_stages(root, source, ("params", "index"))
    assert result.returncode == 0, result.stdout + result.stderr
    return root


@pytest.fixture
def project(tmp_path, glyph_source) -> tuple[Path, Path]:
    """A project indexed on a private copy of the glyphs: (project, its source)."""
    source = Path(shutil.copytree(glyph_source, tmp_path / "glyphs"))
    return built(tmp_path / "project", source), source


def refused(root: Path, source: Path, *expected: str) -> None:
    before = snapshot(root)
    result = run_stage(root, "index", source)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert snapshot(root) == before


def test_the_glyphs_are_indexed_in_place_as_groups_classes_and_drawers(project):
    root, source = project
    images = pd.read_parquet(root / paths.IMAGES)
    assert len(images) == GROUPS * CLASSES * FONTS
    assert images["alphabet"].nunique() == GROUPS
    assert set(images.groupby("character_id")["drawer"].apply(sorted).map(tuple)) == \
        {tuple(range(1, FONTS + 1))}
    assert images.groupby("alphabet")["subset"].nunique().max() == 1  # test_by group
    assert (images["subset"] == "evaluation").sum() == CLASSES * FONTS
    assert len(pd.read_parquet(root / paths.LAKE_RUNS)) == 0
    sources = json.loads((root / paths.SOURCES).read_text())
    assert sources["source"] == str(source)
    assert sources["images_fingerprint"] == json.loads((root / paths.DATASET).read_text())[
        "fingerprint"]
    assert not (root / paths.RAW).exists()  # nothing fetched, nothing copied


def test_a_zip_of_the_same_folder_has_the_same_fingerprint(project, tmp_path):
    root, source = project
    zipped = tmp_path / "glyphs.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for path in sorted(source.rglob("*.png")):
            zf.write(path, path.relative_to(source).as_posix())
    other = built(tmp_path / "from-zip", zipped)
    assert (other / paths.PIXELS).read_bytes() == (root / paths.PIXELS).read_bytes()
    fingerprint = [json.loads((r / paths.DATASET).read_text())["fingerprint"]
                   for r in (root, other)]
    assert fingerprint[0] == fingerprint[1]


def test_a_class_with_one_image_is_refused(project):
    root, source = project
    for image in sorted((source / A).iterdir())[1:]:
        image.unlink()
    refused(root, source, f"{source}/{A}", "a class with one image")


def test_an_unreadable_image_is_refused(project):
    root, source = project
    bad = sorted((source / A).iterdir())[0]
    bad.write_bytes(b"not an image at all")
    refused(root, source, str(bad), "not a readable image")


@pytest.mark.parametrize("stray", ["notes.txt", "Latin_capital/notes.txt",
                                   f"{A}/more/DejaVuSans.png"])
def test_a_file_outside_the_layout_is_refused(project, stray):
    root, source = project
    (source / stray).parent.mkdir(parents=True, exist_ok=True)
    (source / stray).write_bytes(b"x")
    refused(root, source, f"{source}/{stray}", "file outside the layout GROUP/CLASS/IMAGE")


def test_fewer_classes_than_the_largest_n_way_is_refused(project):
    root, source = project
    write_params(root, {**glyph_params(source), "trials": {"n_way": [3, 25]}})
    refused(root, source, f"{GROUPS * CLASSES} classes, fewer than the largest trials.n_way 25")


def test_images_other_than_the_pinned_fingerprint_are_refused(project):
    root, source = project
    write_params(root, glyph_params(source, expected_fingerprint="0" * 64))
    refused(root, source, f"{source}: content fingerprint", "does not match "
            f"dataset.expected_fingerprint {'0' * 64} (not those images, or files changed)")


def test_a_class_image_folder_is_one_group_split_by_class(tmp_path, glyph_source):
    source = Path(shutil.copytree(glyph_source / "Greek_small", tmp_path / "greek"))
    root = tmp_path / "project"
    write_params(root, {**glyph_params(source, layout="class/image", test_by="class",
                                       test_count=2),
                        "trials": {"n_way": [2], "per_alphabet": 5, "holdout_per_alphabet": 5}})
    result = run_stages(root, source, ("params", "index", "split", "trials"))
    assert result.returncode == 0, result.stdout + result.stderr
    images = pd.read_parquet(root / paths.IMAGES).merge(pd.read_parquet(root / paths.SPLIT))
    assert set(images["alphabet"]) == {"greek"}
    test_classes = set(images.loc[images["role"] == "test", "character"])
    assert len(test_classes) == 2
    assert set(images.loc[images["character"].isin(test_classes), "role"]) == {"test"}
    assert set(images.loc[~images["character"].isin(test_classes), "role"]) == \
        {"train", "valid", "holdout"}
    trials = pd.read_parquet(root / paths.TRIALS)
    assert set(trials["trial_set"]) == {"valid", "holdout", "evaluation"}  # no Lake's runs


@pytest.mark.parametrize(("dataset", "message"), [
    ({"source": "no/such/folder"}, "dataset.source 'no/such/folder' is neither data/raw"),
    ({"layout": "class/image", "test_by": "group"}, "dataset.test_by group needs layout"),
    ({"sorce": "x"}, "dataset.sorce is not a parameter (did you mean dataset.source?)"),
])
def test_a_bad_dataset_section_stops_the_params_stage_in_one_line(tmp_path, glyph_source,
                                                                    dataset, message):
    params = glyph_params(glyph_source)
    params["dataset"].update(dataset)
    write_params(tmp_path, params)
    result = run_stage(tmp_path, "params", glyph_source)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
