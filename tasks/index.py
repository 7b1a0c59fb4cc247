"""index: validate the unpacked Omniglot, and build the image and Lake-run manifests.

Writes data/manifests/images.parquet (one row per PNG, sorted by path; image_id = row),
data/packed/pixels.npy (the ink masks, bit-packed, row = image_id), data/manifests/dataset.json
and data/manifests/lake_runs.parquet (each run image mapped to the evaluation image with
equal pixels). The content fingerprint is the one defined by the data's README: sha256 over
`<path inside the zip>\t<sha256 of the PNG>\n`, one line per PNG, sorted by path.
Everything is validated before anything is written.
"""

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import paths
from tasks.atomic import write_json, write_npy, write_parquet
from tasks.errors import PipelineError
from tasks.images import decode_png, pack
from tasks.params import get_int, section

SUBSETS = ("background", "evaluation")
RUNS = "all_runs"
TOP_FOLDERS = tuple(f"images_{s}" for s in SUBSETS) + (RUNS,)
PNG_NAME = re.compile(r"^(\d{4})_(\d{2})\.png$")
RUN_NAME = re.compile(r"^run\d{2}$")
RUN_FILE = {
    "training": re.compile(r"^class(\d{2})\.png$"),
    "test": re.compile(r"^item(\d{2})\.png$"),
}


def index_params(params: dict[str, Any]) -> dict[str, Any]:
    sec = section(params, "index")
    expected = sec.get("expected_fingerprint")
    if expected is not None and not re.fullmatch(r"[0-9a-f]{64}", str(expected)):
        raise PipelineError(
            f"params.yaml: index.expected_fingerprint must be null or 64 hex digits, "
            f"got {expected!r}"
        )
    return {
        "image_size": get_int(sec, "image_size", "index.image_size", lo=1),
        "drawers": get_int(sec, "drawers", "index.drawers", lo=1),
        "expected_fingerprint": expected,
    }


def check_top_folders(raw: Path) -> None:
    """The raw folder holds exactly images_background, images_evaluation and all_runs."""
    if not raw.is_dir():
        raise PipelineError(f"{raw}: not found; run the fetch stage first")
    present = {p.name for p in raw.iterdir()}
    for name in TOP_FOLDERS:
        if name not in present or not (raw / name).is_dir():
            raise PipelineError(f"{raw / name}: missing folder")
    for name in sorted(present - set(TOP_FOLDERS)):
        expected = ", ".join(TOP_FOLDERS)
        raise PipelineError(f"{raw / name}: unexpected entry (expected only {expected})")


def subfolders(folder: Path) -> list[Path]:
    """The sub-folders of `folder`, sorted; any file there is a stray and an error."""
    entries = sorted(folder.iterdir())
    for entry in entries:
        if not entry.is_dir():
            raise PipelineError(f"{entry}: stray file (expected only folders in {folder})")
    return entries


def character_files(folder: Path, drawers: int) -> list[tuple[int, int, Path]]:
    """(character_id, drawer, path) of a character folder's PNGs, checked strictly."""
    found = []
    for entry in sorted(folder.iterdir()):
        match = PNG_NAME.match(entry.name)
        if not entry.is_file() or not match:
            raise PipelineError(f"{entry}: stray entry (expected only NNNN_DD.png files)")
        found.append((int(match.group(1)), int(match.group(2)), entry))
    ids = {char_id for char_id, _, _ in found}
    if len(ids) > 1:
        raise PipelineError(f"{folder}: several character ids {sorted(ids)} in one folder")
    drawn = sorted(drawer for _, drawer, _ in found)
    if drawn != list(range(1, drawers + 1)):
        raise PipelineError(
            f"{folder}: {len(found)} drawings with drawers {drawn}; expected exactly "
            f"{drawers} (drawers 01..{drawers:02d}, index.drawers)"
        )
    return found


