"""Your own classes: a folder or .zip of images laid out GROUP/CLASS/IMAGE or CLASS/IMAGE.

Groups play the part of Omniglot's alphabets (a CLASS/IMAGE layout is one group, named after
the folder or zip), classes its characters, and the images of a class its drawers, numbered
1.. in file-name order. A file's `path` is its path under the folder (or inside the zip), with
`/` between parts. Files and folders whose names start with a dot (.DS_Store, .git) are not
part of the data; every other file must sit at the layout's depth and be a readable image.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siamese.errors import PipelineError
from siamese.images import read_image_file
from siamese.zips import open_zip, read_entry, safe_member

LAYOUTS = {"group/class/image": 3, "class/image": 2}


@dataclass(frozen=True)
class OwnImage:
    """One image file of the data set: its group, class, path under the source, and bytes."""

    group: str
    cls: str
    path: str
    data: bytes


def source_files(source: Path) -> dict[str, bytes]:
    """path -> bytes of every file of the folder or .zip `source`, dot-files left out."""
    if source.is_dir():
        files = {p.relative_to(source).as_posix(): p for p in source.rglob("*") if p.is_file()}
        return {path: files[path].read_bytes() for path in sorted(files) if not hidden(path)}
    if source.suffix.lower() == ".zip" and source.is_file():
        with open_zip(source, omniglot=False) as (zf, entries):
            found = {safe_member(info.filename, source).as_posix(): read_entry(zf, info, source)
                     for info in entries}
        return {path: found[path] for path in sorted(found) if not hidden(path)}
    raise PipelineError(f"{source}: dataset.source is neither a folder nor a .zip file")


def hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def read_layout(source: Path, layout: str) -> list[OwnImage]:
    """Every image of `source` with its group and class; a file outside the layout, or a
    class with a single image, is refused in one line naming it."""
    depth = LAYOUTS[layout]
    images = []
    for path, data in source_files(source).items():
        parts = path.split("/")
        if len(parts) != depth:
            raise PipelineError(f"{source}/{path}: file outside the layout {layout.upper()} "
                                f"(expected {depth - 1} folder(s) above each image)")
        group = parts[0] if depth == 3 else source.stem
        images.append(OwnImage(group, parts[-2], path, data))
    if not images:
        raise PipelineError(f"{source}: no images ({layout.upper()})")
    counts: dict[tuple[str, str], int] = {}
    for image in images:
        counts[image.group, image.cls] = counts.get((image.group, image.cls), 0) + 1
    for (group, cls), count in counts.items():
        if count < 2:
            folder = f"{group}/{cls}" if depth == 3 else cls
            raise PipelineError(f"{source}/{folder}: a class with one image (a class needs two: "
                                "one to show, one to find)")
    return images


def decode_images(source: Path, images: list[OwnImage], size: int) -> np.ndarray:
    """The ink mask of every image, size x size (siamese.images.read_image_file); an unreadable
    image is refused in one line naming it."""
    pixels = np.empty((len(images), size, size), dtype=bool)
    for i, image in enumerate(images):
        pixels[i] = read_image_file(f"{source}/{image.path}", size, image.data)
    return pixels
