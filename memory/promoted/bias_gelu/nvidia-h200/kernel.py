"""Bias + tanh GELU candidate, forward and backward

Generated from the bias_gelu template. Parameters: LAYOUT='rows', BLOCK_M=2, BLOCK_N=1024, FLAT_BLOCK=4096, SINGLE_TILE=False, NUM_WARPS=4, TANH='sigmoid', EVICTION='', PERSISTENT=False, PROGRAMS_PER_SM=4, CONST_WIDTH=False, BWD_BLOCK_M=8, BWD_BLOCK_N=512, BWD_WARPS=4, BWD_PROGRAMS_PER_SM=4, SUM_BLOCK_G=16, SUM_BLOCK_N=128
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


@triton.jit
def _bias_gelu_bwd_kernel(
    X,          # [M, N] forward input (without bias), rows stride_x apart
    B,          # [N] bias
    DY,         # [M, N] gradient of the output, rows stride_dy apart
    DX,         # [M, N] gradient of x (written), rows stride_dx apart
    DB_PART,    # [G, N] float32 per-row-group partial sums of dx, G = num_programs(0)
    stride_x,
    stride_dy,
    stride_dx,
    M,
    N,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    k0 = 0.7978845608028654    # sqrt(2/pi)
    k1 = 0.035677408136300125  # sqrt(2/pi) * 0.044715
    c0 = -2.302208198144325    # -2 sqrt(2/pi) log2(e)
    c1 = -0.1029432395800235   # -2 sqrt(2/pi) 0.044715 log2(e)
    group = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    b = tl.load(B + cols, mask=col_mask, other=0.0).to(tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    # each group owns row tiles group, group + G, ...: its partial sums need no atomics, and the column
    # sum below adds them in a fixed order, so dbias is the same on every call
    for tile in range(group, tl.cdiv(M, BLOCK_M), tl.num_programs(0)):
        # int64 rows: row * stride overflows int32 past 2**31 elements
        rows = (tile * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        mask = (rows < M)[:, None] & col_mask[None, :]
        v = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        v += b[None, :]
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        # y = v s with s = sigmoid(2u): dy/dv = s + v * 2 s (1 - s) * du/dv, du/dv = k0 + 3 k1 v^2
        s = 1.0 / (1.0 + tl.math.exp2(v * (c0 + c1 * v * v)))
        dv = s + 2.0 * v * s * (1.0 - s) * (k0 + 3.0 * k1 * v * v)
        dx = tl.where(mask, dy * dv, 0.0)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=mask)
        db += tl.sum(dx, axis=0)
    tl.store(DB_PART + group * N + cols, db, mask=col_mask)


@triton.jit
def _bias_grad_sum_kernel(
    PART,       # [G, N] float32 partial sums
    DB,         # [N] gradient of the bias (written), in the bias's dtype
    G,
    N,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_G, BLOCK_N], dtype=tl.float32)
    for start in range(0, G, BLOCK_G):
        groups = start + tl.arange(0, BLOCK_G)
        mask = (groups < G)[:, None] & (cols < N)[None, :]
        acc += tl.load(PART + groups[:, None] * N + cols[None, :], mask=mask, other=0.0)
    tl.store(DB + cols, tl.sum(acc, axis=0).to(DB.dtype.element_ty), mask=cols < N)


def _bias_gelu_bwd(dy, x, bias, BWD_BLOCK_M, BWD_BLOCK_N, BWD_WARPS, BWD_PROGRAMS_PER_SM, SUM_BLOCK_G,
                   SUM_BLOCK_N):
    """(d x, d bias) from the output's gradient; x's columns must be contiguous. Parameters in capitals are
    the backward's template knobs:
    BWD_BLOCK_M         rows of a tile of the first pass, which writes d x and per-group partial sums of it
    BWD_BLOCK_N         columns of that tile (the grid's second axis: one column strip each)
    BWD_WARPS           warps of the first pass
    BWD_PROGRAMS_PER_SM programs an SM of the first pass (row groups times column strips): more hide more
                        latency, but each row group adds a partial row for the second reduction
    SUM_BLOCK_G         partial rows the second pass (the column sums of the partials) adds a step
    SUM_BLOCK_N         columns a program of the second pass owns
    """
    M, N = x.shape
    dy = dy.contiguous()
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    db = torch.empty_like(bias)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
    col_tiles = triton.cdiv(N, BWD_BLOCK_N)
    # enough groups to fill the GPU BWD_PROGRAMS_PER_SM programs an SM; fewer groups mean fewer partial rows
    groups = min(triton.cdiv(M, BWD_BLOCK_M), triton.cdiv(BWD_PROGRAMS_PER_SM * sms, col_tiles))
    part = torch.empty((groups, N), dtype=torch.float32, device=x.device)
    if groups > 0:
        _bias_gelu_bwd_kernel[(groups, col_tiles)](
            x, bias, dy, dx, part, x.stride(0), dy.stride(0), dx.stride(0), M, N,
            BLOCK_M=BWD_BLOCK_M, BLOCK_N=BWD_BLOCK_N, num_warps=BWD_WARPS)
    # a second launch rather than the last group of each strip summing the partials: that needs every
    # thread's stores of its partials published before one thread's counter atomic, and tl has no fence
    # for that (on an H200 such a fold returned a wrong dbias that changed from call to call). With no rows
    # there are no partials and the sum writes zeros
    _bias_grad_sum_kernel[(triton.cdiv(N, SUM_BLOCK_N),)](part, db, groups, N, BLOCK_G=SUM_BLOCK_G,
                                                           BLOCK_N=SUM_BLOCK_N)
    return dx, db


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


BWD_PARAMS = {
    'BWD_BLOCK_M': 8,
    'BWD_BLOCK_N': 512,
    'BWD_WARPS': 4,
    'BWD_PROGRAMS_PER_SM': 4,
    'SUM_BLOCK_G': 16,
    'SUM_BLOCK_N': 128,
}


class BiasGeluFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, params, bwd_params):
        ctx.save_for_backward(x, bias)
        ctx.bwd_params = bwd_params
        return _bias_gelu_fwd(x, bias, **params)

    @staticmethod
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        if x.stride(1) != 1:
            x = x.contiguous()
        dx, db = _bias_gelu_bwd(dy, x, bias, **ctx.bwd_params)
        return dx, db, None, None


def bias_gelu(x, bias):
    return BiasGeluFunction.apply(x, bias, {**PARAMS}, {**BWD_PARAMS})
