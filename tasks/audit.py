"""audit: duplicates across roles, the leaks a split can hide.

Every indexed image has its role (split.parquet); each of the 800 images of Lake's runs is
an extra item of role `lake` with the pixels of the evaluation image that index mapped it to.
Three kinds of duplicate pairs are found:

- `sha256`: equal file bytes (images.parquet; Lake's run files are not hashed there).
- `pixels`: equal decoded ink masks (data/packed/pixels.npy), whatever the bytes.
- `near`: not equal, yet each image has at least `audit.min_overlap` of its ink within
  `audit.tolerance` pixels of the other's ink: a copy redrawn, shifted by a pixel or
  re-encoded. Comparing all 33,260 items pairwise at full resolution would take minutes, so
  candidates come first from 16x16 ink-cell signatures (a cell is ink when any of its 7x7
  pixels is): pairs differing in at most `audit.near_bits` of the 256 cells. Hamming distances
  are bit-packed popcounts, computed blockwise over items sorted by their number of ink cells:
  two signatures differ in at least the difference of their counts, so each block is compared
  only with the window of counts within `near_bits` (about a third of all pairs, exactly the
  same result). A copy shifted one pixel sideways differs in at most 14 cells on the real data.

A pair is expected when it is a Lake run image and the evaluation image it was mapped to (they
are re-encodings of the same drawing), and a leak when its roles are one of
`audit.leak_between`. `audit.on_leak: fail` writes the reports, then stops with the leaks named.
The pictures of reports/audit/ are drawn by siamese/auditpictures.py.
"""

import hashlib
import time
from collections.abc import Iterator
from dataclasses import asdict
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from siamese import paths
from siamese.atomic import write_json, write_text
from siamese.auditpictures import write_pictures
from siamese.config import AUDIT_ROLES, AuditConfig, role_key
from siamese.errors import PipelineError
from siamese.images import load_pixels, pack

REPORT_JSON = paths.REPORTS / "audit.json"
REPORT_MD = paths.REPORTS / "audit.md"
PICTURES = paths.REPORTS / "audit"
ROLES = AUDIT_ROLES
KINDS = ("sha256", "pixels", "near")
GRID = 16  # signature cells per side
BLOCK = 256  # signatures compared at once: a block is a [256, window] table of distances
LISTED = 10  # leaks named in the error message of on_leak: fail


def audit_params(params: dict[str, Any]) -> dict[str, Any]:
    """The audit section, checked by siamese/config.py, as the dict this module reads."""
    return asdict(AuditConfig.parse(params))


def build_items(images: pd.DataFrame, split: pd.DataFrame, lake: pd.DataFrame) -> pd.DataFrame:
    """One row per indexed image (image_id order), then one per Lake run image: item, image_id,
    role, name (file), sha256 (None for run images)."""
    images = images.sort_values("image_id", ignore_index=True)
    if not images["image_id"].equals(pd.Series(range(len(images)))):
        raise PipelineError(f"{paths.IMAGES}: image ids are not 0..{len(images) - 1}")
    role = images["image_id"].map(split.set_index("image_id")["role"])
    if role.isna().any():
        missing = int(images.loc[role.isna(), "image_id"].iloc[0])
        raise PipelineError(f"{paths.SPLIT}: image_id {missing} has no role; rerun split")
    indexed = pd.DataFrame({"image_id": images["image_id"], "role": role,
                            "name": images["path"], "sha256": images["sha256"]})
    runs = pd.DataFrame({"image_id": lake["image_id"].to_numpy(), "role": "lake",
                         "name": lake["file"].to_numpy(), "sha256": None})
    items = pd.concat([indexed, runs], ignore_index=True)
    items.insert(0, "item", np.arange(len(items)))
    return items


def unpacked_chunks(packed: np.ndarray, chunk: int = 2048) -> Iterator[tuple[int, np.ndarray]]:
    """(start, bool [n, H, W]) for successive chunks: the masks, never all unpacked at once."""
    width = packed.shape[1]
    for start in range(0, len(packed), chunk):
        part = packed[start:start + chunk]
        yield start, np.unpackbits(part, axis=-1, count=width).astype(bool)


