"""siamese.gemm: the pinned convolutions and linear layers compute what torch's do (to float
tolerance), forward and backward, and the same bits whatever the thread count."""

import hashlib

import pytest
import torch
import torch.nn.functional as F

from siamese import gemm
from siamese.model import Conv2d, Linear


def channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last).requires_grad_()


def digest(*tensors: torch.Tensor) -> str:
    return hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes()
                                   for t in tensors)).hexdigest()


@pytest.mark.parametrize(("batch", "channels", "size", "out", "kernel", "padding"), [
    (4, 1, 40, 64, 3, 1), (4, 64, 20, 64, 3, 1), (2, 1, 20, 8, 10, 0), (3, 5, 9, 7, 4, 0)])
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
