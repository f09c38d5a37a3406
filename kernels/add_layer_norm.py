"""Residual add fused with the LayerNorm that follows it: s = x + residual, y = layer_norm(s).

Entry (fixed): add_layer_norm(x [M, N], residual [M, N], weight [N], bias [N], eps) -> (s, y), both
[M, N] in x's dtype. In NanoGPT this is `x = x + attn(ln_1(x)); h = ln_2(x)`: s is the new residual
stream, y feeds the next sublayer. Unfused, PyTorch writes s and reads it back for the norm; here x and
residual are read once and s and y written once. y is normalised from the fp32 sum before s is rounded
to the output dtype, so it is closer to the wide reference than eager (which normalises the rounded s).
The backward recomputes the statistics from the saved s instead of storing mean and rstd: it must read
s anyway, and that saves a write and a read of two [M] vectors.

Contract: the columns of x and residual are contiguous, their rows may be any distance apart (each its
own stride >= N) and they may start anywhere in their storage; weight and bias are contiguous; eps is any
positive float (the checks draw it per call from layer_norm's EPS_CHOICES). Both outputs are contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .candidate import Backward, render_candidate
from .layer_norm import BWD_KNOBS as _NORM_BWD_KNOBS, EPS_CHOICES, bwd_layout
from .rowwise import _row_center, _row_scale_shift, _row_tile
from .spec import OpSpec, Shape, TemplateSpace, Tolerance, row_tile_canonical
from .variants import (LARGE_MEAN_RESIDUAL, LARGE_MEAN_SPREAD, binade_grid, constant_rows_split, copies,
                       flat_rows, generator, large_mean_rows, row_strided, small_constants, wide_row_scales,
                       wide_rows)


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


# the backward is layer_norm's with a residual folded in: the same first pass over rows of s and dy and the
# same column sums, so it starts at layer_norm's backward seed (tiles of 2048 elements, 2 programs an SM,
# narrow column strips for the second reduction) and searches the same knobs; its own dicts, so that a
# search of one op's backward never moves the other's
BWD_SEED_PARAMS = {
    "BWD_TILE": 2048,
    "BWD_PROGRAMS_PER_SM": 2,
    "BWD_WARPS": 0,
    "SUM_BLOCK_G": 64,
    "SUM_BLOCK_N": 32,
}
# the same knobs and values as LayerNorm's backward, which this one shares its layout and reductions with
BWD_KNOBS = dict(_NORM_BWD_KNOBS)


SEED_PARAMS = {
    # the seed starts where LayerNorm's own search ended on an H100 (memory/promoted/layer_norm): a few
    # rows per program, a chunked loop the compiler can pipeline and unroll over a constant width
    "ROWS_PER_PROGRAM": 4,
    "NUM_WARPS": 1,
    "SINGLE_TILE": False,
    "CHUNK_N": 256,
    "PERSISTENT": False,
    "PROGRAMS_PER_SM": 4,
    "PREFETCH": False,
    "SCALE_EARLY": False,
    "NUM_STAGES": 3,
    "EVICTION": "",
    "STORE_CACHE": "",
    "CONST_WIDTH": True,
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


def add_layer_norm(x, residual, weight, bias, eps=1e-5):
    """The seed kernel, differentiable: (x + residual, LayerNorm(x + residual)) of [M, N] tensors over N."""
    return AddLayerNormFunction.apply(x, residual, weight, bias, eps, SEED_PARAMS, BWD_SEED_PARAMS)


# ----------------------------------------------------------------------------- spec

def _make_inputs(shape: Shape, dtype: torch.dtype, seed: int, device: str):
    M, N = shape.dims["M"], shape.dims["N"]
    gen = torch.Generator(device=device).manual_seed(seed)
    # x like a residual stream (rows with their own offset and scale), residual like a sublayer's output
    offset = torch.randn((M, 1), generator=gen, device=device)
    scale = torch.rand((M, 1), generator=gen, device=device) * 2.0 + 0.5
    x = (torch.randn((M, N), generator=gen, device=device) * scale + offset).to(dtype)
    residual = (0.5 * torch.randn((M, N), generator=gen, device=device)).to(dtype)
    weight = (1.0 + 0.2 * torch.randn((N,), generator=gen, device=device)).to(dtype)
    bias = (0.2 * torch.randn((N,), generator=gen, device=device)).to(dtype)
    # drawn per call like layer_norm's: a kernel that drops eps or bakes in the default fails on some calls
    eps = EPS_CHOICES[int(torch.randint(len(EPS_CHOICES), (1,), generator=gen, device=device))]
    return x, residual, weight, bias, eps


# The variants keep x + residual exact in the inputs' dtype wherever the sum is what they stress, so y is
# the same whether a kernel normalises the unrounded sum (as the seed and the reference do) or the rounded
# s (as eager does): what is on trial is the variance, not where the sum is rounded.

def _large_mean(inputs, seed: int):
    """Every row of x + residual with a mean far above its spread: x carries the mean (kernels/variants.py:
    large_mean_rows), the residual a spread of its own on the grid of x's binade, so the sum is exact."""
    x, residual, weight, bias, eps = inputs
    M, N = x.shape
    gen = generator(seed, x.device)
    xs = large_mean_rows(M, N, x.dtype, gen, x.device)
    grid = binade_grid(x.dtype)
    spread = 0.5 * LARGE_MEAN_SPREAD[x.dtype][0]
    r = torch.round(spread / grid * torch.randn((M, N), generator=gen, device=x.device)) * grid
    r = r.clamp(-LARGE_MEAN_RESIDUAL, LARGE_MEAN_RESIDUAL)
    return (xs.to(x.dtype), r.to(x.dtype), *copies(weight, bias), eps)


