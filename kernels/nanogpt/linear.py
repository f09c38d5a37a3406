"""The model's biased Linears: cuBLAS matmuls, with the bias gradient summed by a Triton kernel.

PyTorch's backward of a biased Linear sums dy over its rows with a generic reduction; in a shakespeare-char
training step those sums of c_attn, attn.c_proj and mlp.c_proj took 8.5% of the device time on an H200.
Here each program sums a strip of columns over a band of rows (several rows a step, so many loads are in
flight) into float32 partials, and a second pass adds the partials: deterministic, no atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import custom_op

from ..layer_norm import BWD_SEED_PARAMS, _column_sum_kernel
from .ops import NAMESPACE


@triton.jit
def _bias_grad_partial_kernel(
    DY,         # [M, N] gradient of the Linear's output, rows stride_dy apart
    PART,       # [G, N] float32 partial column sums (written), one row per row band
    M,
    N,
    stride_dy,
    ROWS_PER_BAND,
    BLOCK_M: tl.constexpr,  # rows a step
    BLOCK_N: tl.constexpr,  # columns of this program's strip
):
    band = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    start = band * ROWS_PER_BAND
    stop = tl.minimum(start + ROWS_PER_BAND, M)
    for row0 in range(start, stop, BLOCK_M):
        rows = tl.cast(row0, tl.int64) + tl.arange(0, BLOCK_M)
        mask = (rows < stop)[:, None] & col_ok[None, :]
        acc += tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(PART + tl.cast(band, tl.int64) * N + cols, tl.sum(acc, axis=0), mask=col_ok)


_BLOCK_M = 32
_BLOCK_N = 128


def bias_grad_sum(dy: Tensor, dtype: torch.dtype) -> Tensor:
    """dy [M, N] summed over its rows, in float32 accumulators, returned in `dtype`."""
    M, N = dy.shape
    if dy.stride(1) != 1:
        dy = dy.contiguous()
    out = torch.empty((N,), dtype=dtype, device=dy.device)
    sms = torch.cuda.get_device_properties(dy.device).multi_processor_count if dy.is_cuda else 4
    strips = triton.cdiv(N, _BLOCK_N)
    # about four programs an SM over all strips; at least one band of BLOCK_M rows each
    bands = max(1, min(triton.cdiv(M, _BLOCK_M), (4 * sms) // strips))
    rows_per_band = triton.cdiv(triton.cdiv(max(M, 1), bands), _BLOCK_M) * _BLOCK_M
    bands = max(1, triton.cdiv(M, rows_per_band))
    part = torch.empty((bands, N), dtype=torch.float32, device=dy.device)
    if M > 0:
        _bias_grad_partial_kernel[(bands, strips)](dy, part, M, N, dy.stride(0), rows_per_band,
                                                   BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, num_warps=4)
    else:
        part.zero_()
    sum_g, sum_n = BWD_SEED_PARAMS["SUM_BLOCK_G"], BWD_SEED_PARAMS["SUM_BLOCK_N"]
    _column_sum_kernel[(triton.cdiv(N, sum_n),)](part, out, bands, N, BLOCK_G=sum_g, BLOCK_N=sum_n)
    return out


@custom_op(f"{NAMESPACE}::bias_grad", mutates_args=())
def _bias_grad(dy: Tensor, dtype: torch.dtype) -> Tensor:
    return bias_grad_sum(dy, dtype)


@_bias_grad.register_fake
def _(dy, dtype):
    return dy.new_empty((dy.shape[1],), dtype=dtype)


class LinearFunction(torch.autograd.Function):
    """y = x @ weight.T + bias with x [M, K] in the activations' dtype and float32 (or any) master weights."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        # autocast's dtype when it is on (it would cast inside addmm anyway), so the saved tensors match dy's
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        x, w = x.to(dtype), weight.to(dtype)
        y = torch.addmm(bias.to(dtype), x, w.t())
        ctx.save_for_backward(x, w)
        ctx.dtypes = (weight.dtype, bias.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx = dy @ w if ctx.needs_input_grad[0] else None
        dw = (dy.t() @ x).to(ctx.dtypes[0]) if ctx.needs_input_grad[1] else None
        db = _bias_grad(dy, ctx.dtypes[1]) if ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [M, K] -> [M, N]; without a bias, PyTorch's own Linear."""
    if bias is None:
        return torch.nn.functional.linear(x, weight)
    return LinearFunction.apply(x, weight, bias)
