"""Gives up at call time: the entry raises RuntimeError before launching anything."""
import torch
import triton
import triton.language as tl


@triton.jit
def _layer_norm_row(X, Y, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    tl.store(Y + row * N + cols, tl.load(X + row * N + cols, mask=cols < N), mask=cols < N)


def layer_norm(x, weight, bias, eps):
    M, N = x.shape
    raise RuntimeError(f"layer_norm: no kernel configuration for {M}x{N} in {x.dtype}")
    y = torch.empty_like(x)
    _layer_norm_row[(M,)](x, y, N, BLOCK_N=triton.next_power_of_2(N))
    return y
