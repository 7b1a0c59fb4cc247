"""Convolutions and linear layers whose every multiply-add runs in one pinned SGEMM kernel.

Under `train.cpu_paths: avx2` (siamese.cpu.kernels) the network's Conv2d and Linear layers
(siamese.model) compute through the functions here instead of torch's: im2col + matrix
multiply, their backward by the same multiplies, each multiply by OpenBLAS's SGEMM as numpy
ships it, with the kernel pinned to its Haswell one (AVX2 + FMA; `OPENBLAS_CORETYPE`, set
before numpy loads). MKL and oneDNN choose their kernels by the CPU's vendor, cache sizes or
AVX-512, which no setting fixes; this kernel and its blocking are the same code on every x86-64
CPU with AVX2 and FMA. OpenBLAS's own threads would part the sums by their count, so each call
runs on one thread, over CHUNK_ROWS rows at a time, and train.threads of them run side by side:
the bits never depend on the thread count. A weight gradient's long sum over every output
pixel is the chunks' partial products, added in order.

Elsewhere (a GPU, `native`, a layout these functions do not cover) the layers run torch's own.
"""

import ctypes
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

CORETYPE = "Haswell"
CHUNK_ROWS = 4096  # rows of a at a time in each multiply (fixed: part of how it sums)

_pool: ThreadPoolExecutor | None = None  # while pinned: the threads that run the chunks


@contextmanager
def pinned(threads: int) -> Iterator[None]:
    """Within: the layers compute through OpenBLAS's pinned kernel, `threads` chunks at a time
    (0: as many as the CPU has cores)."""
    global _pool
    library = openblas()
    before = library.scipy_openblas_get_num_threads64_()
    library.scipy_openblas_set_num_threads64_(1)  # its threads would split the sums by count
    was, _pool = _pool, ThreadPoolExecutor(threads or os.cpu_count(), "gemm")
    try:
        yield
    finally:
        _pool.shutdown()
        _pool = was
        library.scipy_openblas_set_num_threads64_(before)


def active(x: torch.Tensor) -> bool:
    return _pool is not None and x.device.type == "cpu" and x.dtype == torch.float32


@cache
def openblas() -> Any:
    """numpy's OpenBLAS, already loaded by `import numpy`."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libscipy_openblas" in line:
            return ctypes.CDLL(line.split()[-1])
    raise RuntimeError(f"numpy {np.__version__} does not bundle scipy-openblas")


def corename() -> str:
    """The kernel set OpenBLAS chose when numpy loaded (e.g. Haswell, SkylakeX)."""
    library = openblas()
    library.scipy_openblas_get_corename64_.restype = ctypes.c_char_p
    return library.scipy_openblas_get_corename64_().decode()


def numpy_of(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def starts(rows: int) -> range:
    return range(0, rows, CHUNK_ROWS)


def run_chunks(work: Callable[[int], Any], rows: int) -> list[Any]:
    """work(start) for each chunk of `rows`, on the pool's threads (numpy's matmul lets go of
    the GIL); the results in chunk order."""
    assert _pool is not None
    return list(_pool.map(work, starts(rows)))


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b by OpenBLAS, CHUNK_ROWS rows of a at a time (either may be a transposed view:
    BLAS reads it as it lies)."""
    out = torch.empty(a.shape[0], b.shape[1], dtype=torch.float32)
    a_np, b_np, out_np = numpy_of(a), numpy_of(b), out.numpy()

    def chunk(start: int) -> None:
        stop = start + CHUNK_ROWS
        np.matmul(a_np[start:stop], b_np, out=out_np[start:stop])

    run_chunks(chunk, a.shape[0])
    return out


def mm_tn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a.T @ b for tall a and b: the partial products of CHUNK_ROWS rows, added in order."""
    a_np, b_np = numpy_of(a), numpy_of(b)

    def chunk(start: int) -> np.ndarray:
        stop = start + CHUNK_ROWS
        return np.matmul(a_np[start:stop].T, b_np[start:stop])

    partials = run_chunks(chunk, a.shape[0])
    total = partials[0]
    for partial in partials[1:]:
        total += partial
    return torch.from_numpy(total)


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           padding: int) -> torch.Tensor:
    """A stride-1 convolution, [N, C, H, W] -> [N, O, H', W'] in channels_last memory."""
    return Conv2dFunction.apply(x, weight, bias, padding)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias over the last dimension of x."""
    return LinearFunction.apply(x, weight, bias)


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


class Conv2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                padding: int) -> torch.Tensor:
        out_channels, _, kh, kw = weight.shape
        cols = im2col(x, kh, kw, padding)
        out = mm(cols, flat_weight(weight).t())
        if bias is not None:
            out += bias
        ctx.save_for_backward(cols, weight)
        ctx.input_shape, ctx.padding, ctx.has_bias = x.shape, padding, bias is not None
        n, _, h, w = x.shape
        nhwc = out.view(n, h + 2 * padding - kh + 1, w + 2 * padding - kw + 1, out_channels)
        return nhwc.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cols, weight = ctx.saved_tensors
        out_channels, _, kh, kw = weight.shape
        rows = grad.permute(0, 2, 3, 1).reshape(-1, out_channels)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_cols = mm(rows, flat_weight(weight))
            grad_x = col2im(grad_cols, ctx.input_shape, kh, kw, ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_w = mm_tn(rows, cols).view(out_channels, kh, kw, -1).permute(0, 3, 1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b, None


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

