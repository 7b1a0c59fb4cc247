"""Image decoding and preprocessing, in one place for every stage.

Convention: an image is a boolean array, True where there is ink. Omniglot PNGs are 1-bit,
black strokes on white, 105x105. The packed artifact (data/packed/pixels.npy) stores all
images bit-packed along rows, in `image_id` order: uint8 [N, 105, 14], 46 MB instead of
358 MB, unpacked in about a second.
"""

import io
import re
import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from siamese.errors import PipelineError
from siamese.lockcheck import check_input

if TYPE_CHECKING:
    import torch

SIZE = 105

MAX_PIXELS = 4096 * 4096
"""The largest user image read (`siamese classify`): 16,777,216 pixels (4096x4096), and
MAX_SIDE pixels on a side. A JPEG over it is decoded at 1/2, 1/4 or 1/8 scale when that brings
it within; any other image over it is refused from its header, before it is decoded. Reading an
image within the limits takes at most about 12 bytes per pixel (under 200 MiB for an RGBA
image at the limit; 61 MiB for a 4000x4000 1-bit PNG), and a few MiB whatever its shape."""
MAX_SIDE = 16384
LIMITS = f"{MAX_PIXELS:,} pixels (4096x4096) and {MAX_SIDE} pixels a side"
BAND_PIXELS = 1 << 20
"""Pixels of the padded square resized at a time (4 MiB of float32)."""
READ_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
               struct.error)


