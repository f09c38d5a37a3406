"""Triton helpers shared by the row-wise normalisation kernels (layer_norm, add_layer_norm).

They are rendered into every candidate of those templates alongside the op's own kernels, so a
candidate file stays self-contained.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _row_tile(tile, M, col_mask, ROWS: tl.constexpr, INDEX_64: tl.constexpr):
    """Row indices of tile `tile` (ROWS rows) and the [ROWS, BLOCK_N] mask of its valid elements."""
    rows = tile * ROWS + tl.arange(0, ROWS)
    mask = (rows < M)[:, None] & col_mask[None, :]
    if INDEX_64:
        rows = rows.to(tl.int64)  # rows * stride would overflow int32 past 2**31 elements
    return rows, mask


@triton.jit
def _row_center(x, mask, N, eps):
    """x minus its row means (zero where masked) and the rows' 1/sqrt(variance + eps), in float32."""
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / N
    return xc, tl.rsqrt(var + eps)


@triton.jit
def _row_scale_shift(W, B, cols, col_mask):
    """Scale and shift of the row in float32."""
    w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
    return w, b
