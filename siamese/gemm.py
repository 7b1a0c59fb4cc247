"""Convolutions and linear layers whose every sum is one fused multiply-add chain, in order.

Under `train.cpu_paths: avx2` (siamese.cpu.kernels) the network's Conv2d and Linear layers
(siamese.model) compute through the functions here instead of torch's: matrix multiplies over
each output pixel's receptive field, read in place in the padded image (im2col for a layer of
few channels), their backward by the same multiplies, each by siamese/_gemm.c. There each
element of a product is `c = fma(a[k], b[k], c)` for k in order, from 0: a result defined by
the formula alone, which its AVX-512, AVX2 + FMA and scalar kernels all compute, whatever the
CPU's vendor, caches or thread count (a BLAS, MKL and oneDNN sum in pieces the size of their
blocking, which follows the CPU). The instruction set only sets the speed: the best this CPU
has, or SIAMESE_GEMM_ISA's (avx512, avx2, scalar) to run another. A weight gradient's long
sum over every output pixel is the chains of CHUNK_ROWS rows each, added in order.

Elsewhere (a GPU, `native`, a layout these functions do not cover) the layers run torch's own.
"""

import ctypes
import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from siamese.errors import PipelineError

CHUNK_ROWS = 4096  # rows of a weight gradient's sum per chain (fixed: part of the result)
ISAS = {"avx512": 4, "avx2": 2, "scalar": 1}  # siamese/_gemm.c's codes, fastest first
ISA_SETTING = "SIAMESE_GEMM_ISA"
SOURCE = Path(__file__).with_name("_gemm.c")

_pool: ThreadPoolExecutor | None = None  # while pinned: the threads that run the chunks


@contextmanager
def pinned(threads: int) -> Iterator[None]:
    """Within: the layers compute through siamese/_gemm.c, `threads` chunks at a time (0: as
    many as the CPU has cores)."""
    global _pool
    library()  # a missing build is said here, once
    was, _pool = _pool, ThreadPoolExecutor(threads or os.cpu_count(), "gemm")
    try:
        yield
    finally:
        _pool.shutdown()
        _pool = was


def active(x: torch.Tensor) -> bool:
    return _pool is not None and x.device.type == "cpu" and x.dtype == torch.float32


@cache
def library() -> Any:
    """siamese/_gemm.c as built by the project's install, with its functions' signatures."""
    try:
        from siamese import _gemm  # type: ignore[attr-defined]
    except ImportError:
        raise PipelineError("siamese/_gemm.c is not built (its module siamese._gemm is missing): "
                            "run `make setup`, or `pip install -e .` in the checkout") from None
    lib = ctypes.CDLL(_gemm.__file__)
    lib.siamese_gemm_source.restype = ctypes.c_char_p
    if SOURCE.is_file() and lib.siamese_gemm_source().decode() != sha256_of(SOURCE):
        raise PipelineError(f"{SOURCE} changed since {Path(_gemm.__file__).name} was built from "
                            "it: run `make setup` (or `pip install -e .`) to build it again")
    i64, pointer = ctypes.c_int64, ctypes.c_void_p
    lib.siamese_gemm.argtypes = [ctypes.c_int, i64, i64, i64, pointer, i64, i64, pointer,
                                 pointer, i64, pointer, pointer, i64, ctypes.c_int]
    lib.siamese_gemm.restype = None
    return lib


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def isa() -> str:
    """The instruction set the kernel runs on: SIAMESE_GEMM_ISA's where set, else the fastest
    this CPU has (the bits are the same either way)."""
    here = [name for name, code in ISAS.items() if library().siamese_gemm_isas() & code]
    wanted = os.environ.get(ISA_SETTING, "")
    if not wanted:
        return here[0]
    if wanted not in here:
        raise PipelineError(f"{ISA_SETTING}={wanted!r}: this CPU runs {', '.join(here)}")
    return wanted