def scan_images(raw: Path, drawers: int) -> pd.DataFrame:
    """One row per PNG of both subsets (no pixels yet), sorted by path."""
    rows = []
    for subset in SUBSETS:
        top = raw / f"images_{subset}"
        for alphabet in subfolders(top):
            for character in subfolders(alphabet):
                for char_id, drawer, path in character_files(character, drawers):
                    rows.append((subset, alphabet.name, character.name, char_id, drawer,
                                 path.relative_to(raw).as_posix()))
    columns = ["subset", "alphabet", "character", "character_id", "drawer", "path"]
    images = pd.DataFrame(rows, columns=columns).sort_values("path", ignore_index=True)
    check_character_ids(images)
    return images


def check_character_ids(images: pd.DataFrame) -> None:
    """Character ids run 1..C without gaps, background first; a gap is a missing alphabet."""
    per_id = images.groupby("character_id")["path"].first()
    folders = images.groupby("character_id")["path"].apply(
        lambda s: s.str.rsplit("/", n=1).str[0].nunique()
    )
    shared = folders[folders > 1]
    if len(shared):
        raise PipelineError(f"character id {shared.index[0]:04d} is used by several folders")
    order = images.drop_duplicates("character_id").sort_values(["subset", "character_id"])
    ids = order["character_id"].to_numpy()
    expected = np.arange(1, len(ids) + 1)
    if not np.array_equal(ids, expected):
        at = int(np.flatnonzero(ids != expected)[0])
        after = f"{ids[at - 1]:04d}" if at else "the start"
        raise PipelineError(
            f"character ids are not contiguous from 0001 over background then evaluation: "
            f"{after} is followed by {ids[at]:04d} ({per_id[ids[at]]}); "
            "is an alphabet missing?"
        )


def read_images(raw: Path, images: pd.DataFrame, size: int) -> tuple[list[str], np.ndarray]:
    """sha256 and decoded ink mask of every image, in row order."""
    digests = []
    pixels = np.empty((len(images), size, size), dtype=bool)
    for i, rel in enumerate(images["path"]):
        data = (raw / rel).read_bytes()
        digests.append(hashlib.sha256(data).hexdigest())
        pixels[i] = decode_png(data, str(raw / rel), size)
    return digests, pixels


def fingerprint(images: pd.DataFrame) -> str:
    """The README's content fingerprint (paths inside the zips = paths under the raw folder)."""
    lines = sorted(f"{p}\t{h}\n" for p, h in zip(images["path"], images["sha256"], strict=True))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def build_images(raw: Path, p: dict[str, Any]) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The images manifest, the ink masks [N, S, S] and the fingerprint, all validated."""
    images = scan_images(raw, p["drawers"])
    digests, pixels = read_images(raw, images, p["image_size"])
    images["sha256"] = digests
    images["height"] = p["image_size"]
    images["width"] = p["image_size"]
    images.insert(0, "image_id", np.arange(len(images), dtype=np.int64))
    images = images.astype({"character_id": "int64", "drawer": "int64",
                            "height": "int64", "width": "int64"})
    digest = fingerprint(images)
    expected = p["expected_fingerprint"]
    if expected is not None and digest != expected:
        raise PipelineError(
            f"{raw}: content fingerprint {digest} does not match index.expected_fingerprint "
            f"{expected} (not the official Omniglot, or files changed)"
        )
    return images, pixels, digest


def run_files(run: Path) -> list[tuple[str, int, Path]]:
    """(kind, position, path) of one run folder's images; class_labels.txt is read apart."""
    found = []
    for entry in sorted(run.iterdir()):
        if entry.name == "class_labels.txt" and entry.is_file():
            continue
        if entry.name not in RUN_FILE or not entry.is_dir():
            raise PipelineError(f"{entry}: unexpected entry in a run folder")
        for image in sorted(entry.iterdir()):
            match = RUN_FILE[entry.name].match(image.name)
            if not image.is_file() or not match:
                raise PipelineError(f"{image}: stray entry in {entry}")
            found.append((entry.name, int(match.group(1)), image))
    for kind in RUN_FILE:
        positions = sorted(pos for k, pos, _ in found if k == kind)
        if not positions or positions != list(range(1, len(positions) + 1)):
            raise PipelineError(f"{run / kind}: images must be numbered 01..NN, got {positions}")
    return found


