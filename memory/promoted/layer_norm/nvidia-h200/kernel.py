"""LayerNorm candidate, forward and backward

Generated from the layer_norm template. Parameters: ROWS_PER_PROGRAM=2, NUM_WARPS=1, SINGLE_TILE=True, CHUNK_N=256, PERSISTENT=True, PROGRAMS_PER_SM=16, PREFETCH=True, SCALE_EARLY=True, NUM_STAGES=1, EVICTION='', STORE_CACHE='', CONST_WIDTH=True, BWD_TILE=2048, BWD_PROGRAMS_PER_SM=2, BWD_WARPS=0, SUM_BLOCK_G=64, SUM_BLOCK_N=32
"""
import math
import typing

import torch
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


@triton.jit
def _ln_load_tile(X, tile, M, stride_x, cols, col_mask, ROWS: tl.constexpr, INDEX_64: tl.constexpr,
                  EVICTION: tl.constexpr):
    """Rows [tile * ROWS, tile * ROWS + ROWS) of X as one masked [ROWS, BLOCK_N] tile, in X's dtype."""
    rows, mask = _row_tile(tile, M, col_mask, ROWS, INDEX_64)
    return tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0, eviction_policy=EVICTION)


@triton.jit
def _ln_finish_tile(x, w, b, tile, W, B, Y, M, N, stride_y, eps, cols, col_mask, ROWS: tl.constexpr,
                    INDEX_64: tl.constexpr, STORE_CACHE: tl.constexpr, SCALE_EARLY: tl.constexpr):
    """Normalise a tile loaded by _ln_load_tile and store it to the same rows of Y."""
    rows, mask = _row_tile(tile, M, col_mask, ROWS, INDEX_64)
    xc, rstd = _row_center(x.to(tl.float32), mask, N, eps)
    if not SCALE_EARLY:
        # loaded late: held across the reductions they cost registers (a profile on H100 showed 128 per
        # thread and 25% occupancy for 4-row tiles), and a persistent program re-reads them from L1
        w, b = _row_scale_shift(W, B, cols, col_mask)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask,
             cache_modifier=STORE_CACHE)


@triton.jit
def _layer_norm_fwd_kernel(
    X,          # [M, N] input, rows stride_x apart, columns contiguous
    W,          # [N] scale
    B,          # [N] shift
    Y,          # [M, N] output, rows stride_y apart, columns contiguous
    stride_x,   # elements between rows of X
    stride_y,   # elements between rows of Y
    M,          # rows
    N,          # width
    eps,        # added to the variance
    BLOCK_N: tl.constexpr,      # columns per tile: next_pow2(N) for one tile, else the chunk width
    ROWS: tl.constexpr,         # rows per tile
    SINGLE_TILE: tl.constexpr,  # the whole row in one masked tile (x read once) or a chunked loop
    PERSISTENT: tl.constexpr,   # fewer programs than tiles, each striding over tiles, or one tile each
    PREFETCH: tl.constexpr,     # persistent single tile: load the next tile before normalising this one
    SCALE_EARLY: tl.constexpr,  # single tile: scale and shift loaded once per program, before any tile
    EVICTION: tl.constexpr,     # cache hint for the loads of x: "" (default) or "evict_first" (streamed once)
    STORE_CACHE: tl.constexpr,  # cache modifier of the stores of y: "" (default) or ".cs" (streamed)
    WIDTH: tl.constexpr,        # N baked in as a compile-time constant, or 0 to read it at run time
    INDEX_64: tl.constexpr,     # offsets in int64, needed only past 2**31 elements (int32 saves registers)
):
    if WIDTH > 0:
        N = WIDTH  # a constant width lets the compiler fold the column mask and the divisions
    pid = tl.program_id(0)
    step = tl.num_programs(0)
    n_tiles = tl.cdiv(M, ROWS)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    if SINGLE_TILE:
        if SCALE_EARLY:
            # loaded once, their latency overlapping the first tile's: what torch.compile's kernel does
            w, b = _row_scale_shift(W, B, cols, col_mask)
        else:
            w, b = 0.0, 0.0  # placeholders: each tile loads them after its reductions
        if PREFETCH:
            # the next tile's load is in flight while this one is reduced and stored: a warp keeps
            # memory busy across its own arithmetic instead of relying on other warps to cover it
            x = _ln_load_tile(X, pid, M, stride_x, cols, col_mask, ROWS, INDEX_64, EVICTION)
            for tile in range(pid, n_tiles, step):
                x_next = _ln_load_tile(X, tile + step, M, stride_x, cols, col_mask, ROWS, INDEX_64, EVICTION)
                _ln_finish_tile(x, w, b, tile, W, B, Y, M, N, stride_y, eps, cols, col_mask, ROWS, INDEX_64,
                                STORE_CACHE, SCALE_EARLY)
                x = x_next
        elif PERSISTENT:
            for tile in range(pid, n_tiles, step):
                x = _ln_load_tile(X, tile, M, stride_x, cols, col_mask, ROWS, INDEX_64, EVICTION)
                _ln_finish_tile(x, w, b, tile, W, B, Y, M, N, stride_y, eps, cols, col_mask, ROWS, INDEX_64,
                                STORE_CACHE, SCALE_EARLY)
        else:
            # straight-line code, no loop: measured about 1% faster than a loop of one iteration
            x = _ln_load_tile(X, pid, M, stride_x, cols, col_mask, ROWS, INDEX_64, EVICTION)
            _ln_finish_tile(x, w, b, pid, W, B, Y, M, N, stride_y, eps, cols, col_mask, ROWS, INDEX_64,
                            STORE_CACHE, SCALE_EARLY)
    else:
        for tile in range(pid, n_tiles, step):
            rows = tile * ROWS + tl.arange(0, ROWS)
            row_mask = rows < M
            if INDEX_64:
                rows = rows.to(tl.int64)
            # pass 1: shifted sums (shift by the row's first element keeps E[x^2]-E[x]^2 well conditioned)
            shift = tl.load(X + rows * stride_x, mask=row_mask, other=0.0).to(tl.float32)
            acc = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
            acc_sq = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                c = start + cols
                mask = row_mask[:, None] & (c < N)[None, :]
                x = tl.load(X + rows[:, None] * stride_x + c[None, :], mask=mask, other=0.0).to(tl.float32)
                xs = tl.where(mask, x - shift[:, None], 0.0)
                acc += xs
                acc_sq += xs * xs
            mean_s = tl.sum(acc, axis=1) / N
            var = tl.maximum(tl.sum(acc_sq, axis=1) / N - mean_s * mean_s, 0.0)
            mean = mean_s + shift
            rstd = tl.rsqrt(var + eps)
            # pass 2: normalise; the row comes back from L2
            for start in range(0, N, BLOCK_N):
                c = start + cols
                cmask = c < N
                mask = row_mask[:, None] & cmask[None, :]
                x = tl.load(X + rows[:, None] * stride_x + c[None, :], mask=mask, other=0.0,
                            eviction_policy=EVICTION).to(tl.float32)
                wc = tl.load(W + c, mask=cmask, other=0.0).to(tl.float32)
                bc = tl.load(B + c, mask=cmask, other=0.0).to(tl.float32)
                y = (x - mean[:, None]) * rstd[:, None] * wc[None, :] + bc[None, :]
                tl.store(Y + rows[:, None] * stride_y + c[None, :], y.to(Y.dtype.element_ty), mask=mask,
                         cache_modifier=STORE_CACHE)


