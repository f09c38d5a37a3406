"""Residual add + LayerNorm forward candidate

Generated from the add_layer_norm template. Parameters: ROWS_PER_PROGRAM=4, NUM_WARPS=1, SINGLE_TILE=True, CHUNK_N=256, PERSISTENT=True, PROGRAMS_PER_SM=16, NUM_STAGES=3, EVICTION='', CONST_WIDTH=True
"""
import math
import typing

import torch
import triton
import triton.language as tl


@triton.jit
def _add_layer_norm_fwd_kernel(
    X,          # [M, N] input, rows stride_x apart, columns contiguous
    R,          # [M, N] residual added to X, rows stride_r apart, columns contiguous
    W,          # [N] scale
    B,          # [N] shift
    S,          # [M, N] output X + R (the new residual stream), rows stride_s apart
    Y,          # [M, N] output layer_norm(X + R), rows stride_y apart
    stride_x,   # elements between rows of X
    stride_r,   # elements between rows of R
    stride_s,   # elements between rows of S
    stride_y,   # elements between rows of Y
    M,          # rows
    N,          # width
    eps,        # added to the variance
    BLOCK_N: tl.constexpr,      # columns per tile: next_pow2(N) for one tile, else the chunk width
    ROWS: tl.constexpr,         # rows per tile
    SINGLE_TILE: tl.constexpr,  # the whole row in one masked tile (inputs read once) or a chunked loop
    EVICTION: tl.constexpr,     # cache hint for the last loads of X and R: "" or "evict_first" (streamed)
    WIDTH: tl.constexpr,        # N baked in as a compile-time constant, or 0 to read it at run time
    INDEX_64: tl.constexpr,     # offsets in int64, needed only past 2**31 elements (int32 saves registers)
):
    if WIDTH > 0:
        N = WIDTH  # a constant width lets the compiler fold the column mask and the divisions
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(M, ROWS)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    # one iteration per program unless the grid is persistent (fewer programs than tiles)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        rows = tile * ROWS + tl.arange(0, ROWS)
        row_mask = rows < M
        if INDEX_64:
            rows = rows.to(tl.int64)  # rows * stride would overflow int32 past 2**31 elements
        if SINGLE_TILE:
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0,
                        eviction_policy=EVICTION).to(tl.float32)
            r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0,
                        eviction_policy=EVICTION).to(tl.float32)
            s = x + r
            # stored before the reductions so the write drains while they run
            tl.store(S + rows[:, None] * stride_s + cols[None, :], s.to(S.dtype.element_ty), mask=mask)
            mean = tl.sum(s, axis=1) / N
            sc = tl.where(mask, s - mean[:, None], 0.0)
            var = tl.sum(sc * sc, axis=1) / N
            rstd = 1.0 / tl.sqrt(var + eps)
            # scale and shift loaded after the reductions: held across them they cost registers
            w = tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)
            b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
            y = sc * rstd[:, None] * w[None, :] + b[None, :]
            tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
        else:
            # pass 1: shifted sums of x + r (shifting by the row's first sum keeps E[s^2]-E[s]^2 well
            # conditioned on a residual stream with a large offset)
            shift = (tl.load(X + rows * stride_x, mask=row_mask, other=0.0).to(tl.float32)
                     + tl.load(R + rows * stride_r, mask=row_mask, other=0.0).to(tl.float32))
            acc = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
            acc_sq = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                c = start + cols
                mask = row_mask[:, None] & (c < N)[None, :]
                x = tl.load(X + rows[:, None] * stride_x + c[None, :], mask=mask, other=0.0).to(tl.float32)
                r = tl.load(R + rows[:, None] * stride_r + c[None, :], mask=mask, other=0.0).to(tl.float32)
                ss = tl.where(mask, x + r - shift[:, None], 0.0)
                acc += ss
                acc_sq += ss * ss
            mean_s = tl.sum(acc, axis=1) / N
            var = tl.maximum(tl.sum(acc_sq, axis=1) / N - mean_s * mean_s, 0.0)
            mean = mean_s + shift
            rstd = 1.0 / tl.sqrt(var + eps)
            # pass 2: x and r come back from L2 (not s from memory: a program reading its own stores
            # would need a barrier, and y stays computed from the unrounded sum); s and y are written
            for start in range(0, N, BLOCK_N):
                c = start + cols
                cmask = c < N
                mask = row_mask[:, None] & cmask[None, :]
                x = tl.load(X + rows[:, None] * stride_x + c[None, :], mask=mask, other=0.0,
                            eviction_policy=EVICTION).to(tl.float32)
                r = tl.load(R + rows[:, None] * stride_r + c[None, :], mask=mask, other=0.0,
                            eviction_policy=EVICTION).to(tl.float32)
                s = x + r
                tl.store(S + rows[:, None] * stride_s + c[None, :], s.to(S.dtype.element_ty), mask=mask)
                wc = tl.load(W + c, mask=cmask, other=0.0).to(tl.float32)
                bc = tl.load(B + c, mask=cmask, other=0.0).to(tl.float32)
                y = (s - mean[:, None]) * rstd[:, None] * wc[None, :] + bc[None, :]
                tl.store(Y + rows[:, None] * stride_y + c[None, :], y.to(Y.dtype.element_ty), mask=mask)