def _constant_rows(inputs, seed: int):
    """A quarter of the rows of x + residual constant (variance 0), half of them as a constant x plus a
    constant residual, half as a residual that cancels x exactly (x alone is not constant there, so a
    kernel that normalises x without the residual fails); a quarter with a variance of the order of eps
    (in x, the residual 0 on those rows); the other rows as made."""
    x, residual, weight, bias, eps = inputs
    M, N = x.shape
    gen = generator(seed, x.device)
    const, flat = constant_rows_split(M, gen, x.device)
    both, cancel = const[: len(const) - len(const) // 2], const[len(const) - len(const) // 2:]
    xs, rs = x.float().clone(), residual.float().clone()
    xs[both] = small_constants(len(both), gen, x.device)
    rs[both] = small_constants(len(both), gen, x.device)
    rs[cancel] = -xs[cancel]
    xs[flat] = flat_rows(len(flat), N, eps, gen, x.device)
    rs[flat] = 0.0
    return (xs.to(x.dtype), rs.to(x.dtype), *copies(weight, bias), eps)


def _wide_range(inputs, seed: int):
    """Row scales over the dtype's range (kernels/variants.py: WIDE_EXPONENTS), shared by x and the
    residual, one binade lower so their sum stays in range."""
    x, residual, weight, bias, eps = inputs
    M, N = x.shape
    gen = generator(seed, x.device)
    scale = wide_row_scales(M, x.dtype, gen, x.device, shrink=1.0)
    xs = wide_rows(scale, N, gen, x.device)
    rs = 0.5 * wide_rows(scale, N, gen, x.device)
    return (xs.to(x.dtype), rs.to(x.dtype), *copies(weight, bias), eps)


def _strided(inputs, seed: int):
    """x and residual as views into wider buffers, each with its own row stride, NaN outside the views."""
    x, residual, weight, bias, eps = inputs
    gen = generator(seed, x.device)
    return (row_strided(x, gen), row_strided(residual, gen), *copies(weight, bias), eps)


VARIANTS = {
    "large_mean": _large_mean,
    "constant_rows": _constant_rows,
    "wide_range": _wide_range,
    "strided": _strided,
}


def _reference(x, residual, weight, bias, eps):
    wide = torch.float64 if x.dtype == torch.float32 else torch.float32
    s = x.to(wide) + residual.to(wide)  # the unrounded sum
    return s, torch.nn.functional.layer_norm(s, (x.shape[-1],), weight.to(wide), bias.to(wide), eps)


def _eager(x, residual, weight, bias, eps):
    s = x + residual
    return s, torch.nn.functional.layer_norm(s, (x.shape[-1],), weight, bias, eps)


def _bytes_moved(shape: Shape, dtype: torch.dtype) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    size = torch.tensor([], dtype=dtype).element_size()
    return (4 * M * N + 2 * N) * size  # read x and residual, write s and y, read weight and bias


def _flops(shape: Shape) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    return 9 * M * N  # the add, then LayerNorm's 8 per element


def _backward_bytes(shape: Shape, dtype: torch.dtype) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    size = torch.tensor([], dtype=dtype).element_size()
    # read s, dy and ds, write the one gradient both summands share; weight in, dweight and dbias out
    return (4 * M * N + 3 * N) * size


def _backward_flops(shape: Shape) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    return 14 * M * N  # the statistics again, the two row sums, dx, the partial sums of dweight and dbias


def _context(shape: Shape, sm_count: int) -> dict:
    return {
        "row_wise": True,
        "normalization": True,
        "rows_over_2x_sms": shape.dims["M"] > 2 * sm_count,
        "width": shape.dims["N"],
    }


def _shape(name, m, n, origin, timed=False):
    return Shape(name=name, dims={"M": m, "N": n}, origin=origin, timed=timed)




TEMPLATE = TemplateSpace(
    params={
        "ROWS_PER_PROGRAM": (1, 2, 4, 8),
        "NUM_WARPS": (1, 2, 4, 8, 16),
        "SINGLE_TILE": (True, False),
        "CHUNK_N": (128, 256, 512),
        "PERSISTENT": (False, True),
        "PROGRAMS_PER_SM": (2, 4, 8, 16, 32),
        "PREFETCH": (False, True),
        "SCALE_EARLY": (False, True),
        "NUM_STAGES": (1, 2, 3),
        "EVICTION": ("", "evict_first"),
        "STORE_CACHE": ("", ".cs"),
        "CONST_WIDTH": (False, True),
        **BWD_KNOBS,
    },
    seed={**SEED_PARAMS, **BWD_SEED_PARAMS},
    render=lambda params: render_candidate(
        op="add_layer_norm",
        entry="add_layer_norm",
        entry_args=("x", "residual", "weight", "bias", "eps"),
        launcher=_add_layer_norm_fwd,
        kernels=(_row_tile, _row_center, _row_scale_shift, _aln_load_tile, _aln_finish_tile,
                 _add_layer_norm_fwd_kernel),
        params=params,
        title="Residual add + LayerNorm candidate, forward and backward",
        backward=Backward(AddLayerNormFunction, _add_layer_norm_bwd,
                          (_add_layer_norm_bwd_kernel, _column_sums_kernel, bwd_layout), frozenset(BWD_KNOBS)),
    ),
    canonical=row_tile_canonical(SEED_PARAMS, "CHUNK_N"),
    backward_knobs=frozenset(BWD_KNOBS),
)

SPEC = OpSpec(
    name="add_layer_norm",
    entry="add_layer_norm",
    signature=("add_layer_norm(x: [M, N], residual: [M, N], weight: [N], bias: [N], eps: float) -> "
               "(s = x + residual, y = layer_norm(s)), both [M, N] in x.dtype; the rows of x and residual may "
               "be any distance apart (columns contiguous), weight and bias contiguous, eps varies per call"),
    description="Residual add fused with the LayerNorm that follows it (rows are B*T tokens)",
    make_inputs=_make_inputs,
    reference=_reference,
    eager=_eager,
    shapes=(
        _shape("gpt2-B8-T1024", 8192, 768, "gpt2", timed=True),
        _shape("shakespeare-B64-T256", 16384, 384, "shakespeare", timed=True),
        _shape("gpt2-B1-T128", 128, 768, "gpt2"),
        _shape("one-row", 1, 768, "edge"),
        _shape("odd-rows-383", 1001, 383, "edge"),
        _shape("odd-rows-385", 257, 385, "edge"),
        _shape("width-1023", 333, 1023, "edge"),
        _shape("width-1025", 77, 1025, "edge"),
    ),
    interpreter_shapes=(
        _shape("gpt2-width", 16, 768, "gpt2"),
        _shape("shakespeare-width", 16, 384, "shakespeare"),
        _shape("one-row", 1, 768, "edge"),
        _shape("odd-rows-383", 13, 383, "edge"),
        _shape("odd-rows-385", 9, 385, "edge"),
        _shape("width-1023", 5, 1023, "edge"),
        _shape("width-1025", 3, 1025, "edge"),
        # many rows: a persistent grid (at most 128 programs on the CPU) of tiles up to 8 rows loops over
        # more than one wave; ~2.5-3 s a call for the seed's 4-row tiles under the interpreter (its cost is
        # per program, not per element: 2048 rows would be ~5-6 s)
        _shape("rows-1027", 1027, 96, "edge"),
    ),
    gpu_dtypes=("bfloat16", "float16", "float32"),
    cpu_dtypes=("float32", "float16", "bfloat16"),
    tolerances={
        "float32": Tolerance(atol=1e-4, rtol=1e-4),
        "float16": Tolerance(atol=1e-2, rtol=1e-2),
        "bfloat16": Tolerance(atol=4e-2, rtol=2e-2),
    },
    bytes_moved=_bytes_moved,
    flops=_flops,
    backward_bytes=_backward_bytes,
    backward_flops=_backward_flops,
    bound="memory",
    has_backward=True,
    template=TEMPLATE,
    context=_context,
    tags=("row_wise", "normalization"),
    variants=VARIANTS,
)
