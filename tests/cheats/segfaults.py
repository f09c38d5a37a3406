"""Reads far outside its input: in the interpreter this faults the worker process."""
import torch
import triton
import triton.language as tl


@triton.jit
def _wild_load(X, Y, N, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    x = tl.load(X + 1_000_000_000_000 + cols, mask=cols < N, other=0.0)
    tl.store(Y + cols, x, mask=cols < N)


def layer_norm(x, weight, bias, eps):
    y = torch.empty_like(x)
    _wild_load[(1,)](x, y, x.shape[1], BLOCK=triton.next_power_of_2(x.shape[1]))
    return y