def _add_layer_norm_fwd(x, residual, weight, bias, eps, ROWS_PER_PROGRAM, NUM_WARPS, SINGLE_TILE, CHUNK_N,
                        PERSISTENT, PROGRAMS_PER_SM, NUM_STAGES, EVICTION, CONST_WIDTH):
    """Validate, allocate, launch. Parameters in capitals are the template's knobs."""
    if (x.dim() != 2 or residual.shape != x.shape or weight.shape != (x.shape[1],)
            or bias.shape != (x.shape[1],)):
        raise ValueError(f"add_layer_norm wants x [M, N], residual [M, N], weight [N], bias [N]; got "
                         f"{tuple(x.shape)}, {tuple(residual.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
    if residual.dtype != x.dtype:
        raise ValueError(f"residual is {residual.dtype}, x is {x.dtype}; both must have one dtype")
    if x.stride(1) != 1:
        x = x.contiguous()
    if residual.stride(1) != 1:
        residual = residual.contiguous()
    M, N = x.shape
    s = torch.empty((M, N), dtype=x.dtype, device=x.device)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return s, y
    block_n = triton.next_power_of_2(N) if SINGLE_TILE else min(CHUNK_N, triton.next_power_of_2(N))
    n_tiles = triton.cdiv(M, ROWS_PER_PROGRAM)
    grid = n_tiles
    if PERSISTENT:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        grid = min(n_tiles, sms * PROGRAMS_PER_SM)
    largest = max(M * x.stride(0), M * residual.stride(0), M * N)
    _add_layer_norm_fwd_kernel[(grid,)](
        x, residual, weight, bias, s, y, x.stride(0), residual.stride(0), s.stride(0), y.stride(0),
        M, N, eps,
        BLOCK_N=block_n, ROWS=ROWS_PER_PROGRAM, SINGLE_TILE=SINGLE_TILE, EVICTION=EVICTION,
        WIDTH=N if CONST_WIDTH else 0, INDEX_64=largest >= 2**31,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return s, y


PARAMS = {
    'ROWS_PER_PROGRAM': 4,
    'NUM_WARPS': 1,
    'SINGLE_TILE': True,
    'CHUNK_N': 256,
    'PERSISTENT': True,
    'PROGRAMS_PER_SM': 16,
    'NUM_STAGES': 3,
    'EVICTION': '',
    'CONST_WIDTH': True,
}


def add_layer_norm(x, residual, weight, bias, eps):
    return _add_layer_norm_fwd(x, residual, weight, bias, eps, **PARAMS)