def run_chunks(work: Callable[[int], Any], rows: int) -> list[Any]:
    """work(start) for each chunk of CHUNK_ROWS of `rows`, on the pool's threads (ctypes lets
    go of the GIL); the results in chunk order."""
    assert _pool is not None
    return list(_pool.map(work, range(0, rows, CHUNK_ROWS)))


def multiply(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, code: int) -> None:
    """out = a @ b on this thread; a in any layout, b with contiguous rows, out contiguous."""
    (m, k), n = a.shape, b.shape[1]
    library().siamese_gemm(code, m, n, k, a.data_ptr(), a.stride(0), a.stride(1), None,
                           b.data_ptr(), b.stride(0), None, out.data_ptr(), n, 0)


def rows_contiguous(b: torch.Tensor) -> torch.Tensor:
    return b if b.stride(1) == 1 else b.contiguous()


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b, CHUNK_ROWS rows of a on each thread (a may be a transposed view)."""
    b, code = rows_contiguous(b), ISAS[isa()]
    out = torch.empty(a.shape[0], b.shape[1])

    def chunk(start: int) -> None:
        stop = start + CHUNK_ROWS
        multiply(a[start:stop], b, out[start:stop], code)

    run_chunks(chunk, a.shape[0])
    return out


def mm_tn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a.T @ b for tall a and b: the products of CHUNK_ROWS rows each, added in order. Each
    is computed as (a.T @ b) or as (b.T @ a).T, the same chains either way: whichever has the
    narrower side across the vectors, if that side fills one (16 columns), else the wider."""
    narrow, wide = sorted((a.shape[1], b.shape[1]))
    across = narrow if narrow >= 16 else wide
    left, right = (a, b) if b.shape[1] == across else (b, a)
    left, right, code = left.contiguous(), right.contiguous(), ISAS[isa()]

    def chunk(start: int) -> torch.Tensor:
        stop = start + CHUNK_ROWS
        out = torch.empty(left.shape[1], right.shape[1])
        multiply(left[start:stop].t(), right[start:stop], out, code)
        return out

    total = in_order(run_chunks(chunk, a.shape[0]))
    return total if left is a else total.t().contiguous()


def in_order(partials: list[torch.Tensor]) -> torch.Tensor:
    """The sum of the chunks' products, the first's plus the second's and so on (a fixed order:
    the chunks are of fixed length, not one a thread)."""
    total = partials[0]
    for partial in partials[1:]:
        total += partial
    return total


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           padding: int) -> torch.Tensor:
    """A stride-1 convolution, [N, C, H, W] -> [N, O, H', W'] in channels_last memory."""
    return Conv2dFunction.apply(x, weight, bias, padding)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias over the last dimension of x."""
    return LinearFunction.apply(x, weight, bias)


# A convolution over at least this many channels reads its receptive fields where they lie in
# the (padded) image, a kernel row of kw * C numbers at a time; over fewer (the first layer's
# one), such a row is too short for the vectors, and im2col writes the fields out first.
IN_PLACE_CHANNELS = 16


def padded_nhwc(x: torch.Tensor, padding: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, H + 2p, W + 2p, C], contiguous, zeros around (only the border
    written twice, not the whole image as F.pad does)."""
    n, c, h, w = x.shape
    p = padding
    out = torch.empty(n, h + 2 * p, w + 2 * p, c)
    if p:
        out[:, :p].zero_()
        out[:, p + h:].zero_()
        out[:, p:p + h, :p].zero_()
        out[:, p:p + h, p + w:].zero_()
    out[:, p:p + h, p:p + w] = x.permute(0, 2, 3, 1)
    return out


