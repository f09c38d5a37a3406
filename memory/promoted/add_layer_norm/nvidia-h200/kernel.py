"""Residual add + LayerNorm candidate, forward and backward

Generated from the add_layer_norm template. Parameters: ROWS_PER_PROGRAM=2, NUM_WARPS=1, SINGLE_TILE=True, CHUNK_N=256, PERSISTENT=True, PROGRAMS_PER_SM=16, PREFETCH=True, SCALE_EARLY=True, NUM_STAGES=3, EVICTION='', STORE_CACHE='', CONST_WIDTH=True, BWD_TILE=2048, BWD_PROGRAMS_PER_SM=2, BWD_WARPS=0, SUM_BLOCK_G=64, SUM_BLOCK_N=32
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
def _aln_load_tile(X, R, tile, M, stride_x, stride_r, cols, col_mask, ROWS: tl.constexpr,
                   INDEX_64: tl.constexpr, EVICTION: tl.constexpr):
    """Rows [tile * ROWS, tile * ROWS + ROWS) of X and of R as masked [ROWS, BLOCK_N] tiles, in their dtype."""
    rows, mask = _row_tile(tile, M, col_mask, ROWS, INDEX_64)
    x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0, eviction_policy=EVICTION)
    r = tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=mask, other=0.0, eviction_policy=EVICTION)
    return x, r


@triton.jit
def _aln_finish_tile(x, r, w, b, tile, W, B, S, Y, M, N, stride_s, stride_y, eps, cols, col_mask,
                     ROWS: tl.constexpr, INDEX_64: tl.constexpr, STORE_CACHE: tl.constexpr,
                     SCALE_EARLY: tl.constexpr):
    """Add the tiles loaded by _aln_load_tile, store the sum to S and its LayerNorm to Y."""
    rows, mask = _row_tile(tile, M, col_mask, ROWS, INDEX_64)
    s = x.to(tl.float32) + r.to(tl.float32)
    # stored before the reductions so the write drains while they run
    tl.store(S + rows[:, None] * stride_s + cols[None, :], s.to(S.dtype.element_ty), mask=mask,
             cache_modifier=STORE_CACHE)
    sc, rstd = _row_center(s, mask, N, eps)
    if not SCALE_EARLY:
        # loaded after the reductions: held across them they cost registers
        w, b = _row_scale_shift(W, B, cols, col_mask)
    y = sc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask,
             cache_modifier=STORE_CACHE)


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
    PERSISTENT: tl.constexpr,   # fewer programs than tiles, each striding over tiles, or one tile each
    PREFETCH: tl.constexpr,     # persistent single tile: load the next tile before finishing this one
    SCALE_EARLY: tl.constexpr,  # single tile: scale and shift loaded once per program, before any tile
    EVICTION: tl.constexpr,     # cache hint for the last loads of X and R: "" or "evict_first" (streamed)
    STORE_CACHE: tl.constexpr,  # cache modifier of the stores of S and Y: "" (default) or ".cs" (streamed)
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
            # the next tile's loads are in flight while this one is reduced and stored
            x, r = _aln_load_tile(X, R, pid, M, stride_x, stride_r, cols, col_mask, ROWS, INDEX_64, EVICTION)
            for tile in range(pid, n_tiles, step):
                x_next, r_next = _aln_load_tile(X, R, tile + step, M, stride_x, stride_r, cols, col_mask, ROWS,
                                                INDEX_64, EVICTION)
                _aln_finish_tile(x, r, w, b, tile, W, B, S, Y, M, N, stride_s, stride_y, eps, cols, col_mask, ROWS,
                                 INDEX_64, STORE_CACHE, SCALE_EARLY)
                x = x_next
                r = r_next
        elif PERSISTENT:
            for tile in range(pid, n_tiles, step):
                x, r = _aln_load_tile(X, R, tile, M, stride_x, stride_r, cols, col_mask, ROWS, INDEX_64, EVICTION)
                _aln_finish_tile(x, r, w, b, tile, W, B, S, Y, M, N, stride_s, stride_y, eps, cols, col_mask, ROWS,
                                 INDEX_64, STORE_CACHE, SCALE_EARLY)
        else:
            # straight-line code, no loop of one iteration
            x, r = _aln_load_tile(X, R, pid, M, stride_x, stride_r, cols, col_mask, ROWS, INDEX_64, EVICTION)
            _aln_finish_tile(x, r, w, b, pid, W, B, S, Y, M, N, stride_s, stride_y, eps, cols, col_mask, ROWS,
                             INDEX_64, STORE_CACHE, SCALE_EARLY)
    else:
        for tile in range(pid, n_tiles, step):
            rows = tile * ROWS + tl.arange(0, ROWS)
            row_mask = rows < M
            if INDEX_64:
                rows = rows.to(tl.int64)
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
            rstd = tl.rsqrt(var + eps)
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
                tl.store(S + rows[:, None] * stride_s + c[None, :], s.to(S.dtype.element_ty), mask=mask,
                         cache_modifier=STORE_CACHE)
                wc = tl.load(W + c, mask=cmask, other=0.0).to(tl.float32)
                bc = tl.load(B + c, mask=cmask, other=0.0).to(tl.float32)
                y = (s - mean[:, None]) * rstd[:, None] * wc[None, :] + bc[None, :]
                tl.store(Y + rows[:, None] * stride_y + c[None, :], y.to(Y.dtype.element_ty), mask=mask,
                         cache_modifier=STORE_CACHE)


def _add_layer_norm_fwd(x, residual, weight, bias, eps, ROWS_PER_PROGRAM, NUM_WARPS, SINGLE_TILE, CHUNK_N,
                        PERSISTENT, PROGRAMS_PER_SM, PREFETCH, SCALE_EARLY, NUM_STAGES, EVICTION, STORE_CACHE,
                        CONST_WIDTH):
    """Validate, allocate, launch. Parameters in capitals are the template's knobs."""
    if (x.dim() != 2 or residual.shape != x.shape or weight.shape != (x.shape[1],)
            or bias.shape != (x.shape[1],)):
        raise ValueError(f"add_layer_norm wants x [M, N], residual [M, N], weight [N], bias [N]; got "
                         f"{tuple(x.shape)}, {tuple(residual.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}")
    if not (x.dtype.is_floating_point and residual.dtype.is_floating_point):
        raise ValueError(f"add_layer_norm wants floating tensors; got x {x.dtype}, residual {residual.dtype}")
    if x.stride(1) != 1:
        x = x.contiguous()
    if residual.stride(1) != 1:
        residual = residual.contiguous()
    M, N = x.shape
    # the sum in the residual's dtype, the norm in x's: one dtype for both as the op's contract has it, or a
    # float32 residual stream with 16-bit branches, as mixed-precision training keeps them
    s = torch.empty((M, N), dtype=residual.dtype, device=x.device)
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
        BLOCK_N=block_n, ROWS=ROWS_PER_PROGRAM, SINGLE_TILE=SINGLE_TILE, PERSISTENT=grid < n_tiles,
        PREFETCH=PREFETCH and SINGLE_TILE and grid < n_tiles, SCALE_EARLY=SCALE_EARLY and SINGLE_TILE,
        EVICTION=EVICTION, STORE_CACHE=STORE_CACHE,
        WIDTH=N if CONST_WIDTH else 0, INDEX_64=largest >= 2**31,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return s, y


