"""Koch et al.'s affine distortions, drawn per image and applied to a whole batch at once.

Each image gets T = (rotation, shear x/y, scale x/y, translation x/y); each of the four
components is used with probability p (else left at identity): rotation +-10 degrees, shear
+-0.3, scale 0.8-1.2, translation +-2 px at 105 px (the same fraction of the image at any
size). The parameters are drawn from a CPU torch.Generator (its state is saved with the
training state, so a resumed run draws the same numbers); the warp itself runs on the
images' device (affine_grid + grid_sample).
"""

import math

import torch
import torch.nn.functional as F

ROTATION_DEG = 10.0
SHEAR = 0.3
SCALE = (0.8, 1.2)
TRANSLATE_AT_105 = 2.0 / 105.0  # fraction of the image side


def uniform(gen: torch.Generator, n: int, lo: float, hi: float, shape: tuple = ()) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand((n, *shape), generator=gen)


def random_affine(gen: torch.Generator, n: int, p: float) -> torch.Tensor:
    """[n, 2, 3] affine matrices in affine_grid's normalised coordinates ([-1, 1])."""
    use = torch.rand(n, 4, generator=gen) < p
    angle = torch.where(use[:, 0], uniform(gen, n, -1, 1), 0.0) * math.radians(ROTATION_DEG)
    shear = torch.where(use[:, 1:2], uniform(gen, n, -SHEAR, SHEAR, (2,)), 0.0)
    scale = torch.where(use[:, 2:3], uniform(gen, n, *SCALE, (2,)), 1.0)
    # A shift of f * side is 2 * f in normalised coordinates.
    shift = torch.where(use[:, 3:4], uniform(gen, n, -1, 1, (2,)), 0.0) * 2 * TRANSLATE_AT_105
    cos, sin = cos_sin(angle)
    # rotation @ shearing @ diag(scale), rotation [[cos, -sin], [sin, cos]], shearing
    # [[1, shear x], [shear y, 1]]: written out, each entry by the same few products
    shear_x, shear_y = shear[:, 0], shear[:, 1]
    linear = torch.stack([
        torch.stack([(cos - sin * shear_y) * scale[:, 0], (cos * shear_x - sin) * scale[:, 1]], -1),
        torch.stack([(sin + cos * shear_y) * scale[:, 0], (sin * shear_x + cos) * scale[:, 1]], -1),
    ], -2)
    return torch.cat([linear, shift.unsqueeze(-1)], dim=-1)


def cos_sin(angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of angles within +-ROTATION_DEG, by their Taylor series to the 10th power in
    float64 (truncation below 1e-13, far below float32's rounding), then rounded to float32.

    Of + and x alone, which round the same on every CPU: torch.cos and torch.sin go to MKL's
    vector maths, whose kernels follow the CPU (siamese/cpu.py)."""
    x = angle.double()
    x2 = x * x
    cos = 1 - x2 / 2 * (1 - x2 / 12 * (1 - x2 / 30 * (1 - x2 / 56 * (1 - x2 / 90))))
    sin = x * (1 - x2 / 6 * (1 - x2 / 20 * (1 - x2 / 42 * (1 - x2 / 72 * (1 - x2 / 110)))))
    return cos.float(), sin.float()


def sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """affine_grid(theta, [B, 1, size, size], align_corners=False), written out: each pixel
    centre (x, y) in [-1, 1] maps to theta @ (x, y, 1). torch's affine_grid multiplies by MKL's
    batched matrix multiply, whose kernels follow the CPU."""
    centres = (torch.arange(size, dtype=theta.dtype, device=theta.device) * 2 + 1) / size - 1
    x, y = centres.view(1, 1, size), centres.view(1, size, 1)
    t = theta.view(-1, 6, 1, 1)
    gx = t[:, 0] * x + t[:, 1] * y + t[:, 2]
    gy = t[:, 3] * x + t[:, 4] * y + t[:, 5]
    return torch.stack([gx, gy], dim=-1)


def distort(images: torch.Tensor, gen: torch.Generator, p: float) -> torch.Tensor:
    """Koch's random affine distortion of each image of a batch [B, 1, S, S] (ink = 1).

    The matrix is used as the output -> input sampling map; the distribution of distortions
    is symmetric enough that this equals drawing the inverse. Outside the image is blank (0).
    """
    if p <= 0 or len(images) == 0:
        return images
    return warp(images, random_affine(gen, len(images), p))


def warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Each image of a batch [B, 1, S, S] sampled through its matrix of theta [B, 2, 3]."""
    theta = theta.to(images.dtype)
    if images.is_cuda:  # from pinned memory the copy does not make the host wait
        theta = theta.pin_memory()
    theta = theta.to(images.device, non_blocking=True)
    return bilinear(images, sampling_grid(theta, images.shape[-1]))


def bilinear(images: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """grid_sample(images, grid, bilinear, zeros padding, align_corners=False) of a batch
    [B, 1, S, S], written out as floor, gathers, + and x. ATen's AVX2 bilinear kernel gives
    other bits under qemu-user than on the hardware, so no emulated CPU could check it; these
    ops give the same bits on both."""
    batch, size = images.shape[0], images.shape[-1]
    x = ((grid[..., 0] + 1) * size - 1) / 2  # pixel coordinates of each sample
    y = ((grid[..., 1] + 1) * size - 1) / 2
    x0, y0 = x.floor(), y.floor()
    wx, wy = x - x0, y - y0
    side = size + 2  # one blank pixel around the image: a neighbour outside it reads 0
    flat = F.pad(images[:, 0], (1, 1, 1, 1)).reshape(batch, -1)

    def column(c: torch.Tensor) -> torch.Tensor:
        return (c.clamp(-1, size) + 1).long()

    def pixels(row: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
        index = column(row) * side + column(col)
        return flat.gather(1, index.reshape(batch, -1)).view_as(x)

    top = pixels(y0, x0) * (1 - wx) + pixels(y0, x0 + 1) * wx
    bottom = pixels(y0 + 1, x0) * (1 - wx) + pixels(y0 + 1, x0 + 1) * wx
    return (top * (1 - wy) + bottom * wy).unsqueeze(1)
