"""Stores far outside the output: a CUDA illegal memory access that poisons the worker's context."""
import torch
import triton
import triton.language as tl


@triton.jit
def _wild_store(X, Y, N, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    x = tl.load(X + cols, mask=cols < N, other=0.0)
    tl.store(Y + 1_000_000_000_000 + cols, x, mask=cols < N)


def layer_norm(x, weight, bias, eps):
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous whatever x's row stride
    _wild_store[(1,)](x, y, x.shape[1], BLOCK=triton.next_power_of_2(x.shape[1]))
    return y
