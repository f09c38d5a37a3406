"""LayerNorm over the last dimension: y = (x - mean) / sqrt(var + eps) * weight + bias.

Entry (fixed): layer_norm(x [M, N], weight [N], bias [N], eps) -> [M, N] in x's dtype.
Contract: x's columns are contiguous but its rows may be any distance apart (x.stride(0) >= N) and it may
start anywhere in its storage, as a column slice of a wider tensor does; weight and bias are contiguous;
eps is any positive float (the checks draw it per call from EPS_CHOICES). The output is contiguous.
Memory-bound: one read of x, one write of y; the forward kernel keeps a whole row (or a tile of rows)
in registers so x is read once. The backward recomputes mean and rstd from x instead of storing them:
it must read x anyway, and that saves a write and a read of two [M] vectors.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .candidate import Backward, render_candidate
from .rowwise import _row_center, _row_scale_shift, _row_tile
from .spec import OpSpec, Shape, TemplateSpace, Tolerance, row_tile_canonical
from .variants import (constant_rows_split, copies, flat_rows, generator, large_mean_rows, row_strided,
                       small_constants, wide_row_scales, wide_rows)


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


# the backward's seed: tiles of 2048 elements, 2 programs an SM; the second reduction in narrow column
# strips, so that even N = 384 spreads over a dozen programs, each summing the partial rows in a few wide
# steps rather than many dependent ones (3 programs took 52 us a call, 11% of a training step)
BWD_SEED_PARAMS = {
    "BWD_TILE": 2048,
    "BWD_PROGRAMS_PER_SM": 2,
    "BWD_WARPS": 0,
    "SUM_BLOCK_G": 64,
    "SUM_BLOCK_N": 32,
}
BWD_KNOBS = {
    "BWD_TILE": (1024, 2048, 4096, 8192),
    "BWD_PROGRAMS_PER_SM": (1, 2, 4, 8),
    "BWD_WARPS": (0, 2, 4, 8, 16),
    "SUM_BLOCK_G": (16, 32, 64, 128),
    "SUM_BLOCK_N": (16, 32, 64, 128),
}


SEED_PARAMS = {
    "ROWS_PER_PROGRAM": 1,
    "NUM_WARPS": 4,
    "SINGLE_TILE": True,
    "CHUNK_N": 256,
    "PERSISTENT": False,
    "PROGRAMS_PER_SM": 4,
    "PREFETCH": False,
    "SCALE_EARLY": False,
    "NUM_STAGES": 1,
    "EVICTION": "",
    "STORE_CACHE": "",
    "CONST_WIDTH": False,
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


def layer_norm(x, weight, bias, eps=1e-5):
    """The seed kernel, differentiable: LayerNorm of a [M, N] tensor over N."""
    return LayerNormFunction.apply(x, weight, bias, eps, SEED_PARAMS, BWD_SEED_PARAMS)


# ----------------------------------------------------------------------------- spec

# eps is drawn per call, so a kernel that drops it or bakes in the default fails on the calls that draw
# another: 0.1 is of the order of the narrowest rows' variance (0.06), and 1e-3 still moves them by 1%
EPS_CHOICES = (1e-5, 1e-6, 1e-3, 0.1)


def _make_inputs(shape: Shape, dtype: torch.dtype, seed: int, device: str):
    M, N = shape.dims["M"], shape.dims["N"]
    gen = torch.Generator(device=device).manual_seed(seed)
    # rows with their own offset and scale, like a residual stream; never zeros
    offset = torch.randn((M, 1), generator=gen, device=device) * 2.0
    scale = torch.rand((M, 1), generator=gen, device=device) * 3.0 + 0.25
    x = (torch.randn((M, N), generator=gen, device=device) * scale + offset).to(dtype)
    weight = (1.0 + 0.2 * torch.randn((N,), generator=gen, device=device)).to(dtype)
    bias = (0.2 * torch.randn((N,), generator=gen, device=device)).to(dtype)
    eps = EPS_CHOICES[int(torch.randint(len(EPS_CHOICES), (1,), generator=gen, device=device))]
    return x, weight, bias, eps


def _large_mean(inputs, seed: int):
    """Every row's mean far above its spread (kernels/variants.py: LARGE_MEAN_SPREAD): a variance taken as
    E[x^2] - E[x]^2 in float32 cancels to noise there, and a square taken in float16 overflows."""
    x, weight, bias, eps = inputs
    gen = generator(seed, x.device)
    rows = large_mean_rows(x.shape[0], x.shape[1], x.dtype, gen, x.device)
    return (rows.to(x.dtype), *copies(weight, bias), eps)


def _constant_rows(inputs, seed: int):
    """A quarter of the rows constant (variance 0: y is the bias, and 0/0 without eps) and a quarter with a
    variance of the order of eps, where eps's value shows in y; the other rows as made."""
    x, weight, bias, eps = inputs
    M, N = x.shape
    gen = generator(seed, x.device)
    const, flat = constant_rows_split(M, gen, x.device)
    out = x.float().clone()
    out[const] = small_constants(len(const), gen, x.device)
    out[flat] = flat_rows(len(flat), N, eps, gen, x.device)
    return (out.to(x.dtype), *copies(weight, bias), eps)


