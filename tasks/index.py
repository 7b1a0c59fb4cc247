"""index: validate the Omniglot zips, and build the image and Lake-run manifests.

Reads the PNGs straight out of the three zips in data/raw (siamese/zips.py) and writes
data/manifests/images.parquet (one row per PNG, sorted by path; image_id = row),
data/packed/pixels.npy (the ink masks, bit-packed, row = image_id), data/manifests/dataset.json,
data/manifests/lake_runs.parquet (each run image mapped to the evaluation image with equal
pixels) and data/manifests/sources.json (each zip's sha256 and the content fingerprints).
The content fingerprint is the one defined by the data's README: sha256 over
`<path inside the zip>\t<sha256 of the PNG>\n`, one line per PNG, sorted by path; the runs'
fingerprint is the same over every file of all_runs.zip, class_labels.txt included, so Lake's
labels are pinned like the images. Everything is validated before anything is written.

With dataset.source other than data/raw, the images are the user's own (siamese/owndata.py):
read in place from the folder or .zip, each hashed and decoded to the same ink masks, groups
as alphabets, each class's images as its drawers in file-name order, and a seeded
dataset.test_count of the groups (or classes, dataset.test_by) as the evaluation subset. The
fingerprint is the same sha256 over `<path under the source>\t<sha256>` lines; there are no
Lake's runs (lake_runs.parquet has no rows), and sources.json names the source.
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from siamese import paths
from siamese.atomic import write_json, write_npy, write_parquet
from siamese.config import DatasetConfig, IndexConfig, TrialsConfig
from siamese.errors import PipelineError
from siamese.images import decode_png, pack
from siamese.owndata import OwnImage, decode_images, read_layout
from siamese.zips import (
    BACKGROUND_ZIP,
    EVALUATION_ZIP,
    RUNS_ZIP,
    ZIPS,
    manifest_path,
    open_zip,
    read_entry,
)

SUBSET_ZIPS = {"background": BACKGROUND_ZIP, "evaluation": EVALUATION_ZIP}
PNG_NAME = re.compile(r"^(\d{4})_(\d{2})\.png$")
RUN_FILE = {
    "training": re.compile(r"^class(\d{2})\.png$"),
    "test": re.compile(r"^item(\d{2})\.png$"),
}
LABELS = "class_labels.txt"


@dataclass(frozen=True)
class Entry:
    """One file of a zip: its manifest path (see siamese/zips.py) and its bytes."""

    path: str
    data: bytes


def read_zip(zip_path: Path) -> list[Entry]:
    """Every file of the zip (checked by siamese/zips.py), sorted by manifest path."""
    with open_zip(zip_path) as (zf, files):
        entries = [Entry(manifest_path(zip_path.name, info.filename),
                         read_entry(zf, info, zip_path)) for info in files]
    return sorted(entries, key=lambda e: e.path)


def where(path: str, zip_path: Path) -> str:
    return f"{path} (in {zip_path})"


def character_rows(entries: list[Entry], zip_path: Path) -> dict[str, list[tuple]]:
    """Character folder -> (alphabet, character, character_id, drawer, entry) of its PNGs.

    The layout is `<top>/<alphabet>/<character>/NNNN_DD.png`; any other file is a stray."""
    folders: dict[str, list[tuple]] = {}
    for entry in entries:
        parts = entry.path.split("/")
        if len(parts) < 4:
            folder = "/".join(parts[:-1])
            raise PipelineError(f"{where(entry.path, zip_path)}: stray file (expected only "
                                f"folders in {folder})")
        match = PNG_NAME.match(parts[3])
        if len(parts) > 4 or not match:
            raise PipelineError(f"{where(entry.path, zip_path)}: stray entry (expected only "
                                "NNNN_DD.png files)")
        folders.setdefault("/".join(parts[:3]), []).append(
            (parts[1], parts[2], int(match.group(1)), int(match.group(2)), entry))
    return folders


def check_character(folder: str, rows: list[tuple], zip_path: Path, drawers: int) -> None:
    """One character id per folder, drawn by exactly drawers 01..N."""
    ids = {row[2] for row in rows}
    if len(ids) > 1:
        raise PipelineError(f"{where(folder, zip_path)}: several character ids {sorted(ids)} "
                            "in one folder")
    drawn = sorted(row[3] for row in rows)
    if drawn != list(range(1, drawers + 1)):
        raise PipelineError(
            f"{where(folder, zip_path)}: {len(rows)} drawings with drawers {drawn}; expected "
            f"exactly {drawers} (drawers 01..{drawers:02d}, index.drawers)"
        )


def scan_images(raw: Path, drawers: int) -> tuple[pd.DataFrame, list[bytes]]:
    """One row per PNG of both image zips, sorted by path, and each PNG's bytes in row order."""
    rows = []
    for subset, zip_name in SUBSET_ZIPS.items():
        zip_path = raw / zip_name
        for folder, found in character_rows(read_zip(zip_path), zip_path).items():
            check_character(folder, found, zip_path, drawers)
            rows += [(subset, alphabet, character, char_id, drawer, entry.path, entry.data)
                     for alphabet, character, char_id, drawer, entry in found]
    columns = ["subset", "alphabet", "character", "character_id", "drawer", "path", "data"]
    images = pd.DataFrame(rows, columns=columns).sort_values("path", ignore_index=True)
    check_character_ids(images)
    return images.drop(columns="data"), list(images["data"])


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


