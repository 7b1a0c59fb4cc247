"""Image decoding and preprocessing, in one place for every stage.

Convention: an image is a boolean array, True where there is ink. Omniglot PNGs are 1-bit,
black strokes on white, 105x105. The packed artifact (data/packed/pixels.npy) stores all
images bit-packed along rows, in `image_id` order: uint8 [N, 105, 14], 46 MB instead of
358 MB, unpacked in about a second.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from siamese.errors import PipelineError

SIZE = 105


def decode_png(data: bytes, source: str, size: int = SIZE) -> np.ndarray:
    """Decode one Omniglot PNG strictly: it must be a readable image of exactly size x size."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            gray = img.convert("L")
    except UnidentifiedImageError:
        raise PipelineError(f"{source}: not a readable PNG (unknown image format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PipelineError(f"{source}: not a readable PNG ({e})") from None
    if gray.size != (size, size):
        raise PipelineError(
            f"{source}: image is {gray.size[0]}x{gray.size[1]}, expected {size}x{size}"
        )
    return np.asarray(gray) < 128


def read_image_file(path: Path | str, size: int = SIZE) -> np.ndarray:
    """Read a user's character image of any size and format into the training convention.

    Dark strokes on a light background (transparency laid on white; inverted if the border is
    dark), padded to a square
    with background, resized to size x size, thresholded at mid-grey.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if "A" in img.getbands() or "transparency" in img.info:
                # Transparent pixels often hold black: lay the image on white paper first.
                paper = Image.new("RGBA", img.size, "white")
                img = Image.alpha_composite(paper, img.convert("RGBA"))
            gray = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise PipelineError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise PipelineError(f"{path}: not a readable image ({e})") from None
    ink = 1.0 - gray
    border = np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])
    if border.mean() > 0.5:
        ink = 1.0 - ink
    h, w = ink.shape
    side = max(h, w)
    square = np.zeros((side, side), dtype=np.float32)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = ink
    resized = Image.fromarray(square, mode="F").resize((size, size), Image.Resampling.BOX)
    return np.asarray(resized) >= 0.5


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
