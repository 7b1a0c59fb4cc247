"""siamese.gemm: the pinned convolutions and linear layers compute what torch's do (to float
tolerance), forward and backward, and the same bits whatever the thread count and whatever
instructions (AVX-512, AVX2 + FMA, scalar fmaf) siamese/_gemm.c computes them with."""

import hashlib

import pytest
import torch
import torch.nn.functional as F

from siamese import cpu, gemm
from siamese.errors import PipelineError
from siamese.model import Conv2d, Linear


def channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()


def digest(*tensors: torch.Tensor) -> str:
    return hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes()
                                   for t in tensors)).hexdigest()


@pytest.mark.parametrize(("batch", "channels", "size", "out", "kernel", "padding"), [
    (4, 1, 40, 64, 3, 1), (4, 64, 20, 64, 3, 1), (2, 1, 20, 8, 10, 0), (3, 5, 9, 7, 4, 0),
    (2, 16, 12, 20, 4, 0), (2, 32, 7, 16, 3, 2), (1, 16, 5, 17, 2, 2), (2, 24, 9, 5, 5, 1)])
def test_convolution_and_its_gradients_match_torch(batch, channels, size, out, kernel, padding):
    torch.manual_seed(0)
    x, w = channels_last(batch, channels, size, size), channels_last(out, channels, kernel, kernel)
    b = torch.randn(out, requires_grad=True)
    want = F.conv2d(x, w, b, padding=padding)
    grad = torch.randn_like(want)
    with gemm.pinned(2):
        got = gemm.conv2d(x, w, b, padding)
        got_grads = torch.autograd.grad(got, (x, w, b), grad)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for mine, torchs in zip(got_grads, torch.autograd.grad(want, (x, w, b), grad), strict=True):
        torch.testing.assert_close(mine, torchs, rtol=1e-4, atol=1e-3)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert got_grads[1].is_contiguous(memory_format=torch.channels_last)  # as the weight lies


def test_linear_and_its_gradients_match_torch():
    torch.manual_seed(0)
    x = torch.randn(5, 3, 7, requires_grad=True)
    w, b = torch.randn(4, 7, requires_grad=True), torch.randn(4, requires_grad=True)
    want = F.linear(x, w, b)
    grad = torch.randn_like(want)
    with gemm.pinned(2):
        got = gemm.linear(x, w, b)
        got_grads = torch.autograd.grad(got, (x, w, b), grad)
    torch.testing.assert_close(got, want)
    for mine, torchs in zip(got_grads, torch.autograd.grad(want, (x, w, b), grad), strict=True):
        torch.testing.assert_close(mine, torchs)


def test_the_bits_do_not_depend_on_the_thread_count():
    torch.manual_seed(0)
    x, w = channels_last(40, 64, 20, 20), channels_last(64, 64, 3, 3)  # 16,000 rows: 4 chunks
    digests = set()
    for threads in (1, 2, 3):
        with gemm.pinned(threads):
            y = gemm.conv2d(x, w, None, 1)
            digests.add(digest(y, *torch.autograd.grad(y.square().sum(), (x, w))))
    assert len(digests) == 1


def test_the_model_layers_use_the_pinned_gemm_only_within_it():
    conv, linear, x = Conv2d(1, 4, 3, padding=1), Linear(16, 2), torch.randn(2, 1, 8, 8)
    with gemm.pinned(1):
        assert gemm.active(x) and not gemm.active(x.double())  # float32 alone
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
        torch.testing.assert_close(linear(x.view(8, 16)), F.linear(x.view(8, 16), linear.weight,
                                                                   linear.bias))
    assert not gemm.active(x)


def conv_and_gradients(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> str:
    with gemm.pinned(2):
        y = gemm.conv2d(x, w, b, 1)
        return digest(y, *torch.autograd.grad(y.square().sum(), (x, w, b)))


def test_every_instruction_set_computes_the_same_bits(monkeypatch):
    """The one check an AVX2-only CPU cannot make: here, in one process, the AVX-512 kernel
    (where this CPU has it), the AVX2 one and C's fmaf, on a layer with an image read in place
    (64 channels) and one through im2col (1 channel), with every tail of rows and columns."""
    torch.manual_seed(0)
    here = [name for name, code in gemm.ISAS.items() if gemm.library().siamese_gemm_isas() & code]
    shapes = [((3, 64, 11, 13), (70, 64, 3, 3)), ((5, 1, 17, 9), (33, 1, 3, 3))]
    for x_shape, w_shape in shapes:
        x, w = channels_last(*x_shape), channels_last(*w_shape)
        b = torch.randn(w_shape[0], requires_grad=True)
        digests = {}
        for name in here:
            monkeypatch.setenv(gemm.ISA_SETTING, name)
            digests[name] = conv_and_gradients(x, w, b)
        assert len(set(digests.values())) == 1, digests
    assert len(here) > 1 or not {"avx2", "fma"} <= set(cpu.cpu_flags())  # more than fmaf ran


def test_an_instruction_set_this_cpu_lacks_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv(gemm.ISA_SETTING, "avx1024")
    with pytest.raises(PipelineError, match="SIAMESE_GEMM_ISA='avx1024': this CPU runs"):
        gemm.isa()


def test_a_kernel_built_from_another_source_is_refused(tmp_path, monkeypatch):
    """An edited siamese/_gemm.c that nobody built again would multiply by the old code under
    the new source's md5 in dvc.lock: refused, naming the file and the command."""
    edited = tmp_path / "_gemm.c"
    edited.write_bytes(gemm.SOURCE.read_bytes() + b"/* edited */\n")
    monkeypatch.setattr(gemm, "SOURCE", edited)
    gemm.library.cache_clear()
    try:
        with pytest.raises(PipelineError, match=r"_gemm.c changed since .*make setup"):
            gemm.library()
    finally:
        monkeypatch.undo()
        gemm.library.cache_clear()
    assert gemm.library().siamese_gemm_isas() & gemm.ISAS["scalar"]
