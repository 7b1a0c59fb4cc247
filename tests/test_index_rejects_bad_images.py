"""index: each kind of bad image or layout is an error naming the file and the problem, exit 1,
with the manifests and packed pixels built before left exactly as they were."""

import io
import shutil

from PIL import Image

from tasks import paths
from tests.conftest import mutated_source, run_stage, snapshot, write_params
from tests.synthetic import png_bytes

BACKGROUND = "images_background.zip"
FIRST = "images_background/Alpha/character01"


def fetch_then_index_fails(project, source, *expected: str) -> str:
    """fetch the bad source (it is well-formed as zips), then index must fail cleanly."""
    fetched = run_stage(project, "fetch", source)
    assert fetched.returncode == 0, fetched.stderr
    before = snapshot(project)
    result = run_stage(project, "index", source)
    assert result.returncode == 1, result.stdout + result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(project) == before
    return result.stderr


def test_corrupt_png(synthetic_project, synthetic_source, tmp_path):
    def corrupt(entries):
        entries[f"{FIRST}/0001_03.png"] = entries[f"{FIRST}/0001_03.png"][:40]

    source = mutated_source(tmp_path / "src", synthetic_source, BACKGROUND, corrupt)
    fetch_then_index_fails(synthetic_project, source, f"{FIRST}/0001_03.png", "not a readable PNG")


def test_image_not_105x105(synthetic_project, synthetic_source, tmp_path):
    def resize(entries):
        img = Image.open(io.BytesIO(entries[f"{FIRST}/0001_07.png"])).resize((104, 105))
        entries[f"{FIRST}/0001_07.png"] = png_bytes(img)

    source = mutated_source(tmp_path / "src", synthetic_source, BACKGROUND, resize)
    fetch_then_index_fails(synthetic_project, source, f"{FIRST}/0001_07.png",
                           "104x105, expected 105x105")


def test_character_with_19_drawings(synthetic_project, synthetic_source, tmp_path):
    def drop(entries):
        del entries["images_background/Beta/character02/0008_20.png"]

    source = mutated_source(tmp_path / "src", synthetic_source, BACKGROUND, drop)
    fetch_then_index_fails(synthetic_project, source, "images_background/Beta/character02",
                           "19 drawings", "expected exactly 20")


def test_stray_file_in_character_folder(synthetic_project, synthetic_source, tmp_path):
    def add(entries):
        entries[f"{FIRST}/Thumbs.db"] = b"\0"

    source = mutated_source(tmp_path / "src", synthetic_source, BACKGROUND, add)
    fetch_then_index_fails(synthetic_project, source, f"{FIRST}/Thumbs.db", "stray")


def test_missing_alphabet(synthetic_project, synthetic_source, tmp_path):
    def remove_beta(entries):
        for name in [n for n in entries if n.startswith("images_background/Beta/")]:
            del entries[name]

    source = mutated_source(tmp_path / "src", synthetic_source, BACKGROUND, remove_beta)
    fetch_then_index_fails(synthetic_project, source, "0006 is followed by 0012",
                           "alphabet missing")


def test_missing_or_extra_top_folder(synthetic_project, synthetic_source):
    raw = synthetic_project / paths.RAW
    shutil.rmtree(raw / "all_runs")
    before = snapshot(synthetic_project)
    result = run_stage(synthetic_project, "index", synthetic_source)
    assert result.returncode == 1
    assert "data/raw/omniglot/all_runs: missing folder" in result.stderr
    (raw / "all_runs").mkdir()
    (raw / "images_background_small1").mkdir()
    result = run_stage(synthetic_project, "index", synthetic_source)
    assert result.returncode == 1
    assert "images_background_small1: unexpected entry" in result.stderr
    assert snapshot(synthetic_project) == before


def test_fingerprint_mismatch_names_the_param(synthetic_project, synthetic_source):
    write_params(synthetic_project, {"index": {"expected_fingerprint": "0" * 64}})
    before = snapshot(synthetic_project)
    result = run_stage(synthetic_project, "index", synthetic_source)
    assert result.returncode == 1
    assert "index.expected_fingerprint" in result.stderr
    assert snapshot(synthetic_project) == before


def test_run_image_without_evaluation_twin(synthetic_project, synthetic_source, tmp_path):
    def blank(entries):
        entries["run01/test/item05.png"] = png_bytes(Image.new("L", (105, 105), 255))

    source = mutated_source(tmp_path / "src", synthetic_source, "all_runs.zip", blank)
    fetch_then_index_fails(synthetic_project, source, "all_runs/run01/test/item05.png",
                           "no evaluation image with equal pixels")
