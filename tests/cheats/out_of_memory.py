"""Asks for a scratch buffer far larger than any device's memory."""
import torch
import triton
import triton.language as tl


@triton.jit
def _copy_row(X, Y, N, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    tl.store(Y + cols, tl.load(X + cols, mask=cols < N, other=0.0), mask=cols < N)


def layer_norm(x, weight, bias, eps):
    scratch = torch.empty((1 << 50,), dtype=x.dtype, device=x.device)
    _copy_row[(1,)](x, scratch, x.shape[1], BLOCK=triton.next_power_of_2(x.shape[1]))
    return scratch
