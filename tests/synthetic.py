"""A small synthetic Omniglot, laid out exactly like the real zips, for tests of bad input.

`make_source(folder)` writes images_background.zip, images_evaluation.zip, all_runs.zip and
SHA256SUMS into `folder`, so it can serve as OMNIGLOT_SOURCE / fetch.source. Each character is
a few random strokes; each drawer shifts and thickens them a little, so images are distinct.
SYNTHETIC_PARAMS are the params.yaml edits that the default layout can feed.
"""

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SIZE = 105
DRAWERS = 20
# What the synthetic layout (Layout() below) can feed: its smallest background alphabet has
# 4 characters (left out of the 5-way trials), its train images allow a few hundred pairs.
SYNTHETIC_PARAMS: dict[str, dict[str, Any]] = {
    "index": {"expected_fingerprint": None, "expected_runs_fingerprint": None},
    "pairs": {"train_count": 200, "valid_count": 100},
    "trials": {"n_way": [3, 5], "per_alphabet": 4, "holdout_per_alphabet": 4},
}


@dataclass(frozen=True)
class Layout:
    background: tuple[tuple[str, int], ...] = (("Alpha", 6), ("Beta", 5), ("Gamma", 4))
    evaluation: tuple[tuple[str, int], ...] = (("Delta", 12), ("Epsilon", 10))
    runs: int = 2
    run_way: int = 20


def character_image(char_seed: int, drawer: int) -> Image.Image:
    rng = np.random.default_rng(char_seed)
    strokes = rng.integers(15, 90, size=(3, 4))
    # A distinct shift per drawer: no two drawings of a character are identical (the index
    # stage maps each run image to the one evaluation image with equal pixels).
    shift = (drawer % 5 - 2, drawer // 5 - 2)
    img = Image.new("1", (SIZE, SIZE), 1)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in strokes:
        draw.line(
            [(x0 + shift[0], y0 + shift[1]), (x1 + shift[0], y1 + shift[1])],
            fill=0,
            width=2 + drawer % 3,
        )
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_zip(path: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name in sorted(entries):
            zf.writestr(name, entries[name])


def subset_entries(subset: str, alphabets, first_id: int) -> tuple[dict[str, bytes], list]:
    entries: dict[str, bytes] = {}
    characters = []
    char_id = first_id
    for alphabet, n_chars in alphabets:
        for c in range(1, n_chars + 1):
            folder = f"images_{subset}/{alphabet}/character{c:02d}"
            for d in range(1, DRAWERS + 1):
                entries[f"{folder}/{char_id:04d}_{d:02d}.png"] = png_bytes(
                    character_image(char_id, d)
                )
            characters.append((alphabet, char_id))
            char_id += 1
    return entries, characters


def run_entries(eval_chars: list, runs: int, way: int) -> dict[str, bytes]:
    """Lake-style runs: `way` evaluation characters, class image by one drawer, item by another.

    Images are re-encoded (mode L instead of 1): same pixels, other bytes, like the real runs.
    """
    entries: dict[str, bytes] = {}
    rng = np.random.default_rng(0)
    for r in range(1, runs + 1):
        chosen = rng.choice(len(eval_chars), size=way, replace=False)
        order = rng.permutation(way)
        labels = []
        for k, idx in enumerate(chosen, start=1):
            char_id = eval_chars[idx][1]
            cls = character_image(char_id, 1 + r).convert("L")
            item = character_image(char_id, 11 + r).convert("L")
            entries[f"run{r:02d}/training/class{k:02d}.png"] = png_bytes(cls)
            entries[f"run{r:02d}/test/item{order[k - 1] + 1:02d}.png"] = png_bytes(item)
            labels.append((order[k - 1] + 1, k))
        lines = [
            f"run{r:02d}/test/item{i:02d}.png run{r:02d}/training/class{k:02d}.png"
            for i, k in sorted(labels)
        ]
        entries[f"run{r:02d}/class_labels.txt"] = ("\n".join(lines) + "\n").encode()
    return entries


def make_source(folder: Path, layout: Layout = Layout()) -> Path:
    """Write the three zips and SHA256SUMS into `folder`; return `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    background, _ = subset_entries("background", layout.background, first_id=1)
    n_background = sum(n for _, n in layout.background)
    evaluation, eval_chars = subset_entries(
        "evaluation", layout.evaluation, first_id=n_background + 1
    )
    write_zip(folder / "images_background.zip", background)
    write_zip(folder / "images_evaluation.zip", evaluation)
    write_zip(folder / "all_runs.zip", run_entries(eval_chars, layout.runs, layout.run_way))
    sums = []
    for name in ("all_runs.zip", "images_background.zip", "images_evaluation.zip"):
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        sums.append(f"{digest}  {name}")
    (folder / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return folder


def blank_png(width: int, height: int) -> bytes:
    """A white 1-bit PNG of any size, written row by row with zlib streaming: a 30000x30000
    one (a decompression bomb: 900 megapixels) is 150 kB and takes under a second and a few MiB
    to write."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    row = b"\0" + b"\xff" * ((width + 7) // 8)  # filter byte, then the row's bits
    per_block = max(1, (1 << 20) // len(row))
    compress = zlib.compressobj(9)
    idat = []
    for start in range(0, height, per_block):
        idat.append(compress.compress(row * min(per_block, height - start)))
    idat.append(compress.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(idat))
            + chunk(b"IEND", b""))
