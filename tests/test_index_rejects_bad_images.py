"""index: each kind of bad image or layout is an error naming the file and the problem, exit 1,
with the manifests and packed pixels built before left exactly as they were.

Most cases go through fetch (the zips are well-formed, their content is not); the others put
a zip into data/raw by hand, as a user might, where only index can see what is wrong."""

import io
import zipfile

from PIL import Image

from siamese import paths
from tests.stagekit import mutated_source, run_stage, snapshot, write_params
from tests.synthetic import blank_png, png_bytes

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


def test_huge_image_is_refused_from_its_header(synthetic_project, synthetic_source, tmp_path):
    def bomb(entries):  # 30000x30000, 150 kB: within the zip limits, 900 megapixels decoded
        entries[f"{FIRST}/0001_05.png"] = blank_png(30000, 30000)

    source = mutated_source(tmp_path / "src", synthetic_source, BACKGROUND, bomb)
    fetch_then_index_fails(synthetic_project, source, f"{FIRST}/0001_05.png",
                           "image of 900,000,000 pixels, expected 105x105")


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


def index_fails(project, *expected: str) -> None:
    """index on data/raw as it is must fail cleanly, naming `expected`."""
    before = snapshot(project)
    result = run_stage(project, "index", "unused")
    assert result.returncode == 1, result.stdout + result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(project) == before


def add_entry(zip_path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(zip_path, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)


def test_missing_zip(synthetic_project):
    (synthetic_project / paths.RAW / "all_runs.zip").unlink()
    index_fails(synthetic_project, "data/raw/all_runs.zip: not found", "run the fetch stage")


def test_extra_top_folder_inside_a_zip(synthetic_project):
    add_entry(synthetic_project / paths.RAW / BACKGROUND, "images_background_small1/x.png", b"?")
    index_fails(synthetic_project, "images_background.zip", "images_background_small1/x.png",
                "unexpected entry")


def test_stray_file_in_a_run(synthetic_project):
    add_entry(synthetic_project / paths.RAW / "all_runs.zip", "run02/notes.txt", b"?")
    index_fails(synthetic_project, "all_runs/run02/notes.txt", "unexpected entry in a run")


def test_zip_bomb_put_in_by_hand_is_refused(synthetic_project):
    add_entry(synthetic_project / paths.RAW / BACKGROUND, f"{FIRST}/bomb.png", bytes(8 << 20))
    index_fails(synthetic_project, "bomb.png", "over the limit")


def test_truncated_zip_put_in_by_hand(synthetic_project):
    zip_path = synthetic_project / paths.RAW / "images_evaluation.zip"
    zip_path.write_bytes(zip_path.read_bytes()[:1000])
    index_fails(synthetic_project, "images_evaluation.zip", "not a valid zip")


def test_fingerprint_mismatch_names_the_param(synthetic_project):
    write_params(synthetic_project, {"index": {"expected_fingerprint": "0" * 64}})
    index_fails(synthetic_project, "index.expected_fingerprint", "images_background.zip")


def test_edited_run_labels_fail_the_runs_fingerprint(synthetic_project, synthetic_source,
                                                     tmp_path):
    """Lake's labels are pinned like the images: swapping two labels changes the fingerprint."""
    result = run_stage(synthetic_project, "index", synthetic_source)
    pinned = result.stdout.rsplit("runs fingerprint ", 1)[1].strip()

    def swap(entries):
        lines = entries["run01/class_labels.txt"].decode().splitlines()
        first, second = lines[0].split(), lines[1].split()
        lines[:2] = [f"{first[0]} {second[1]}", f"{second[0]} {first[1]}"]
        entries["run01/class_labels.txt"] = ("\n".join(lines) + "\n").encode()

    source = mutated_source(tmp_path / "src", synthetic_source, "all_runs.zip", swap)
    write_params(synthetic_project, {"index": {"expected_fingerprint": None,
                                               "expected_runs_fingerprint": pinned}})
    fetched = run_stage(synthetic_project, "fetch", source)
    assert fetched.returncode == 0, fetched.stderr
    index_fails(synthetic_project, "index.expected_runs_fingerprint", "all_runs.zip")


def test_run_image_without_evaluation_twin(synthetic_project, synthetic_source, tmp_path):
    def blank(entries):
        entries["run01/test/item05.png"] = png_bytes(Image.new("L", (105, 105), 255))

    source = mutated_source(tmp_path / "src", synthetic_source, "all_runs.zip", blank)
    fetch_then_index_fails(synthetic_project, source, "all_runs/run01/test/item05.png",
                           "no evaluation image with equal pixels")
