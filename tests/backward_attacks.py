"""Planted differentiable LayerNorm candidates for tests/test_backward_judge.py: one honest backward and
backwards that are wrong in the ways careless or cheating kernels are (a gradient wrong only for the last
row, a bias gradient of zeros, a dx missing a term, a gradient that is dy itself), each built from the honest
file by replacing one piece of it.
"""
from __future__ import annotations

HONEST = '''
import math
import typing

import torch
import triton
import triton.language as tl


@triton.jit
def _fwd(X, W, B, Y, stride_x, N, eps, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * N + cols, (xc * rstd * w + b).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd(X, W, DY, DX, DW_ROWS, DB_ROWS, stride_x, M, N, eps, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    xhat = xc * rstd
    wdy = w * dy
    c1 = tl.sum(xhat * wdy, axis=0) / N
    c2 = tl.sum(wdy, axis=0) / N
    dx = (wdy - (xhat * c1 + c2)) * rstd
    scale = 1.0
    tl.store(DX + row * N + cols, (dx * scale).to(DX.dtype.element_ty), mask=mask)
    tl.store(DW_ROWS + row * N + cols, dy * xhat, mask=mask)
    tl.store(DB_ROWS + row * N + cols, dy, mask=mask)


@triton.jit
def _column_sum(ROWS, OUT, M, N, BLOCK_N: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for r in range(0, M):
        acc += tl.load(ROWS + r * N + cols, mask=cols < N, other=0.0)
    tl.store(OUT + cols, acc.to(OUT.dtype.element_ty), mask=cols < N)


class LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        M, N = x.shape
        y = torch.empty((M, N), dtype=x.dtype, device=x.device)
        _fwd[(M,)](x, weight, bias, y, x.stride(0), N, eps, BLOCK_N=triton.next_power_of_2(N))
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        M, N = x.shape
        dy = dy.contiguous()
        dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
        dw_rows = torch.empty((M, N), dtype=torch.float32, device=x.device)
        db_rows = torch.empty((M, N), dtype=torch.float32, device=x.device)
        _bwd[(M,)](x, weight, dy, dx, dw_rows, db_rows, x.stride(0), M, N, ctx.eps,
                   BLOCK_N=triton.next_power_of_2(N))
        dw = torch.empty((N,), dtype=weight.dtype, device=x.device)
        db = torch.empty((N,), dtype=weight.dtype, device=x.device)
        _column_sum[(triton.cdiv(N, 64),)](dw_rows, dw, M, N, BLOCK_N=64)
        _column_sum[(triton.cdiv(N, 64),)](db_rows, db, M, N, BLOCK_N=64)
        return dx, dw, db, None


def layer_norm(x, weight, bias, eps):
    return LayerNorm.apply(x, weight, bias, eps)
'''


def planted(old: str, new: str) -> str:
    assert HONEST.count(old) == 1, old
    return HONEST.replace(old, new)


# the forward alone: the same kernel, no autograd Function
FORWARD_ONLY = planted("def layer_norm(x, weight, bias, eps):\n    return LayerNorm.apply(x, weight, bias, eps)\n",
                       "def layer_norm(x, weight, bias, eps):\n    M, N = x.shape\n"
                       "    y = torch.empty((M, N), dtype=x.dtype, device=x.device)\n"
                       "    _fwd[(M,)](x, weight, bias, y, x.stride(0), N, eps, BLOCK_N=triton.next_power_of_2(N))\n"
                       "    return y\n")

# wrong only for the last row: its dx is doubled
LAST_ROW_WRONG = planted("    scale = 1.0\n", "    scale = tl.where(row == M - 1, 2.0, 1.0)\n")

# a bias gradient of zeros: its partial rows never take dy
ZERO_BIAS_GRAD = planted("    tl.store(DB_ROWS + row * N + cols, dy, mask=mask)\n",
                         "    tl.store(DB_ROWS + row * N + cols, dy * 0.0, mask=mask)\n")

# dx without the mean of w*dy: right where that mean is small, wrong in general
DX_MISSING_A_TERM = planted("    dx = (wdy - (xhat * c1 + c2)) * rstd\n", "    dx = (wdy - xhat * c1) * rstd\n")

# dx written into dy's storage and returned: the gradient is dy itself
ALIASES_DY = planted("        return dx, dw, db, None\n",
                     "        _bwd[(M,)](x, weight, dy, dy, dw_rows, db_rows, x.stride(0), M, N, ctx.eps,\n"
                     "                   BLOCK_N=triton.next_power_of_2(N))\n"
                     "        return dy, dw, db, None\n")

# dx right, but dy overwritten on the way (a kernel that reuses its input as scratch)
MUTATES_DY = planted("        return dx, dw, db, None\n",
                     "        _column_sum[(triton.cdiv(N, 64),)](dw_rows, dy, 1, N, BLOCK_N=64)\n"
                     "        return dx, dw, db, None\n")

# no gradient for the weight
MISSING_WEIGHT_GRAD = planted("        return dx, dw, db, None\n", "        return dx, None, db, None\n")

# the bias gradient summed by torch instead of a kernel
TORCH_IN_BACKWARD = planted("        return dx, dw, db, None\n", "        return dx, dw, dy.sum(0), None\n")

# a backward that launches nothing: gradients of the right layout, never written
NO_BACKWARD_KERNEL = planted(
    "        _bwd[(M,)](x, weight, dy, dx, dw_rows, db_rows, x.stride(0), M, N, ctx.eps,\n"
    "                   BLOCK_N=triton.next_power_of_2(N))\n"
    "        dw = torch.empty((N,), dtype=weight.dtype, device=x.device)\n"
    "        db = torch.empty((N,), dtype=weight.dtype, device=x.device)\n"
    "        _column_sum[(triton.cdiv(N, 64),)](dw_rows, dw, M, N, BLOCK_N=64)\n"
    "        _column_sum[(triton.cdiv(N, 64),)](db_rows, db, M, N, BLOCK_N=64)\n",
    "        dw = torch.zeros((N,), dtype=weight.dtype, device=x.device)\n"
    "        db = torch.zeros((N,), dtype=weight.dtype, device=x.device)\n")

# planted backward -> the failure class it must get (with the static policy on)
PLANTED = {
    "last_row_wrong": (LAST_ROW_WRONG, "wrong_gradient"),
    "zero_bias_grad": (ZERO_BIAS_GRAD, "wrong_gradient"),
    "dx_missing_a_term": (DX_MISSING_A_TERM, "wrong_gradient"),
    "aliases_dy": (ALIASES_DY, "aliasing"),
    "mutates_dy": (MUTATES_DY, "input_mutation"),
    "missing_weight_grad": (MISSING_WEIGHT_GRAD, "wrong_gradient"),
    "torch_in_backward": (TORCH_IN_BACKWARD, "static"),
    "no_backward_kernel": (NO_BACKWARD_KERNEL, "no_kernel"),
}