def run_labels(run: Path, n_items: int, n_classes: int) -> dict[int, int]:
    """item position -> class position, from the run's class_labels.txt."""
    labels_file = run / "class_labels.txt"
    if not labels_file.is_file():
        raise PipelineError(f"{labels_file}: missing")
    labels = {}
    name = run.name
    pattern = re.compile(rf"^{name}/test/item(\d{{2}})\.png\s+{name}/training/class(\d{{2}})\.png$")
    for number, line in enumerate(labels_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        match = pattern.match(line.strip())
        if not match:
            raise PipelineError(f"{labels_file}:{number}: cannot parse {line!r}")
        item, cls = int(match.group(1)), int(match.group(2))
        if item in labels or not 1 <= cls <= n_classes:
            raise PipelineError(f"{labels_file}:{number}: repeated item or no such class: {line!r}")
        labels[item] = cls
    if sorted(labels) != list(range(1, n_items + 1)):
        raise PipelineError(f"{labels_file}: must label each of the {n_items} test items once")
    return labels


def build_lake_runs(raw: Path, images: pd.DataFrame, pixels: np.ndarray, size: int) -> pd.DataFrame:
    """Map each run image to the evaluation image with equal pixels; attach the labels.

    For kind=training the label is the class's own position.
    """
    evaluation = images.index[images["subset"] == "evaluation"].to_numpy()
    by_pixels: dict[bytes, list[int]] = {}
    for i in evaluation:
        by_pixels.setdefault(pack(pixels[i]).tobytes(), []).append(int(i))
    rows = []
    for run in subfolders(raw / RUNS):
        if not RUN_NAME.match(run.name):
            raise PipelineError(f"{run}: unexpected folder (expected runNN)")
        found = run_files(run)
        n_items = sum(kind == "test" for kind, _, _ in found)
        labels = run_labels(run, n_items, len(found) - n_items)
        for kind, position, path in found:
            key = pack(decode_png(path.read_bytes(), str(path), size)).tobytes()
            matches = by_pixels.get(key, [])
            if len(matches) != 1:
                what = "no evaluation image" if not matches else f"{len(matches)} evaluation images"
                raise PipelineError(f"{path}: {what} with equal pixels (expected exactly one)")
            label = labels[position] if kind == "test" else position
            rows.append((int(run.name[3:]), kind, position, path.relative_to(raw).as_posix(),
                         int(images.at[matches[0], "image_id"]), label))
    columns = ["run", "kind", "position", "file", "image_id", "label"]
    lake = pd.DataFrame(rows, columns=columns).sort_values(["run", "kind", "position"])
    return lake.astype({c: "int64" for c in ("run", "position", "image_id", "label")}).reset_index(
        drop=True
    )


def summary(images: pd.DataFrame, digest: str) -> dict[str, Any]:
    return {
        "fingerprint": digest,
        "images": len(images),
        "alphabets": int(images["alphabet"].nunique()),
        "characters": int(images["character_id"].nunique()),
    }


def run(params: dict[str, Any]) -> None:
    p = index_params(params)
    raw = paths.RAW
    check_top_folders(raw)
    images, pixels, digest = build_images(raw, p)
    lake = build_lake_runs(raw, images, pixels, p["image_size"])
    info = summary(images, digest)
    write_parquet(images, paths.IMAGES, metadata={"fingerprint": digest})
    write_parquet(lake, paths.LAKE_RUNS)
    write_npy(pack(pixels), paths.PIXELS)
    write_json(info, paths.DATASET)
    print(f"index: {info['images']} images, {info['alphabets']} alphabets, "
          f"{info['characters']} characters, {len(lake)} run images; fingerprint {digest}")