def decode_png(data: bytes, source: str, size: int = SIZE) -> np.ndarray:
    """Decode one Omniglot PNG strictly: it must be a readable image of exactly size x size.

    The size is checked from the header, before anything is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(io.BytesIO(data)) as img:
                if img.size != (size, size):
                    raise PipelineError(f"{source}: image is {img.size[0]}x{img.size[1]}, "
                                        f"expected {size}x{size}")
                img.load()
                gray = img.convert("L")
    except Image.DecompressionBombError as e:
        raise PipelineError(f"{source}: image of {bomb_pixels(e)} pixels, "
                            f"expected {size}x{size}") from None
    except UnidentifiedImageError:
        raise PipelineError(f"{source}: not a readable PNG (unknown image format)") from None
    except READ_ERRORS as e:
        raise PipelineError(f"{source}: not a readable PNG ({one_line(e)})") from None
    return np.asarray(gray) < 128


def read_image_file(path: Path | str, size: int = SIZE, data: bytes | None = None) -> np.ndarray:
    """Read a user's character image of any size and format into the training convention
    (`data`: the file's bytes, where they are not at `path`, as an entry of a zip).

    Dark strokes on a light background (transparency laid on white; inverted if the border is
    dark), padded to a square with background, resized to size x size (box filter), thresholded
    at mid-grey. Images over MAX_PIXELS or MAX_SIDE are refused (see MAX_PIXELS); any failure
    to read is a one-line PipelineError naming the file.
    """
    gray = read_gray(Path(path), data)
    ink = InkRows(gray)
    h, w = gray.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    # The box resize of the padded square, without the square: PIL resizes horizontally, then
    # vertically, so the rows are resized horizontally a band at a time, put in a side x size
    # column of background, and that is resized vertically. The result is the same, bit for
    # bit, as resizing the whole square; memory is a band and the column, not side x side.
    column = np.zeros((side, size), dtype=np.float32)
    band = max(1, BAND_PIXELS // side)
    for y in range(0, h, band):
        rows = np.zeros((min(band, h - y), side), dtype=np.float32)
        rows[:, left : left + w] = ink.rows(y, y + len(rows))
        column[top + y : top + y + len(rows)] = np.asarray(box_resize(rows, size, len(rows)))
    return np.asarray(box_resize(column, size, size)) >= 0.5


def box_resize(array: np.ndarray, width: int, height: int) -> Image.Image:
    return Image.fromarray(array).resize((width, height), Image.Resampling.BOX)


class InkRows:
    """Ink of a grey image as float32 (1 = ink), computed a band of rows at a time.

    Dark strokes on light paper; inverted when the border is mostly ink (light on dark)."""

    def __init__(self, gray: np.ndarray):
        self.gray = gray
        border = np.concatenate([self.ink(gray[0]), self.ink(gray[-1]),
                                 self.ink(gray[:, 0]), self.ink(gray[:, -1])])
        self.invert = bool(border.mean() > 0.5)

    @staticmethod
    def ink(gray: np.ndarray) -> np.ndarray:
        return 1.0 - np.asarray(gray, dtype=np.float32) / 255.0

    def rows(self, start: int, stop: int) -> np.ndarray:
        ink = self.ink(self.gray[start:stop])
        return 1.0 - ink if self.invert else ink


def read_gray(path: Path, data: bytes | None = None) -> np.ndarray:
    """The image of `path` (or its bytes `data`) as uint8 grey [H, W], transparency laid on
    white, within the limits."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below
            with Image.open(path if data is None else io.BytesIO(data)) as opened:
                fit_within_limits(opened, path)
                opened.load()
                img: Image.Image = opened
                if "A" in img.getbands() or "transparency" in img.info:
                    # Transparent pixels often hold black: lay the image on white paper first.
                    rgba = img if img.mode == "RGBA" else img.convert("RGBA")
                    img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), rgba)
                    del rgba
                return np.asarray(img.convert("L"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except Image.DecompressionBombError as e:
        raise PipelineError(f"{path}: image of {bomb_pixels(e)} pixels, larger than the limit "
                            f"of {LIMITS}") from None
    except READ_ERRORS as e:
        raise PipelineError(f"{path}: not a readable image ({one_line(e)})") from None


def fit_within_limits(img: Image.Image, path: Path) -> None:
    """Refuse an image over the limits from its header; a JPEG is first decoded smaller if
    1/2, 1/4 or 1/8 scale brings it within them."""
    w, h = img.size

    def over(w: int, h: int) -> bool:
        return w * h > MAX_PIXELS or max(w, h) > MAX_SIDE

    if over(w, h) and img.format == "JPEG":
        scale = next((s for s in (2, 4, 8) if not over(-(-w // s), -(-h // s))), 8)
        img.draft(None, (w // scale, h // scale))
    if over(*img.size):
        raise PipelineError(f"{path}: image is {w}x{h}, larger than the limit of {LIMITS}")


def bomb_pixels(e: Exception) -> str:
    """The pixel count in PIL's decompression bomb message."""
    found = re.search(r"\((\d+) pixels\)", str(e))
    return f"{int(found.group(1)):,}" if found else "too many"


def one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def pack(images: np.ndarray) -> np.ndarray:
    """bool [N, H, W] -> uint8 [N, H, ceil(W / 8)]."""
    return np.packbits(images, axis=-1)


def unpack(packed: np.ndarray, size: int = SIZE) -> np.ndarray:
    """uint8 [N, H, ceil(W / 8)] -> bool [N, H, size]."""
    return np.unpackbits(packed, axis=-1, count=size).astype(bool)


def load_pixels(path: Path | str) -> np.ndarray:
    """All images of the packed artifact, bool [N, 105, 105], indexed by image_id."""
    path = Path(path)
    try:
        packed = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise PipelineError(f"{path}: packed pixels not found; run the index stage first") from None
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: not a valid packed pixel file ({e})") from None
    if packed.ndim != 3 or packed.dtype != np.uint8:
        raise PipelineError(
            f"{path}: expected uint8 [N, H, W/8], got {packed.dtype} {packed.shape}"
        )
    check_input(path)
    return unpack(packed, size=packed.shape[1])


def to_tensor(images: np.ndarray, size: int):
    """bool [N, H, W] -> float32 torch tensor [N, 1, size, size], ink = 1, area-resampled.

    The one preprocessing path for training, evaluation and classification.
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return x


TURNS = 4  # quarter turns an image can be seen at: 0..3 (rotate, the trials' turns)


def rotate(x: "torch.Tensor", turns: np.ndarray) -> "torch.Tensor":
    """Rotate image i of a tensor [B, 1, S, S] by turns[i] quarter turns (in place).

    Which images turn is decided here on the host, from the numpy turns, so that no step
    waits for the device to answer a question about its own tensors.
    """
    import torch

    for k in range(1, TURNS):
        chosen = np.flatnonzero(np.asarray(turns) == k)
        if len(chosen):
            index = to_device(chosen, x.device)
            x[index] = torch.rot90(x[index], k, dims=(2, 3))
    return x


def to_device(array: np.ndarray, device: "torch.device") -> "torch.Tensor":
    """`array` as a tensor on `device`; to a GPU through pinned memory without waiting for it
    (a plain copy from pageable memory makes the host wait for the device)."""
    import torch

    tensor = torch.from_numpy(array)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
