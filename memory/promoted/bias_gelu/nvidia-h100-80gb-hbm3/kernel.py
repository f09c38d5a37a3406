"""Bias + tanh GELU forward candidate

Generated from the bias_gelu template. Parameters: LAYOUT='rows', BLOCK_M=2, BLOCK_N=1024, FLAT_BLOCK=4096, SINGLE_TILE=False, NUM_WARPS=4, TANH='sigmoid', EVICTION='', PERSISTENT=False, PROGRAMS_PER_SM=4, CONST_WIDTH=False
"""
import math
import typing

import torch
import triton
import triton.language as tl


@triton.jit
def _gelu_tanh(v, TANH: tl.constexpr):
    """gelu_tanh of a float32 tile. TANH picks the formula; all three are the same function."""
    k0 = 0.7978845608028654    # sqrt(2/pi)
    k1 = 0.035677408136300125  # sqrt(2/pi) * 0.044715
    if TANH == "sigmoid":
        # 0.5 (1 + tanh(u)) = sigmoid(2u); the library sigmoid tends to 0 or 1, never overflows to NaN
        y = v * tl.sigmoid(2.0 * v * (k0 + k1 * v * v))
    elif TANH == "exp2":
        # the same with the constants folded into one exp2: v / (1 + 2^(-2u log2 e)); for very negative v
        # the power is inf and v / inf = -0, which is the limit
        c0 = -2.302208198144325    # -2 sqrt(2/pi) log2(e)
        c1 = -0.1029432395800235   # -2 sqrt(2/pi) 0.044715 log2(e)
        y = v / (1.0 + tl.math.exp2(v * (c0 + c1 * v * v)))
    else:
        # the textbook form, tanh(|u|) = (1 - e) / (1 + e) with e = exp(-2|u|) <= 1: no overflow
        u = v * (k0 + k1 * v * v)
        e = tl.exp(-2.0 * tl.abs(u))
        t = (1.0 - e) / (1.0 + e)
        t = tl.where(u < 0.0, -t, t)
        y = 0.5 * v * (1.0 + t)
    return y


@triton.jit
def _bias_gelu_fwd_kernel(
    X,          # [M, N] input (the linear's output without bias), rows stride_x apart, columns contiguous
    B,          # [N] bias
    Y,          # [M, N] output, rows stride_y apart, columns contiguous
    stride_x,   # elements between rows of X
    stride_y,   # elements between rows of Y
    M,          # rows
    N,          # width
    BLOCK_M: tl.constexpr,      # rows per tile (2-D tiles)
    BLOCK_N: tl.constexpr,      # columns per tile (2-D tiles): next_pow2(N) when SINGLE_TILE
    BLOCK: tl.constexpr,        # elements per tile (FLAT)
    FLAT: tl.constexpr,         # 1-D tiles over the contiguous tensor, bias column = offset % N
    SINGLE_TILE: tl.constexpr,  # a tile spans whole rows: the bias is loaded once per program
    TANH: tl.constexpr,         # formula of the GELU: "sigmoid", "exp2" or "tanh"
    EVICTION: tl.constexpr,     # cache hint for the loads of x: "" (default) or "evict_first" (streamed once)
    WIDTH: tl.constexpr,        # N baked in as a compile-time constant, or 0 to read it at run time
    INDEX_64: tl.constexpr,     # offsets in int64, needed only past 2**31 elements (int32 saves registers)
):
    if WIDTH > 0:
        N = WIDTH  # a constant width folds the column mask and turns offset % N into multiplies
    pid = tl.program_id(0)
    if FLAT:
        total = M * N
        n_tiles = tl.cdiv(total, BLOCK)
        # one iteration per program unless the grid is persistent (fewer programs than tiles)
        for tile in range(pid, n_tiles, tl.num_programs(0)):
            first = tile
            if INDEX_64:
                first = tl.cast(tile, tl.int64)  # tile * BLOCK overflows int32 past 2**31 elements
            offs = first * BLOCK + tl.arange(0, BLOCK)
            mask = offs < total
            x = tl.load(X + offs, mask=mask, other=0.0, eviction_policy=EVICTION).to(tl.float32)
            b = tl.load(B + offs % N, mask=mask, other=0.0).to(tl.float32)
            y = _gelu_tanh(x + b, TANH)
            tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)
    else:
        n_col_tiles = tl.cdiv(N, BLOCK_N)
        n_tiles = tl.cdiv(M, BLOCK_M) * n_col_tiles
        r = tl.arange(0, BLOCK_M)
        c = tl.arange(0, BLOCK_N)
        if SINGLE_TILE:
            # hoisted: a persistent program reuses this bias for every tile it visits
            b_row = tl.load(B + c, mask=c < N, other=0.0).to(tl.float32)
        for tile in range(pid, n_tiles, tl.num_programs(0)):
            rows = (tile // n_col_tiles) * BLOCK_M + r
            cols = (tile % n_col_tiles) * BLOCK_N + c
            row_mask = rows < M
            col_mask = cols < N
            if INDEX_64:
                rows = rows.to(tl.int64)  # rows * stride overflows int32 past 2**31 elements
            mask = row_mask[:, None] & col_mask[None, :]
            x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0,
                        eviction_policy=EVICTION).to(tl.float32)
            if SINGLE_TILE:
                b = b_row
            else:
                b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
            y = _gelu_tanh(x + b[None, :], TANH)
            tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)


