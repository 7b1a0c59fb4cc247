"""The audit's pictures: each duplicate pair drawn side by side and overlaid, with its kind,
roles, ids and files (reports/audit/*.png, from the pair records of tasks/audit.py)."""

import io
from pathlib import Path
from typing import Any

import numpy as np

from siamese.atomic import atomic_path


def picture_name(record: dict[str, Any]) -> str:
    return f"{record['kind']}-{record['a']['item']}-{record['b']['item']}.png"


def draw_pair(record: dict[str, Any], packed: np.ndarray) -> bytes:
    """PNG: image a, image b, and both overlaid (a only red, b only blue, both black), with
    the kind, roles, ids and files above."""
    from PIL import Image, ImageDraw

    a, b = (np.unpackbits(packed[record[s]["item"]], axis=-1, count=packed.shape[1]).astype(bool)
            for s in ("a", "b"))
    panel = np.full(a.shape + (3,), 255, dtype=np.uint8)
    overlay = panel.copy()
    overlay[a & ~b], overlay[b & ~a], overlay[a & b] = (220, 0, 0), (0, 0, 220), (0, 0, 0)
    panels = [np.where(m[..., None], 0, panel) for m in (a, b)] + [overlay]
    gap = np.full((a.shape[0], 8, 3), 255, dtype=np.uint8)
    row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
    strip = Image.fromarray(row).resize((row.shape[1] * 2, row.shape[0] * 2),
                                        Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (max(strip.width, 560), strip.height + 64), "white")
    canvas.paste(strip, (0, 64))
    draw = ImageDraw.Draw(canvas)
    detail = f", overlap {record['overlap']}" if record["kind"] == "near" else ""
    lines = [f"{record['kind']} duplicate, {record['roles']}" + (" LEAK" if record["leak"]
                                                                 else "") + detail]
    lines += [f"{s}: {record[s]['role']} image {record[s]['image_id']}  {record[s]['file']}"
              for s in ("a", "b")]
    for k, line in enumerate(lines):
        draw.text((4, 4 + 18 * k), line, fill="black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def write_pictures(records: list[dict[str, Any]], packed: np.ndarray, count: int,
                   folder: Path) -> list[str]:
    """`folder` (reports/audit/): one PNG per pair of images (its first kind: same bytes are
    also same pixels), leaks first, at most `count`; the folder is written as a whole."""
    names: dict[tuple[int, int], str] = {}
    with atomic_path(folder, is_dir=True) as tmp:
        for record in records:
            pair = (record["a"]["item"], record["b"]["item"])
            if len(names) == count or pair in names:
                continue
            names[pair] = picture_name(record)
            (tmp / names[pair]).write_bytes(draw_pair(record, packed))
    return list(names.values())