def decode_all(raw: Path, images: pd.DataFrame, data: list[bytes], size: int) -> np.ndarray:
    """The decoded ink mask of every image, in row order."""
    pixels = np.empty((len(images), size, size), dtype=bool)
    for i, (path, subset) in enumerate(zip(images["path"], images["subset"], strict=True)):
        pixels[i] = decode_png(data[i], where(path, raw / SUBSET_ZIPS[subset]), size)
    return pixels


def fingerprint(lines: list[tuple[str, str]]) -> str:
    """The README's content fingerprint of (path inside the zip, sha256 of the file) lines."""
    text = "".join(sorted(f"{path}\t{digest}\n" for path, digest in lines))
    return hashlib.sha256(text.encode()).hexdigest()


def check_fingerprint(digest: str, expected: str | None, key: str, what: Path | str) -> None:
    """`key`: the parameter that pins the fingerprint (index.* for Omniglot's zips)."""
    if expected is not None and digest != expected:
        data = "the official Omniglot" if key.startswith("index.") else "those images"
        raise PipelineError(
            f"{what}: content fingerprint {digest} does not match {key} {expected} "
            f"(not {data}, or files changed)"
        )


def build_images(raw: Path, p: IndexConfig) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The images manifest, the ink masks [N, S, S] and the fingerprint, all validated."""
    images, data = scan_images(raw, p.drawers)
    pixels = decode_all(raw, images, data, p.image_size)
    images["sha256"] = [hashlib.sha256(d).hexdigest() for d in data]
    images["height"] = p.image_size
    images["width"] = p.image_size
    images.insert(0, "image_id", np.arange(len(images), dtype=np.int64))
    images = images.astype({"character_id": "int64", "drawer": "int64",
                            "height": "int64", "width": "int64"})
    digest = fingerprint(list(zip(images["path"], images["sha256"], strict=True)))
    zips = " and ".join(str(raw / name) for name in SUBSET_ZIPS.values())
    check_fingerprint(digest, p.expected_fingerprint, "index.expected_fingerprint", zips)
    return images, pixels, digest


def group_runs(entries: list[Entry], zip_path: Path) -> dict[str, dict[str, Any]]:
    """runNN -> {"labels": Entry, "training": {position: Entry}, "test": {position: Entry}}."""
    runs: dict[str, dict[str, Any]] = {}
    for entry in entries:
        parts = entry.path.split("/")[1:]  # all_runs/runNN/...
        run = runs.setdefault(parts[0], {"labels": None, "training": {}, "test": {}})
        if parts[1:] == [LABELS]:
            run["labels"] = entry
            continue
        match = RUN_FILE[parts[1]].match(parts[2]) if len(parts) == 3 and parts[1] in RUN_FILE \
            else None
        if not match:
            raise PipelineError(f"{where(entry.path, zip_path)}: unexpected entry in a run "
                                f"(expected {LABELS}, training/classNN.png, test/itemNN.png)")
        run[parts[1]][int(match.group(1))] = entry
    for name, run in runs.items():
        for kind in RUN_FILE:
            positions = sorted(run[kind])
            if not positions or positions != list(range(1, len(positions) + 1)):
                raise PipelineError(f"{where(f'all_runs/{name}/{kind}', zip_path)}: images must "
                                    f"be numbered 01..NN, got {positions}")
        if run["labels"] is None:
            raise PipelineError(f"{where(f'all_runs/{name}/{LABELS}', zip_path)}: missing")
    return runs


def run_labels(name: str, labels: Entry, n_items: int, n_classes: int,
               zip_path: Path) -> dict[int, int]:
    """item position -> class position, from the run's class_labels.txt."""
    source = where(labels.path, zip_path)
    pattern = re.compile(rf"^{name}/test/item(\d{{2}})\.png\s+{name}/training/class(\d{{2}})\.png$")
    found: dict[int, int] = {}
    for number, line in enumerate(labels.data.decode(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        match = pattern.match(line.strip())
        if not match:
            raise PipelineError(f"{source}:{number}: cannot parse {line!r}")
        item, cls = int(match.group(1)), int(match.group(2))
        if item in found or not 1 <= cls <= n_classes:
            raise PipelineError(f"{source}:{number}: repeated item or no such class: {line!r}")
        found[item] = cls
    if sorted(found) != list(range(1, n_items + 1)):
        raise PipelineError(f"{source}: must label each of the {n_items} test items once")
    return found


def evaluation_twin(entry: Entry, by_pixels: dict[bytes, list[int]], size: int,
                    zip_path: Path) -> int:
    """The one evaluation image whose pixels equal those of the run image `entry`."""
    key = pack(decode_png(entry.data, where(entry.path, zip_path), size)).tobytes()
    matches = by_pixels.get(key, [])
    if len(matches) != 1:
        what = "no evaluation image" if not matches else f"{len(matches)} evaluation images"
        raise PipelineError(f"{where(entry.path, zip_path)}: {what} with equal pixels "
                            "(expected exactly one)")
    return matches[0]


def build_lake_runs(raw: Path, images: pd.DataFrame, pixels: np.ndarray,
                    p: IndexConfig) -> tuple[pd.DataFrame, str]:
    """Map each run image to the evaluation image with equal pixels, attach the labels, and
    fingerprint all_runs.zip. For kind=training the label is the class's own position."""
    zip_path = raw / RUNS_ZIP
    entries = read_zip(zip_path)
    digest = fingerprint([(e.path, hashlib.sha256(e.data).hexdigest()) for e in entries])
    check_fingerprint(digest, p.expected_runs_fingerprint, "index.expected_runs_fingerprint",
                      zip_path)
    by_pixels: dict[bytes, list[int]] = {}
    for i in images.index[images["subset"] == "evaluation"]:
        by_pixels.setdefault(pack(pixels[i]).tobytes(), []).append(int(i))
    rows = []
    for name, run in sorted(group_runs(entries, zip_path).items()):
        labels = run_labels(name, run["labels"], len(run["test"]), len(run["training"]),
                            zip_path)
        for kind in RUN_FILE:
            for position, entry in sorted(run[kind].items()):
                twin = evaluation_twin(entry, by_pixels, p.image_size, zip_path)
                label = labels[position] if kind == "test" else position
                rows.append((int(name[3:]), kind, position, entry.path,
                             int(images.at[twin, "image_id"]), label))
    columns = ["run", "kind", "position", "file", "image_id", "label"]
    lake = pd.DataFrame(rows, columns=columns).sort_values(["run", "kind", "position"])
    lake = lake.astype({c: "int64" for c in ("run", "position", "image_id", "label")})
    return lake.reset_index(drop=True), digest


def summary(images: pd.DataFrame, digest: str) -> dict[str, Any]:
    return {
        "fingerprint": digest,
        "images": len(images),
        "alphabets": int(images["alphabet"].nunique()),
        "characters": int(images["character_id"].nunique()),
    }


def sources(raw: Path, images_digest: str, runs_digest: str) -> dict[str, Any]:
    """What the manifests were built from: each zip's sha256, and the content fingerprints."""
    def sha256(path: Path) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()

    return {
        "zips": {name: sha256(raw / name) for name in ZIPS},
        "images_fingerprint": images_digest,
        "runs_fingerprint": runs_digest,
    }


def own_subsets(found: list[OwnImage], d: DatasetConfig) -> list[str]:
    """Each image's subset: evaluation for a seeded dataset.test_count of the groups (or
    classes), background for the others."""
    def unit(i: OwnImage) -> tuple[str, ...]:
        return (i.group,) if d.test_by == "group" else (i.group, i.cls)

    units = sorted({unit(i) for i in found})
    if d.test_count >= len(units):
        raise PipelineError(f"params.yaml: dataset.test_count {d.test_count} leaves none of the "
                            f"{len(units)} {d.test_by}s of {d.source} to train on")
    rng = np.random.default_rng(d.seed)
    test = {units[i] for i in rng.choice(len(units), d.test_count, replace=False)}
    return ["evaluation" if unit(i) in test else "background" for i in found]


def build_own_images(d: DatasetConfig, p: IndexConfig,
                     n_way: int) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The images manifest, ink masks and fingerprint of the user's folder or zip."""
    source = Path(d.source)
    found = read_layout(source, d.layout)
    classes = {key: n for n, key in
               enumerate(dict.fromkeys((i.group, i.cls) for i in found), start=1)}
    if len(classes) < n_way:
        raise PipelineError(f"{source}: {len(classes)} classes, fewer than the largest "
                            f"trials.n_way {n_way}")
    seen: dict[tuple[str, str], int] = {}
    drawers = []  # each image's position in its class, in file-name order (found is sorted)
    for i in found:
        seen[i.group, i.cls] = seen.get((i.group, i.cls), 0) + 1
        drawers.append(seen[i.group, i.cls])
    images = pd.DataFrame({
        "image_id": np.arange(len(found), dtype=np.int64),
        "subset": own_subsets(found, d),
        "alphabet": [i.group for i in found],
        "character": [i.cls for i in found],
        "character_id": [classes[i.group, i.cls] for i in found],
        "drawer": drawers,
        "path": [i.path for i in found],
        "sha256": [hashlib.sha256(i.data).hexdigest() for i in found],
        "height": p.image_size,
        "width": p.image_size,
    }).astype({"character_id": "int64", "drawer": "int64", "height": "int64", "width": "int64"})
    pixels = decode_images(source, found, p.image_size)
    digest = fingerprint(list(zip(images["path"], images["sha256"], strict=True)))
    check_fingerprint(digest, d.expected_fingerprint, "dataset.expected_fingerprint", source)
    return images, pixels, digest


NO_RUNS = pd.DataFrame({"run": [], "kind": [], "position": [], "file": [], "image_id": [],
                        "label": []}).astype({"run": "int64", "kind": "object",
                                              "position": "int64", "file": "object",
                                              "image_id": "int64", "label": "int64"})


def run(params: dict[str, Any]) -> None:
    d = DatasetConfig.parse(params)
    p = IndexConfig.parse(params)
    if d.omniglot:
        raw = paths.RAW
        images, pixels, digest = build_images(raw, p)
        lake, runs_digest = build_lake_runs(raw, images, pixels, p)
        info = summary(images, digest)
        found = sources(raw, digest, runs_digest)
    else:
        images, pixels, digest = build_own_images(d, p, max(TrialsConfig.parse(params).n_way))
        lake, runs_digest = NO_RUNS, "none (not Omniglot)"
        info = {**summary(images, digest), "source": d.source}
        found = {"source": d.source, "images_fingerprint": digest}
    write_parquet(images, paths.IMAGES, metadata={"fingerprint": digest})
    write_parquet(lake, paths.LAKE_RUNS)
    write_npy(pack(pixels), paths.PIXELS)
    write_json(info, paths.DATASET)
    write_json(found, paths.SOURCES)
    print(f"index: {info['images']} images, {info['alphabets']} alphabets, "
          f"{info['characters']} characters, {len(lake)} run images; fingerprint {digest}; "
          f"runs fingerprint {runs_digest}")