def _bias_gelu_fwd(x, bias, LAYOUT, BLOCK_M, BLOCK_N, FLAT_BLOCK, SINGLE_TILE, NUM_WARPS, TANH, EVICTION,
                   PERSISTENT, PROGRAMS_PER_SM, CONST_WIDTH):
    """Validate, allocate, launch. Parameters in capitals are the template's knobs."""
    if x.dim() != 2 or bias.shape != (x.shape[1],):
        raise ValueError(f"bias_gelu wants x [M, N] and bias [N]; got {tuple(x.shape)}, {tuple(bias.shape)}")
    flat = LAYOUT == "flat"
    # flat offsets need the whole tensor dense; 2-D tiles only need contiguous columns
    if (flat and not x.is_contiguous()) or x.stride(1) != 1:
        x = x.contiguous()
    if not bias.is_contiguous():
        bias = bias.contiguous()
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    if flat:
        n_tiles = triton.cdiv(M * N, FLAT_BLOCK)
        block_n = 1
    else:
        block_n = triton.next_power_of_2(N) if SINGLE_TILE else min(BLOCK_N, triton.next_power_of_2(N))
        n_tiles = triton.cdiv(M, BLOCK_M) * triton.cdiv(N, block_n)
    grid = n_tiles
    if PERSISTENT:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        grid = min(n_tiles, sms * PROGRAMS_PER_SM)
    _bias_gelu_fwd_kernel[(grid,)](
        x, bias, y, x.stride(0), y.stride(0), M, N,
        BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK=FLAT_BLOCK, FLAT=flat, SINGLE_TILE=SINGLE_TILE and not flat,
        TANH=TANH, EVICTION=EVICTION, WIDTH=N if CONST_WIDTH else 0,
        INDEX_64=max(M * x.stride(0), M * y.stride(0)) >= 2**31,
        num_warps=NUM_WARPS,
    )
    return y


PARAMS = {
    'LAYOUT': 'rows',
    'BLOCK_M': 2,
    'BLOCK_N': 1024,
    'FLAT_BLOCK': 4096,
    'SINGLE_TILE': False,
    'NUM_WARPS': 4,
    'TANH': 'sigmoid',
    'EVICTION': '',
    'PERSISTENT': False,
    'PROGRAMS_PER_SM': 4,
    'CONST_WIDTH': False,
}


def bias_gelu(x, bias):
    return _bias_gelu_fwd(x, bias, **PARAMS)