def _wide_range(inputs, seed: int):
    """Row scales over the dtype's range (kernels/variants.py: WIDE_EXPONENTS), elements over 2**+-3 of
    their row's scale: squares past float16's range in float32 and bfloat16, and rows so narrow that eps
    dominates their variance."""
    x, weight, bias, eps = inputs
    gen = generator(seed, x.device)
    rows = wide_rows(wide_row_scales(x.shape[0], x.dtype, gen, x.device), x.shape[1], gen, x.device)
    return (rows.to(x.dtype), *copies(weight, bias), eps)


def _strided(inputs, seed: int):
    """x as a view into a wider buffer: rows farther apart than N, NaN in the columns outside the view."""
    x, weight, bias, eps = inputs
    return (row_strided(x, generator(seed, x.device)), *copies(weight, bias), eps)


VARIANTS = {
    "large_mean": _large_mean,
    "constant_rows": _constant_rows,
    "wide_range": _wide_range,
    "strided": _strided,
}


def _reference(x, weight, bias, eps):
    wide = torch.float64 if x.dtype == torch.float32 else torch.float32
    return torch.nn.functional.layer_norm(x.to(wide), (x.shape[-1],), weight.to(wide), bias.to(wide), eps)


def _eager(x, weight, bias, eps):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def _bytes_moved(shape: Shape, dtype: torch.dtype) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    size = torch.tensor([], dtype=dtype).element_size()
    return (2 * M * N + 2 * N) * size  # read x, write y, read weight and bias


def _flops(shape: Shape) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    return 8 * M * N


def _backward_bytes(shape: Shape, dtype: torch.dtype) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    size = torch.tensor([], dtype=dtype).element_size()
    return (3 * M * N + 3 * N) * size  # read x and dy, write dx; weight in, dweight and dbias out


def _backward_flops(shape: Shape) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    return 13 * M * N  # the statistics again, the two row sums, dx, the partial sums of dweight and dbias


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
        op="layer_norm",
        entry="layer_norm",
        entry_args=("x", "weight", "bias", "eps"),
        launcher=_layer_norm_fwd,
        kernels=(_row_tile, _row_center, _row_scale_shift, _ln_load_tile, _ln_finish_tile,
                 _layer_norm_fwd_kernel),
        params=params,
        title="LayerNorm candidate, forward and backward",
        backward=Backward(LayerNormFunction, _layer_norm_bwd, (_layer_norm_bwd_kernel, _column_sum_kernel,
                                                               bwd_layout), frozenset(BWD_KNOBS)),
    ),
    canonical=row_tile_canonical(SEED_PARAMS, "CHUNK_N"),
    backward_knobs=frozenset(BWD_KNOBS),
)

SPEC = OpSpec(
    name="layer_norm",
    entry="layer_norm",
    signature=("layer_norm(x: [M, N], weight: [N], bias: [N], eps: float) -> [M, N] in x.dtype; x's rows may be "
               "any distance apart (columns contiguous), weight and bias contiguous, eps varies per call"),
    description="LayerNorm over the last dimension of a [M, N] tensor (the rows are B*T tokens)",
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
        # many rows: a persistent grid (at most 128 programs on the CPU) of tiles up to 4 rows loops over
        # more than one wave. Under the interpreter a program costs ~6 ms whatever the width, so the
        # seed's one row per program makes this ~3.5 s a call; 2048 rows would be ~14 s
        _shape("rows-515", 515, 96, "edge"),
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