def field_offsets(image: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """For each output pixel of a kh x kw convolution over `image` [N, Hp, Wp, C] (NHWC,
    contiguous), where its receptive field starts: an int64 offset into the image."""
    n, hp, wp, c = image.shape
    batch = torch.arange(n).view(-1, 1, 1) * (hp * wp * c)
    rows = torch.arange(hp - kh + 1).view(1, -1, 1) * (wp * c)
    columns = torch.arange(wp - kw + 1).view(1, 1, -1) * c
    return (batch + rows + columns).reshape(-1)


def convolve_in_place(image: torch.Tensor, offsets: torch.Tensor, kernel: torch.Tensor,
                      kh: int) -> torch.Tensor:
    """[pixels, O]: each pixel's receptive field in `image` (at `offsets`) times `kernel`
    [kh * kw * C, O], rows in the field's (i, j, c) order: one chain per output, over the
    kernel's rows i one call after another (accumulate)."""
    pixels, (depth, features) = len(offsets), kernel.shape
    segment, row_stride, code = depth // kh, image.shape[2] * image.shape[3], ISAS[isa()]
    out = torch.empty(pixels, features)
    image_at, kernel_at, out_at = image.data_ptr(), kernel.data_ptr(), out.data_ptr()
    offsets_at = offsets.data_ptr()

    def chunk(start: int) -> None:
        rows = min(CHUNK_ROWS, pixels - start)
        for i in range(kh):
            library().siamese_gemm(
                code, rows, features, segment, image_at + 4 * i * row_stride, 0, 1,
                offsets_at + 8 * start, kernel_at + 4 * i * segment * features, features, None,
                out_at + 4 * start * features, features, int(i > 0))

    run_chunks(chunk, pixels)
    return out


def field_gradient(grad_rows: torch.Tensor, image: torch.Tensor, offsets: torch.Tensor,
                   kh: int, kw: int) -> torch.Tensor:
    """grad_rows.T @ fields, [O, kh * kw * C], without writing the receptive fields out: the
    products of CHUNK_ROWS pixels each, added in order (as mm_tn)."""
    (pixels, features), channels = grad_rows.shape, image.shape[3]
    segment, row_stride, code = kw * channels, image.shape[2] * channels, ISAS[isa()]
    grad_at, image_at, offsets_at = grad_rows.data_ptr(), image.data_ptr(), offsets.data_ptr()

    def chunk(start: int) -> torch.Tensor:
        rows = min(CHUNK_ROWS, pixels - start)
        out = torch.empty(features, kh * segment)
        for i in range(kh):
            library().siamese_gemm(
                code, features, segment, rows, grad_at + 4 * start * features, 1, features,
                None, image_at + 4 * i * row_stride, 0, offsets_at + 8 * start,
                out.data_ptr() + 4 * i * segment, kh * segment, 0)
        return out

    return in_order(run_chunks(chunk, pixels))


def im2col(x: torch.Tensor, kh: int, kw: int, padding: int) -> torch.Tensor:
    """[N, C, H, W] -> [N * H' * W', kh * kw * C]: each output pixel's receptive field, in the
    order of a channels_last weight's [kh, kw, C] (rows: NHWC, whatever x's memory format)."""
    nhwc = x.permute(0, 2, 3, 1)
    if padding:
        nhwc = F.pad(nhwc, (0, 0, padding, padding, padding, padding))
    fields = nhwc.unfold(1, kh, 1).unfold(2, kw, 1)  # [N, H', W', C, kh, kw], a view
    return fields.permute(0, 1, 2, 4, 5, 3).reshape(-1, kh * kw * nhwc.shape[3])


def flat_weight(weight: torch.Tensor) -> torch.Tensor:
    """[O, C, kh, kw] -> [O, kh * kw * C] (a view where the weight is channels_last)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def flipped_kernel(weight: torch.Tensor) -> torch.Tensor:
    """[O, C, kh, kw] -> [kh * kw * O, C]: the kernel turned half a turn, as the gradient of
    the input convolves with it, rows in (i, j, o) order."""
    o, c, kh, kw = weight.shape
    return weight.flip(2, 3).permute(2, 3, 0, 1).reshape(kh * kw * o, c).contiguous()


def col2im(cols: torch.Tensor, shape: torch.Size, kh: int, kw: int, padding: int
           ) -> torch.Tensor:
    """The adjoint of im2col: each receptive field's gradient added back at its pixels, one
    kernel offset after another (a fixed order of additions)."""
    n, c, h, w = shape
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    fields = cols.view(n, ho, wo, kh, kw, c)
    padded = torch.zeros(n, h + 2 * padding, w + 2 * padding, c)
    for i in range(kh):
        for j in range(kw):
            padded[:, i:i + ho, j:j + wo, :] += fields[:, :, :, i, j, :]
    inner = padded[:, padding:padding + h, padding:padding + w, :]
    return inner.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def as_nchw(rows: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """[N * H * W, C] rows -> [N, C, H, W] in channels_last memory (a view)."""
    return rows.view(n, h, w, rows.shape[1]).permute(0, 3, 1, 2)


class Conv2dFunction(torch.autograd.Function):
    """Forward, the input's gradient and the weight's, each by siamese_gemm: over the image in
    place where it has IN_PLACE_CHANNELS (the input's gradient as a convolution of the padded
    output gradient with the flipped kernel), else over im2col's fields."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                padding: int) -> torch.Tensor:
        out_channels, channels, kh, kw = weight.shape
        n, _, h, w = x.shape
        if channels >= IN_PLACE_CHANNELS:
            image = padded_nhwc(x, padding)
            offsets = field_offsets(image, kh, kw)
            out = convolve_in_place(image, offsets, flat_weight(weight).t().contiguous(), kh)
            ctx.save_for_backward(image, offsets, weight)
        else:
            cols = im2col(x, kh, kw, padding)
            out = mm(cols, flat_weight(weight).t())
            ctx.save_for_backward(cols, weight)
        if bias is not None:
            out += bias
        ctx.input_shape, ctx.padding, ctx.has_bias = x.shape, padding, bias is not None
        return as_nchw(out, n, h + 2 * padding - kh + 1, w + 2 * padding - kw + 1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        *fields, weight = ctx.saved_tensors
        out_channels, _, kh, kw = weight.shape
        rows = grad.permute(0, 2, 3, 1).reshape(-1, out_channels).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = input_gradient(grad, rows, weight, ctx.input_shape, ctx.padding)
        if ctx.needs_input_grad[1] and len(fields) == 2:  # the image and its field offsets
            image, offsets = fields
            grad_w = field_gradient(rows, image, offsets, kh, kw)
        elif ctx.needs_input_grad[1]:  # im2col's fields
            grad_w = mm_tn(rows, fields[0])
        if grad_w is not None:
            grad_w = grad_w.view(out_channels, kh, kw, -1).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b, None


def input_gradient(grad: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                   shape: torch.Size, padding: int) -> torch.Tensor:
    """The gradient of a convolution's input: the output gradient, padded by kh - 1 - padding,
    convolved with the flipped kernel (in place, where the kernel has IN_PLACE_CHANNELS
    outputs); else each field's gradient by mm, added back by col2im."""
    out_channels, _, kh, kw = weight.shape
    n, _, h, w = shape
    border = kh - 1 - padding
    if out_channels >= IN_PLACE_CHANNELS and border >= 0 and kw == kh:
        image = padded_nhwc(grad, border)
        return as_nchw(convolve_in_place(image, field_offsets(image, kh, kw),
                                         flipped_kernel(weight), kh), n, h, w)
    return col2im(mm(rows, flat_weight(weight)), shape, kh, kw, padding)


class LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = mm(rows, weight.t())
        if bias is not None:
            out += bias
        ctx.save_for_backward(rows, weight)
        ctx.input_shape, ctx.has_bias = x.shape, bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, weight.shape[0])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = mm(grad_rows, weight).view(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_w = mm_tn(grad_rows, rows)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_rows.sum(0)
        return grad_x, grad_w, grad_b

