"""Big, bomb and broken user images: a one-line error naming the file, and bounded memory.

`siamese classify` refuses an image over siamese.images.MAX_PIXELS / MAX_SIDE from its header,
before decoding it (a JPEG over it is decoded at reduced scale instead); what it accepts is read
without padding it to a float32 square of its long side, with the same result, bit for bit."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from siamese import images
from siamese.errors import PipelineError
from siamese.images import MAX_SIDE, decode_png, read_image_file
from tests.classifykit import save_model, stroke_image
from tests.synthetic import blank_png
from tools.cli import main

ROOT = Path(__file__).resolve().parents[1]


def classify_error(tmp_path: Path, query: Path, capsys) -> str:
    """`siamese classify` with `query`: exit 1 and the one line of error it prints."""
    model = save_model(tmp_path / "model.pt")
    support = tmp_path / "support.png"
    Image.fromarray(stroke_image(0, 105, 105)).convert("1").save(support)
    argv = ["classify", "--model", str(model), "--support", str(support), "--query", str(query)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(query) in err, err
    return err


@pytest.mark.parametrize("name, width, height, message", [
    ("bomb.png", 30000, 30000, "image of 900,000,000 pixels, larger than the limit"),
    ("huge.png", 12000, 12000, "image is 12000x12000, larger than the limit of 16,777,216"),
    ("long.png", MAX_SIDE + 1, 1, f"image is {MAX_SIDE + 1}x1, larger than the limit"),
])
def test_image_over_the_limit_is_refused_from_its_header(tmp_path, capsys, name, width, height,
                                                         message):
    query = tmp_path / name
    query.write_bytes(blank_png(width, height))
    assert query.stat().st_size < 200_000
    assert message in classify_error(tmp_path, query, capsys)


def broken_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    png = blank_png(300, 200)
    cases = {
        "truncated.png": png[: len(png) // 2],
        "header-only.png": png[:33],
        "empty.png": b"",
        "text.jpg": b"not an image at all\n",
        "garbage.gif": b"GIF89a" + bytes(range(256)) * 4,
    }
    out = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, "not a readable image")
    (tmp_path / "folder.png").mkdir()
    out["folder.png"] = (tmp_path / "folder.png", "not a regular file (a folder, FIFO or device)")
    os.mkfifo(tmp_path / "fifo.png")  # read, it would wait for a writer for ever
    out["fifo.png"] = (tmp_path / "fifo.png", "not a regular file (a folder, FIFO or device)")
    out["absent.png"] = (tmp_path / "absent.png", "file not found")
    return out


@pytest.mark.parametrize("name", ["truncated.png", "header-only.png", "empty.png", "text.jpg",
                                  "garbage.gif", "folder.png", "fifo.png", "absent.png"])
def test_unreadable_image_is_one_line_naming_the_file(tmp_path, capsys, name):
    path, message = broken_files(tmp_path)[name]
    assert message in classify_error(tmp_path, path, capsys)


def test_big_jpeg_is_decoded_at_reduced_scale(tmp_path):
    ink = np.full((6000, 6000), 255, dtype=np.uint8)  # 36 Mpx: over the limit, 1/2 scale within
    ink[2000:4000, 2500:3500] = 0
    Image.fromarray(ink).save(tmp_path / "big.jpg", quality=90)
    del ink
    with Image.open(tmp_path / "big.jpg") as img:
        images.fit_within_limits(img, tmp_path / "big.jpg")
        assert img.size == (3000, 3000)
    got = read_image_file(tmp_path / "big.jpg")
    assert got[52, 52] and not got[10, 52] and not got[52, 30]


def test_index_refuses_a_bomb_from_its_header():
    with pytest.raises(PipelineError, match=r"^x\.png: image of 900,000,000 pixels, expected 105"):
        decode_png(blank_png(30000, 30000), "x.png")
    with pytest.raises(PipelineError, match=r"^x\.png: image is 12000x12000, expected 105x105"):
        decode_png(blank_png(12000, 12000), "x.png")


def reference(path: Path, size: int) -> np.ndarray:
    """read_image_file as it was: pad to a float32 square of the long side, then resize."""
    with Image.open(path) as img:
        img.load()
        if "A" in img.getbands() or "transparency" in img.info:
            paper = Image.new("RGBA", img.size, "white")
            img = Image.alpha_composite(paper, img.convert("RGBA"))
        ink = 1.0 - np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]]).mean() > 0.5:
        ink = 1.0 - ink
    h, w = ink.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = ink
    return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BOX)) >= 0.5


@pytest.mark.parametrize("band", [1, 1000, images.BAND_PIXELS])
def test_results_are_those_of_the_padded_square_bit_for_bit(tmp_path, monkeypatch, band):
    monkeypatch.setattr(images, "BAND_PIXELS", band)
    rng = np.random.default_rng(band)
    for h, w in [(105, 105), (120, 200), (333, 97), (7, 500), (1, 1)]:
        for mode, ext in [("L", "png"), ("RGBA", "png"), ("RGB", "jpg"), ("1", "bmp")]:
            pixels = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
            pixels = np.where(rng.random((h, w, 1)) < 0.5, pixels // 4, pixels)
            path = tmp_path / f"{h}x{w}-{mode}.{ext}"
            Image.fromarray(pixels, "RGBA").convert(mode).save(path)
            for size in (105, 28):
                assert np.array_equal(read_image_file(path, size), reference(path, size)), path


PEAK = """
import resource, sys
from siamese.images import read_image_file
read_image_file(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
read_image_file(sys.argv[1])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.parametrize("width, height, bound_mib", [
    (12000, 2, 40),       # was 557 MiB: padded to a 12000x12000 float32 square
    (4000, 4000, 150),    # was 261 MiB; 61 MiB measured
])
def test_peak_memory_of_reading_a_big_image_is_bounded(tmp_path, width, height, bound_mib):
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    big.write_bytes(blank_png(width, height))
    small.write_bytes(blank_png(105, 105))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(PEAK), str(big), str(small)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert int(result.stdout) < bound_mib, f"peak grew {result.stdout.strip()} MiB"