@triton.jit
def _add_layer_norm_bwd_kernel(
    S,          # [M, N] forward sum x + residual (the saved output), rows stride_s apart
    W,          # [N] scale
    DY,         # [M, N] gradient of y, rows stride_dy apart
    DS,         # [M, N] gradient of s, rows stride_ds apart (read only when HAS_DS)
    DX,         # [M, N] gradient of x and of residual alike (written, in s's dtype), rows stride_dx apart
    DX_LO,      # [M, N] the same gradient in x's narrower dtype (written only when HAS_LO), rows stride_dx apart
    DW_PART,    # [G, N] float32 per-program partial sums of dy * shat
    DB_PART,    # [G, N] float32 per-program partial sums of dy
    stride_s,
    stride_dy,
    stride_ds,
    stride_dx,
    M,
    N,
    eps,
    BLOCK_N: tl.constexpr,
    ROWS: tl.constexpr,         # rows per step: several rows' loads in flight hide memory latency
    HAS_DS: tl.constexpr,       # s has a gradient of its own (it is None when s feeds nothing)
    HAS_LO: tl.constexpr,       # x is narrower than the residual (bf16 into a float32 stream)
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
        s = tl.load(S + rows[:, None] * stride_s + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        mean = tl.sum(s, axis=1) / N
        sc = tl.where(m2, s - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(sc * sc, axis=1) / N + eps)
        shat = sc * rstd[:, None]
        wdy = w[None, :] * dy
        c1 = tl.sum(shat * wdy, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        dx = (wdy - (shat * c1[:, None] + c2[:, None])) * rstd[:, None]
        if HAS_DS:
            dx += tl.load(DS + rows[:, None] * stride_ds + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty), mask=m2)
        if HAS_LO:
            tl.store(DX_LO + rows[:, None] * stride_dx + cols[None, :], dx.to(DX_LO.dtype.element_ty), mask=m2)
        dw += dy * shat
        db += dy
    tl.store(DW_PART + pid.to(tl.int64) * N + cols, tl.sum(dw, axis=0), mask=mask)
    tl.store(DB_PART + pid.to(tl.int64) * N + cols, tl.sum(db, axis=0), mask=mask)


@triton.jit
def _column_sums_kernel(
    DW_PART,    # [G, N] float32 partial sums for the scale
    DB_PART,    # [G, N] float32 partial sums for the shift
    DW,         # [N] scale gradient, in the parameter's dtype
    DB,         # [N] shift gradient, in the parameter's dtype
    G,
    N,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc_w = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, G, BLOCK_G):
        rows = start + tl.arange(0, BLOCK_G)
        mask = (rows < G)[:, None] & (cols < N)[None, :]
        offs = rows[:, None] * N + cols[None, :]
        acc_w += tl.sum(tl.load(DW_PART + offs, mask=mask, other=0.0), axis=0)
        acc_b += tl.sum(tl.load(DB_PART + offs, mask=mask, other=0.0), axis=0)
    tl.store(DW + cols, acc_w.to(DW.dtype.element_ty), mask=cols < N)
    tl.store(DB + cols, acc_b.to(DB.dtype.element_ty), mask=cols < N)


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


def _add_layer_norm_bwd(ds, dy, s, weight, eps, x_dtype, BWD_TILE, BWD_PROGRAMS_PER_SM, BWD_WARPS, SUM_BLOCK_G,
                        SUM_BLOCK_N):
    """Gradients (d residual, d x, d weight, d bias) from the saved sum s; ds may be None. d x is d residual
    itself unless x_dtype (None: s's dtype) is narrower than s's dtype (a bf16 branch into a float32
    stream): then it is the same gradient rounded to x_dtype, written by the same pass.

    Parameters in capitals are the backward's template knobs, as in layer_norm's backward:
    BWD_TILE            elements of a row tile of the first pass (rows per step = BWD_TILE // next_pow2(N),
                        1 to 8), which writes d residual and per-program partial sums of d weight and d bias
    BWD_PROGRAMS_PER_SM programs an SM in the first pass: more hide more latency, but each adds a partial row
    BWD_WARPS           warps of the first pass; 0 picks 4 up to 2048 elements a tile and 8 above
    SUM_BLOCK_G         partial rows the second pass (the column sums of the partials) adds a step
    SUM_BLOCK_N         columns a program of the second pass owns
    """
    M, N = s.shape
    if dy.stride(1) != 1:
        dy = dy.contiguous()
    if ds is not None and ds.stride(1) != 1:
        ds = ds.contiguous()
    dx = torch.empty((M, N), dtype=s.dtype, device=s.device)
    dw = torch.empty_like(weight)
    db = torch.empty_like(weight)
    sms = torch.cuda.get_device_properties(s.device).multi_processor_count if s.is_cuda else 4
    block_n, rows, warps, groups = bwd_layout(M, N, sms, BWD_TILE, BWD_PROGRAMS_PER_SM, BWD_WARPS)
    dw_part = torch.empty((groups, N), dtype=torch.float32, device=s.device)
    db_part = torch.empty((groups, N), dtype=torch.float32, device=s.device)
    has_ds = ds is not None
    has_lo = x_dtype is not None and x_dtype != s.dtype
    dx_lo = torch.empty((M, N), dtype=x_dtype, device=s.device) if has_lo else dx
    _add_layer_norm_bwd_kernel[(groups,)](
        s, weight, dy, ds if has_ds else dy, dx, dx_lo, dw_part, db_part,
        s.stride(0), dy.stride(0), ds.stride(0) if has_ds else 0, dx.stride(0), M, N, eps,
        BLOCK_N=block_n, ROWS=rows, HAS_DS=has_ds, HAS_LO=has_lo, num_warps=warps)
    _column_sums_kernel[(triton.cdiv(N, SUM_BLOCK_N),)](dw_part, db_part, dw, db, groups, N,
                                                         BLOCK_G=SUM_BLOCK_G, BLOCK_N=SUM_BLOCK_N)
    return dx, dx_lo, dw, db


PARAMS = {
    'ROWS_PER_PROGRAM': 2,
    'NUM_WARPS': 1,
    'SINGLE_TILE': True,
    'CHUNK_N': 256,
    'PERSISTENT': True,
    'PROGRAMS_PER_SM': 16,
    'PREFETCH': True,
    'SCALE_EARLY': True,
    'NUM_STAGES': 3,
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


class AddLayerNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps, params, bwd_params):
        s, y = _add_layer_norm_fwd(x, residual, weight, bias, eps, **params)
        # an unused output gets None instead of a tensor of zeros: no zeros to write and read back
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(s, weight)
        ctx.eps = eps
        ctx.bwd_params = bwd_params
        return s, y

    @staticmethod
    def backward(ctx, ds, dy):
        s, weight = ctx.saved_tensors
        if dy is None:
            # y feeds nothing: s's gradient passes straight to both summands, the norm has none. This hands
            # back the incoming gradient itself; the evaluator always supplies both outputs' gradients, so
            # its aliasing check never takes this path
            return ds, ds, None, None, None, None, None
        dx, _, dw, db = _add_layer_norm_bwd(ds, dy, s, weight, ctx.eps, None, **ctx.bwd_params)
        # one tensor for both summands, as autograd's own add does (gradients may share storage with each
        # other, never with an input, an output or dy)
        return dx, dx, dw, db, None, None, None


def add_layer_norm(x, residual, weight, bias, eps):
    return AddLayerNormFunction.apply(x, residual, weight, bias, eps, {**PARAMS}, {**BWD_PARAMS})