def _layer_norm_fwd(x, weight, bias, eps, ROWS_PER_PROGRAM, NUM_WARPS, SINGLE_TILE, CHUNK_N,
                    PERSISTENT, PROGRAMS_PER_SM, PREFETCH, SCALE_EARLY, NUM_STAGES, EVICTION, STORE_CACHE,
                    CONST_WIDTH):
    """Validate, allocate, launch. Parameters in capitals are the template's knobs."""
    if x.dim() != 2 or weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise ValueError(f"layer_norm wants x [M, N], weight [N], bias [N]; got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(bias.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    M, N = x.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    block_n = triton.next_power_of_2(N) if SINGLE_TILE else min(CHUNK_N, triton.next_power_of_2(N))
    n_tiles = triton.cdiv(M, ROWS_PER_PROGRAM)
    grid = n_tiles
    if PERSISTENT:
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        grid = min(n_tiles, sms * PROGRAMS_PER_SM)
    _layer_norm_fwd_kernel[(grid,)](
        x, weight, bias, y, x.stride(0), y.stride(0), M, N, eps,
        BLOCK_N=block_n, ROWS=ROWS_PER_PROGRAM, SINGLE_TILE=SINGLE_TILE, PERSISTENT=grid < n_tiles,
        PREFETCH=PREFETCH and SINGLE_TILE and grid < n_tiles, SCALE_EARLY=SCALE_EARLY and SINGLE_TILE,
        EVICTION=EVICTION, STORE_CACHE=STORE_CACHE,
        WIDTH=N if CONST_WIDTH else 0, INDEX_64=max(M * x.stride(0), M * y.stride(0)) >= 2**31,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return y


@triton.jit
def _layer_norm_bwd_kernel(
    X,          # [M, N] forward input
    W,          # [N] scale
    DY,         # [M, N] gradient of the output, rows stride_dy apart
    DX,         # [M, N] gradient of the input (written), rows stride_x apart
    DW_PART,    # [G, N] float32 per-program partial sums of dy * xhat
    DB_PART,    # [G, N] float32 per-program partial sums of dy
    stride_x,
    stride_dy,
    M,
    N,
    eps,
    BLOCK_N: tl.constexpr,
    ROWS: tl.constexpr,     # rows per step: several rows' loads in flight hide memory latency
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    db = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
    # each program owns row tiles pid, pid + G, ...: its dw/db partials need no atomics
    for tile in range(pid, tl.cdiv(M, ROWS), tl.num_programs(0)):
        # int64 row index: row * stride overflows int32 past 2**31 elements
        rows = tl.cast(tile, tl.int64) * ROWS + tl.arange(0, ROWS)
        m2 = (rows < M)[:, None] & mask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / N
        xc = tl.where(m2, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)
        xhat = xc * rstd[:, None]
        wdy = w[None, :] * dy
        c1 = tl.sum(xhat * wdy, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(DX + rows[:, None] * stride_x + cols[None, :], dx.to(DX.dtype.element_ty), mask=m2)
        dw += dy * xhat
        db += dy
    tl.store(DW_PART + pid.to(tl.int64) * N + cols, tl.sum(dw, axis=0), mask=mask)
    tl.store(DB_PART + pid.to(tl.int64) * N + cols, tl.sum(db, axis=0), mask=mask)


@triton.jit
def _column_sum_kernel(
    PART,       # [G, N] float32 partial sums
    OUT,        # [N] result, in the parameter's dtype
    G,
    N,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, G, BLOCK_G):
        rows = start + tl.arange(0, BLOCK_G)
        mask = (rows < G)[:, None] & (cols < N)[None, :]
        acc += tl.sum(tl.load(PART + rows[:, None] * N + cols[None, :], mask=mask, other=0.0), axis=0)
    tl.store(OUT + cols, acc.to(OUT.dtype.element_ty), mask=cols < N)


def bwd_layout(M, N, sms, tile, programs_per_sm, warps):
    """(BLOCK_N, rows per step, warps, programs) of the LayerNorm backwards: row tiles of about `tile`
    elements (at 2048: 4 rows of 384 or 512, 2 of 768 or 1024) and `programs_per_sm` programs an SM, so each
    SM keeps several rows' loads in flight while the partial sums stay few (that many rows of N floats per
    SM); `warps` 0 picks 4 up to 2048 elements a tile and 8 above."""
    block_n = triton.next_power_of_2(N)
    rows = max(1, min(8, tile // block_n))
    if warps == 0:
        warps = 4 if block_n * rows <= 2048 else 8
    groups = max(1, min(triton.cdiv(M, rows), programs_per_sm * sms))
    return block_n, rows, warps, groups


def _layer_norm_bwd(dy, x, weight, eps, BWD_TILE, BWD_PROGRAMS_PER_SM, BWD_WARPS, SUM_BLOCK_G, SUM_BLOCK_N):
    """dx, dweight, dbias. Parameters in capitals are the backward's template knobs: the row tile and
    programs per SM of the first pass (dx and per-program partial sums, no atomics), and the column strips
    of the second (SUM_BLOCK_N columns a program, SUM_BLOCK_G partial rows a step)."""
    M, N = x.shape
    x = x.contiguous()
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
    block_n, rows, warps, groups = bwd_layout(M, N, sms, BWD_TILE, BWD_PROGRAMS_PER_SM, BWD_WARPS)
    dw_part = torch.empty((groups, N), dtype=torch.float32, device=x.device)
    db_part = torch.empty((groups, N), dtype=torch.float32, device=x.device)
    _layer_norm_bwd_kernel[(groups,)](x, weight, dy, dx, dw_part, db_part, x.stride(0), dy.stride(0),
                                      M, N, eps, BLOCK_N=block_n, ROWS=rows, num_warps=warps)
    dw = torch.empty_like(weight)
    db = torch.empty_like(weight)
    grid = (triton.cdiv(N, SUM_BLOCK_N),)
    _column_sum_kernel[grid](dw_part, dw, groups, N, BLOCK_G=SUM_BLOCK_G, BLOCK_N=SUM_BLOCK_N)
    _column_sum_kernel[grid](db_part, db, groups, N, BLOCK_G=SUM_BLOCK_G, BLOCK_N=SUM_BLOCK_N)
    return dx, dw, db


PARAMS = {
    'ROWS_PER_PROGRAM': 2,
    'NUM_WARPS': 1,
    'SINGLE_TILE': True,
    'CHUNK_N': 256,
    'PERSISTENT': True,
    'PROGRAMS_PER_SM': 16,
    'PREFETCH': True,
    'SCALE_EARLY': True,
    'NUM_STAGES': 1,
    'EVICTION': '',
    'STORE_CACHE': '',
    'CONST_WIDTH': True,
}


BWD_PARAMS = {
    'BWD_TILE': 2048,
    'BWD_PROGRAMS_PER_SM': 2,
    'BWD_WARPS': 0,
    'SUM_BLOCK_G': 64,
    'SUM_BLOCK_N': 32,
}


class LayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps, params, bwd_params):
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        ctx.bwd_params = bwd_params
        return _layer_norm_fwd(x, weight, bias, eps, **params)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx, dw, db = _layer_norm_bwd(dy, x, weight, ctx.eps, **ctx.bwd_params)
        return dx, dw, db, None, None, None


def layer_norm(x, weight, bias, eps):
    return LayerNormFunction.apply(x, weight, bias, eps, {**PARAMS}, {**BWD_PARAMS})