def signatures(masks: np.ndarray) -> np.ndarray:
    """bool [n, 256]: the 16x16 cells with ink (7x7 pixels at 105, the mask centred in 112)."""
    n, height, width = masks.shape
    cell = -(-max(height, width) // GRID)
    top, left = (GRID * cell - height) // 2, (GRID * cell - width) // 2
    padded = np.zeros((n, GRID * cell, GRID * cell), dtype=bool)
    padded[:, top:top + height, left:left + width] = masks
    return padded.reshape(n, GRID, cell, GRID, cell).any(axis=(2, 4)).reshape(n, GRID * GRID)


def dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Each mask grown by `radius` pixels (a (2r+1)-square neighbourhood)."""
    n, height, width = masks.shape
    padded = np.zeros((n, height + 2 * radius, width + 2 * radius), dtype=bool)
    padded[:, radius:radius + height, radius:radius + width] = masks
    grown = np.zeros_like(masks)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            grown |= padded[:, dy:dy + height, dx:dx + width]
    return grown


def features(packed: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(signatures bool [N, 256], dilated masks packed like `packed`), a chunk at a time."""
    cells = np.empty((len(packed), GRID * GRID), dtype=bool)
    grown = np.empty_like(packed)
    for start, masks in unpacked_chunks(packed):
        cells[start:start + len(masks)] = signatures(masks)
        grown[start:start + len(masks)] = np.packbits(dilate(masks, radius), axis=-1)
    return cells, grown


def group_pairs(keys: pd.Series) -> np.ndarray:
    """int [P, 2]: every pair (i < j) of positions whose keys are equal (nulls never match)."""
    repeated = keys[keys.notna() & keys.duplicated(keep=False)]
    found = [list(combinations(group, 2))
             for group in repeated.groupby(repeated).groups.values()]
    pairs = [pair for group in found for pair in group]
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def pixel_keys(packed: np.ndarray) -> pd.Series:
    return pd.Series([hashlib.blake2b(m.tobytes(), digest_size=16).hexdigest() for m in packed])


def coarse_candidates(cells: np.ndarray, max_bits: int) -> tuple[np.ndarray, int]:
    """(int [P, 3] rows (i, j, cells differing) with i < j and at most `max_bits` differing,
    number of signature comparisons made); see the module docstring for the window."""
    weight = cells.sum(axis=1)
    order = np.argsort(weight, kind="stable")
    sorted_weight = weight[order]
    words = np.packbits(cells[order], axis=1).view(np.uint64)
    columns = [np.ascontiguousarray(words[:, w]) for w in range(words.shape[1])]
    found, compared = [], 0
    for start in range(0, len(cells), BLOCK):
        stop = min(start + BLOCK, len(cells))
        end = int(np.searchsorted(sorted_weight, sorted_weight[stop - 1] + max_bits, "right"))
        distance = np.zeros((stop - start, end - start), dtype=np.uint16)
        for column in columns:
            distance += np.bitwise_count(column[start:stop, None] ^ column[None, start:end])
        rows, cols = np.nonzero(distance <= max_bits)
        keep = cols > rows  # each pair once, never an item with itself
        rows, cols = rows[keep], cols[keep]
        found.append(np.stack([order[rows + start], order[cols + start],
                               distance[rows, cols]], axis=1))
        compared += int(distance.size)
    pairs = np.concatenate(found) if found else np.zeros((0, 3), dtype=np.int64)
    pairs[:, :2] = np.sort(pairs[:, :2], axis=1)
    return pairs.astype(np.int64), compared


def overlap(packed: np.ndarray, grown: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each pair, the smaller of: the fraction of a's ink within reach of b's (grown), and
    the other way round. 1.0 means each drawing lies entirely within the other's tolerance."""
    flat, grown_flat = packed.reshape(len(packed), -1), grown.reshape(len(grown), -1)
    ink = np.bitwise_count(flat).sum(axis=1, dtype=np.int64)
    result = np.empty(len(a))
    for s in range(0, len(a), 8192):
        x, y = a[s:s + 8192], b[s:s + 8192]
        covered_x = np.bitwise_count(flat[x] & grown_flat[y]).sum(axis=1, dtype=np.int64)
        covered_y = np.bitwise_count(flat[y] & grown_flat[x]).sum(axis=1, dtype=np.int64)
        result[s:s + 8192] = np.minimum(covered_x / np.maximum(ink[x], 1),
                                        covered_y / np.maximum(ink[y], 1))
    return result


def near_pairs(packed: np.ndarray, p: dict[str, Any], exact: np.ndarray
               ) -> tuple[pd.DataFrame, dict[str, int]]:
    """The near duplicates (a, b, cells, overlap), pixel-equal pairs left out, and the work."""
    cells, grown = features(packed, p["tolerance"])
    candidates, compared = coarse_candidates(cells, p["near_bits"])
    score = overlap(packed, grown, candidates[:, 0], candidates[:, 1])
    near = pd.DataFrame({"a": candidates[:, 0], "b": candidates[:, 1],
                         "cells": candidates[:, 2], "overlap": score.round(4)})
    near = near[score >= p["min_overlap"]]
    equal = set(map(tuple, exact.tolist()))
    kept = [(a, b) not in equal for a, b in zip(near["a"], near["b"], strict=True)]
    near = near[np.array(kept, dtype=bool)]  # a bool array: an empty list would pick columns
    work = {"signature_comparisons": compared, "candidates": len(candidates)}
    return near.sort_values(["a", "b"], ignore_index=True), work


def find_pairs(items: pd.DataFrame, packed: np.ndarray, p: dict[str, Any]
               ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every duplicate pair of items: kind, a, b, and for near ones cells and overlap."""
    by_sha = group_pairs(items["sha256"])
    by_pixels = group_pairs(pixel_keys(packed))
    near, work = near_pairs(packed, p, by_pixels)
    frames = [pd.DataFrame({"kind": "sha256", "a": by_sha[:, 0], "b": by_sha[:, 1]}),
              pd.DataFrame({"kind": "pixels", "a": by_pixels[:, 0], "b": by_pixels[:, 1]}),
              near.assign(kind="near")]
    return pd.concat(frames, ignore_index=True), work


def classify(pairs: pd.DataFrame, items: pd.DataFrame, p: dict[str, Any]) -> pd.DataFrame:
    """Add roles, image ids, names, `expected` (a Lake run image and its own evaluation image)
    and `leak` (roles in audit.leak_between, not expected)."""
    out = pairs.copy()
    for side in ("a", "b"):
        rows = items.iloc[out[side].to_numpy()]
        for column in ("image_id", "role", "name"):
            out[f"{column}_{side}"] = rows[column].to_numpy()
    lake_pair = (out["role_a"] == "lake") | (out["role_b"] == "lake")
    out["expected"] = lake_pair & (out["image_id_a"] == out["image_id_b"])
    keys = [role_key(a, b) for a, b in zip(out["role_a"], out["role_b"], strict=True)]
    out["roles"] = ["/".join(k) for k in keys]
    out["leak"] = np.array([k in p["leak_between"] for k in keys], dtype=bool) & ~out["expected"]
    return out


def counts_by_roles(pairs: pd.DataFrame) -> dict[str, dict[str, int]]:
    """{kind: {"train/test": pairs, ...}} over unexpected pairs; the expected ones apart."""
    counts: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        chosen = pairs[(pairs["kind"] == kind) & ~pairs["expected"]]
        counts[kind] = {k: int(v) for k, v in chosen["roles"].value_counts().sort_index().items()}
    return counts


def role_table(items: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per role: its items, and how many of them have an (unexpected) duplicate of each kind
    in another role."""
    table = {}
    cross = pairs[~pairs["expected"] & (pairs["role_a"] != pairs["role_b"])]
    for role in ROLES:
        row = {"images": int((items["role"] == role).sum())}
        for kind in KINDS:
            chosen = cross[cross["kind"] == kind]
            hit = set(chosen.loc[chosen["role_a"] == role, "a"])
            hit |= set(chosen.loc[chosen["role_b"] == role, "b"])
            row[f"with_{kind}_elsewhere"] = len(hit)
        table[role] = row
    return table


def pair_records(pairs: pd.DataFrame) -> list[dict[str, Any]]:
    """The unexpected pairs, leaks first, then by kind (KINDS order), as plain JSON values."""
    chosen = pairs[~pairs["expected"]].assign(rank=lambda t: t["kind"].map(KINDS.index))
    chosen = chosen.sort_values(["leak", "rank", "a", "b"], ascending=[False, True, True, True])
    records = []
    for row in chosen.itertuples(index=False):
        record = {"kind": row.kind, "roles": row.roles, "leak": bool(row.leak)}
        for side in ("a", "b"):
            record[side] = {"item": int(getattr(row, side)),
                            "image_id": int(getattr(row, f"image_id_{side}")),
                            "role": getattr(row, f"role_{side}"),
                            "file": getattr(row, f"name_{side}")}
        if row.kind == "near":
            record.update(cells=int(row.cells), overlap=float(row.overlap))
        records.append(record)
    return records


def summary(items: pd.DataFrame, pairs: pd.DataFrame, p: dict[str, Any],
            work: dict[str, int]) -> dict[str, Any]:
    expected = pairs[pairs["expected"]]
    return {
        "method": {"near_bits": p["near_bits"], "tolerance": p["tolerance"],
                   "min_overlap": p["min_overlap"], "signature": f"{GRID}x{GRID} ink cells",
                   **work},
        "leak_between": sorted("/".join(k) for k in p["leak_between"]),
        "on_leak": p["on_leak"],
        "roles": role_table(items, pairs),
        "pairs_by_roles": counts_by_roles(pairs),
        "expected": {"lake_run_image_is_its_evaluation_image": int(len(expected))},
        "leaks": int(pairs["leak"].sum()),
        "pairs": pair_records(pairs),
    }


def table_lines(report: dict[str, Any]) -> list[str]:
    kinds = report["pairs_by_roles"]
    keys = sorted({k for counts in kinds.values() for k in counts},
                  key=lambda k: tuple(ROLES.index(r) for r in k.split("/")))
    leaky = set(report["leak_between"])
    lines = ["| roles | same bytes | same pixels | near | leak? |", "|---|---|---|---|---|"]
    lines += [f"| {k} | " + " | ".join(str(kinds[kind].get(k, 0)) for kind in KINDS)
              + f" | {'yes' if k in leaky else 'no'} |" for k in keys]
    return lines if keys else ["No duplicate pairs."]


def report_markdown(report: dict[str, Any], pictures: list[str]) -> str:
    m = report["method"]
    lines = [
        "# Duplicate audit", "",
        f"Leaks (pairs across {', '.join(report['leak_between'])}): **{report['leaks']}**; "
        f"`audit.on_leak: {report['on_leak']}`.", "",
        f"Near duplicates: not pixel-equal, each with at least {m['min_overlap']} of its ink "
        f"within {m['tolerance']} px of the other's; candidates from {m['signature']} differing "
        f"in at most {m['near_bits']} cells ({m['signature_comparisons']:,} signature "
        f"comparisons, {m['candidates']:,} candidates checked at full resolution).", "",
        "## Images per role", "",
        "| role | images | with a same-bytes twin elsewhere | same-pixels | near |",
        "|---|---|---|---|---|",
        *[f"| {role} | {r['images']} | {r['with_sha256_elsewhere']} | "
          f"{r['with_pixels_elsewhere']} | {r['with_near_elsewhere']} |"
          for role, r in report["roles"].items()], "",
        "## Duplicate pairs by roles", "", *table_lines(report), "",
        f"Expected, not counted: {report['expected']['lake_run_image_is_its_evaluation_image']}"
        " Lake run images with the pixels of the evaluation image index mapped them to "
        "(re-encodings of the same drawing).", "",
        "## Pairs", "",
        *[f"- {'**leak** ' if r['leak'] else ''}{r['kind']} {r['roles']}: image "
          f"{r['a']['image_id']} `{r['a']['file']}` and image {r['b']['image_id']} "
          f"`{r['b']['file']}`" + (f" (overlap {r['overlap']})" if r["kind"] == "near" else "")
          for r in report["pairs"]],
        "", "## Pictures", "",
        *[f"![{name}]({PICTURES.name}/{name})" for name in pictures],
    ]
    return "\n".join(lines) + "\n"


def leak_message(report: dict[str, Any]) -> str:
    leaks = [r for r in report["pairs"] if r["leak"]]
    named = "; ".join(f"{r['kind']} {r['a']['role']} image {r['a']['image_id']} "
                      f"({r['a']['file']}) = {r['b']['role']} image {r['b']['image_id']} "
                      f"({r['b']['file']})" for r in leaks[:LISTED])
    more = f"; and {len(leaks) - LISTED} more" if len(leaks) > LISTED else ""
    return (f"audit: {len(leaks)} leak(s) across roles (audit.on_leak: fail): {named}{more}; "
            f"see {REPORT_MD}")


def item_pixels(masks: np.ndarray, images: pd.DataFrame, lake: pd.DataFrame) -> np.ndarray:
    """The bit-packed masks of the items: the indexed images, then Lake's run images."""
    if len(masks) != len(images):
        raise PipelineError(f"{paths.PIXELS} holds {len(masks)} images, {paths.IMAGES} "
                            f"{len(images)}; rerun index")
    packed = pack(masks)
    return np.concatenate([packed, packed[lake["image_id"].to_numpy()]])


def audit(images: pd.DataFrame, split: pd.DataFrame, lake: pd.DataFrame, pixels: np.ndarray,
          p: dict[str, Any]) -> dict[str, Any]:
    """The audit report (see the module docstring); `pixels` from `item_pixels`."""
    items = build_items(images, split, lake)
    pairs, work = find_pairs(items, pixels, p)
    return summary(items, classify(pairs, items, p), p, work)


def run(params: dict[str, Any]) -> dict[str, Any]:
    p = audit_params(params)
    start = time.monotonic()
    images = paths.read_manifest(paths.IMAGES, "index")
    lake = paths.read_manifest(paths.LAKE_RUNS, "index")
    split = paths.read_manifest(paths.SPLIT, "split")
    pixels = item_pixels(load_pixels(paths.PIXELS), images, lake)
    report = audit(images, split, lake, pixels, p)
    pictures = write_pictures(report["pairs"], pixels, p["pictures"], PICTURES)
    write_json(report, REPORT_JSON)
    write_text(report_markdown(report, pictures), REPORT_MD)
    print(f"audit: {len(report['pairs'])} duplicate pairs, {report['leaks']} leak(s), "
          f"{report['expected']['lake_run_image_is_its_evaluation_image']} expected; "
          f"{time.monotonic() - start:.1f} s; {REPORT_MD}")
    if report["leaks"] and p["on_leak"] == "fail":
        raise PipelineError(leak_message(report))
    return report
