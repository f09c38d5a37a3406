"""Kills its worker on import with os._exit(3); the static policy rejects it, so tests hand it to the sandbox directly."""
import os

import torch
import triton
import triton.language as tl

os._exit(3)


@triton.jit
def _layer_norm_row(X, Y, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    tl.store(Y + row * N + cols, tl.load(X + row * N + cols, mask=cols < N), mask=cols < N)


def layer_norm(x, weight, bias, eps):
    y = torch.empty_like(x)
    _layer_norm_row[(x.shape[0],)](x, y, x.shape[1], BLOCK_N=triton.next_power_of_2(x.shape[1]))
    return y
