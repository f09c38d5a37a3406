"""RMSNorm over the last dimension: y = x / sqrt(mean(x**2) + eps) * weight.

Entry (fixed): rms_norm(x [M, N], weight [N], eps) -> [M, N] in x's dtype.
Contract: x's columns are contiguous but its rows may be any distance apart (x.stride(0) >= N) and it may
start anywhere in its storage, as a column slice of a wider tensor does; weight is contiguous; eps is any
positive float (the checks draw it per call from EPS_CHOICES). The output is contiguous.
Memory-bound: one read of x, one write of y; the forward kernel keeps a whole row (or a tile of rows)
in registers so x is read once. Unlike LayerNorm there is no mean to subtract, so the one statistic is
the mean square, taken in float32: squares of float16 inputs past 256 overflow float16. The backward
recomputes rstd from x instead of storing it: it must read x anyway, and that saves a write and a read
of an [M] vector.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .candidate import Backward, render_candidate
from .layer_norm import BWD_KNOBS as _NORM_BWD_KNOBS, _column_sum_kernel, bwd_layout
from .rowwise import _row_tile
from .spec import OpSpec, Shape, TemplateSpace, Tolerance, row_tile_canonical
from .variants import (constant_rows_split, copies, generator, large_mean_rows, row_strided, small_constants,
                       uniform, wide_row_scales, wide_rows)


@triton.jit
def _row_rstd(x, N, eps):
    """The rows' 1/sqrt(mean(x^2) + eps) of a float32 tile whose masked elements are zero."""
    return tl.rsqrt(tl.sum(x * x, axis=1) / N + eps)


@triton.jit
def _row_scale(W, cols, col_mask):
    """The scale of the row in float32."""
    return tl.load(W + cols, mask=col_mask, other=0.0).to(tl.float32)


@triton.jit
def _rms_load_tile(X, tile, M, stride_x, cols, col_mask, ROWS: tl.constexpr, INDEX_64: tl.constexpr,
                   EVICTION: tl.constexpr):
    """Rows [tile * ROWS, tile * ROWS + ROWS) of X as one masked [ROWS, BLOCK_N] tile, in X's dtype."""
    rows, mask = _row_tile(tile, M, col_mask, ROWS, INDEX_64)
    return tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0, eviction_policy=EVICTION)


@triton.jit
def _rms_finish_tile(x, w, tile, W, Y, M, N, stride_y, eps, cols, col_mask, ROWS: tl.constexpr,
                     INDEX_64: tl.constexpr, STORE_CACHE: tl.constexpr, SCALE_EARLY: tl.constexpr):
    """Normalise a tile loaded by _rms_load_tile and store it to the same rows of Y."""
    rows, mask = _row_tile(tile, M, col_mask, ROWS, INDEX_64)
    xf = x.to(tl.float32)  # the masked elements were loaded as zeros, so they add nothing to the squares
    rstd = _row_rstd(xf, N, eps)
    if not SCALE_EARLY:
        # loaded late: held across the reduction it costs registers, and a persistent program re-reads
        # it from L1
        w = _row_scale(W, cols, col_mask)
    y = xf * rstd[:, None] * w[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=mask,
             cache_modifier=STORE_CACHE)


@triton.jit
def _rms_norm_fwd_kernel(
    X,          # [M, N] input, rows stride_x apart, columns contiguous
    W,          # [N] scale
    Y,          # [M, N] output, rows stride_y apart, columns contiguous
    stride_x,   # elements between rows of X
    stride_y,   # elements between rows of Y
    M,          # rows
    N,          # width
    eps,        # added to the mean square
    BLOCK_N: tl.constexpr,      # columns per tile: next_pow2(N) for one tile, else the chunk width
    ROWS: tl.constexpr,         # rows per tile
    SINGLE_TILE: tl.constexpr,  # the whole row in one masked tile (x read once) or a chunked loop
    PERSISTENT: tl.constexpr,   # fewer programs than tiles, each striding over tiles, or one tile each
    PREFETCH: tl.constexpr,     # persistent single tile: load the next tile before normalising this one
    SCALE_EARLY: tl.constexpr,  # single tile: the scale loaded once per program, before any tile
    EVICTION: tl.constexpr,     # cache hint for the loads of x: "" (default) or "evict_first" (streamed once)
    STORE_CACHE: tl.constexpr,  # cache modifier of the stores of y: "" (default) or ".cs" (streamed)
    WIDTH: tl.constexpr,        # N baked in as a compile-time constant, or 0 to read it at run time
    INDEX_64: tl.constexpr,     # offsets in int64, needed only past 2**31 elements (int32 saves registers)
):
    if WIDTH > 0:
        N = WIDTH  # a constant width lets the compiler fold the column mask and the division
    pid = tl.program_id(0)
    step = tl.num_programs(0)
    n_tiles = tl.cdiv(M, ROWS)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    if SINGLE_TILE:
        if SCALE_EARLY:
            # loaded once, its latency overlapping the first tile's
            w = _row_scale(W, cols, col_mask)
        else:
            w = 0.0  # placeholder: each tile loads the scale after its reduction
        if PREFETCH:
            # the next tile's load is in flight while this one is reduced and stored: a warp keeps
            # memory busy across its own arithmetic instead of relying on other warps to cover it
            x = _rms_load_tile(X, pid, M, stride_x, cols, col_mask, ROWS, INDEX_64, EVICTION)
            for tile in range(pid, n_tiles, step):
                x_next = _rms_load_tile(X, tile + step, M, stride_x, cols, col_mask, ROWS, INDEX_64, EVICTION)
                _rms_finish_tile(x, w, tile, W, Y, M, N, stride_y, eps, cols, col_mask, ROWS, INDEX_64,
                                 STORE_CACHE, SCALE_EARLY)
                x = x_next
        elif PERSISTENT:
            for tile in range(pid, n_tiles, step):
                x = _rms_load_tile(X, tile, M, stride_x, cols, col_mask, ROWS, INDEX_64, EVICTION)
                _rms_finish_tile(x, w, tile, W, Y, M, N, stride_y, eps, cols, col_mask, ROWS, INDEX_64,
                                 STORE_CACHE, SCALE_EARLY)
        else:
            # straight-line code, no loop: one tile per program
            x = _rms_load_tile(X, pid, M, stride_x, cols, col_mask, ROWS, INDEX_64, EVICTION)
            _rms_finish_tile(x, w, pid, W, Y, M, N, stride_y, eps, cols, col_mask, ROWS, INDEX_64,
                             STORE_CACHE, SCALE_EARLY)
    else:
        for tile in range(pid, n_tiles, step):
            rows = tile * ROWS + tl.arange(0, ROWS)
            row_mask = rows < M
            if INDEX_64:
                rows = rows.to(tl.int64)  # rows * stride would overflow int32 past 2**31 elements
            # pass 1: the sum of squares, in float32 (no shift needed: nothing cancels in a sum of squares)
            acc_sq = tl.zeros([ROWS, BLOCK_N], dtype=tl.float32)
            for start in range(0, N, BLOCK_N):
                c = start + cols
                mask = row_mask[:, None] & (c < N)[None, :]
                x = tl.load(X + rows[:, None] * stride_x + c[None, :], mask=mask, other=0.0).to(tl.float32)
                acc_sq += x * x
            rstd = tl.rsqrt(tl.sum(acc_sq, axis=1) / N + eps)
            # pass 2: normalise; the row comes back from L2 (the hint is for this last read only)
            for start in range(0, N, BLOCK_N):
                c = start + cols
                cmask = c < N
                mask = row_mask[:, None] & cmask[None, :]
                x = tl.load(X + rows[:, None] * stride_x + c[None, :], mask=mask, other=0.0,
                            eviction_policy=EVICTION).to(tl.float32)
                wc = tl.load(W + c, mask=cmask, other=0.0).to(tl.float32)
                y = x * rstd[:, None] * wc[None, :]
                tl.store(Y + rows[:, None] * stride_y + c[None, :], y.to(Y.dtype.element_ty), mask=mask,
                         cache_modifier=STORE_CACHE)


def _rms_norm_fwd(x, weight, eps, ROWS_PER_PROGRAM, NUM_WARPS, SINGLE_TILE, CHUNK_N, PERSISTENT,
                  PROGRAMS_PER_SM, PREFETCH, SCALE_EARLY, NUM_STAGES, EVICTION, STORE_CACHE, CONST_WIDTH):
    """Validate, allocate, launch. Parameters in capitals are the template's knobs."""
    if x.dim() != 2 or weight.shape != (x.shape[1],):
        raise ValueError(f"rms_norm wants x [M, N], weight [N]; got {tuple(x.shape)}, {tuple(weight.shape)}")
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
    _rms_norm_fwd_kernel[(grid,)](
        x, weight, y, x.stride(0), y.stride(0), M, N, eps,
        BLOCK_N=block_n, ROWS=ROWS_PER_PROGRAM, SINGLE_TILE=SINGLE_TILE, PERSISTENT=grid < n_tiles,
        PREFETCH=PREFETCH and SINGLE_TILE and grid < n_tiles, SCALE_EARLY=SCALE_EARLY and SINGLE_TILE,
        EVICTION=EVICTION, STORE_CACHE=STORE_CACHE,
        WIDTH=N if CONST_WIDTH else 0, INDEX_64=max(M * x.stride(0), M * y.stride(0)) >= 2**31,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return y


@triton.jit
def _rms_norm_bwd_kernel(
    X,          # [M, N] forward input, rows stride_x apart, columns contiguous
    W,          # [N] scale
    DY,         # [M, N] gradient of the output, rows stride_dy apart
    DX,         # [M, N] gradient of the input (written), rows stride_x apart
    DW_PART,    # [G, N] float32 per-program partial sums of dy * xhat
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
    # each program owns row tiles pid, pid + G, ...: its dw partial needs no atomics
    for tile in range(pid, tl.cdiv(M, ROWS), tl.num_programs(0)):
        # int64 row index: row * stride overflows int32 past 2**31 elements
        rows = tl.cast(tile, tl.int64) * ROWS + tl.arange(0, ROWS)
        m2 = (rows < M)[:, None] & mask[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=m2, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / N + eps)
        xhat = x * rstd[:, None]
        wdy = w[None, :] * dy
        # the one row sum: rstd depends on every element of its row through mean(x^2)
        c = tl.sum(xhat * wdy, axis=1) / N
        dx = (wdy - xhat * c[:, None]) * rstd[:, None]
        tl.store(DX + rows[:, None] * stride_x + cols[None, :], dx.to(DX.dtype.element_ty), mask=m2)
        dw += dy * xhat
    tl.store(DW_PART + pid.to(tl.int64) * N + cols, tl.sum(dw, axis=0), mask=mask)


def _rms_norm_bwd(dy, x, weight, eps, BWD_TILE, BWD_PROGRAMS_PER_SM, BWD_WARPS, SUM_BLOCK_G, SUM_BLOCK_N):
    """dx, dweight. Parameters in capitals are the backward's template knobs: the row tile and programs per
    SM of the first pass (dx and per-program partial sums, no atomics), and the column strips of the second
    (SUM_BLOCK_N columns a program, SUM_BLOCK_G partial rows a step)."""
    M, N = x.shape
    x = x.contiguous()
    dy = dy.contiguous()
    dx = torch.empty_like(x)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
    block_n, rows, warps, groups = bwd_layout(M, N, sms, BWD_TILE, BWD_PROGRAMS_PER_SM, BWD_WARPS)
    dw_part = torch.empty((groups, N), dtype=torch.float32, device=x.device)
    _rms_norm_bwd_kernel[(groups,)](x, weight, dy, dx, dw_part, x.stride(0), dy.stride(0), M, N, eps,
                                    BLOCK_N=block_n, ROWS=rows, num_warps=warps)
    dw = torch.empty_like(weight)
    _column_sum_kernel[(triton.cdiv(N, SUM_BLOCK_N),)](dw_part, dw, groups, N, BLOCK_G=SUM_BLOCK_G,
                                                       BLOCK_N=SUM_BLOCK_N)
    return dx, dw


# the backward's seed: layer_norm's (tiles of 2048 elements, 2 programs an SM, narrow column strips for
# the second reduction), in dicts of its own so a search of one op never moves the other's seed
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


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps, params, bwd_params):
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        ctx.bwd_params = bwd_params
        return _rms_norm_fwd(x, weight, eps, **params)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        dx, dw = _rms_norm_bwd(dy, x, weight, ctx.eps, **ctx.bwd_params)
        return dx, dw, None, None, None


def rms_norm(x, weight, eps=1e-6):
    """The seed kernel, differentiable: RMSNorm of a [M, N] tensor over N."""
    return RMSNormFunction.apply(x, weight, eps, SEED_PARAMS, BWD_SEED_PARAMS)


# ----------------------------------------------------------------------------- spec

# eps is drawn per call, so a kernel that drops it or bakes in the default fails on the calls that draw
# another: 0.1 is of the order of the narrowest rows' mean square (0.06), and 1e-3 still moves them by 1%
EPS_CHOICES = (1e-6, 1e-5, 1e-3, 0.1)


def _make_inputs(shape: Shape, dtype: torch.dtype, seed: int, device: str):
    M, N = shape.dims["M"], shape.dims["N"]
    gen = torch.Generator(device=device).manual_seed(seed)
    # rows with their own offset and scale, like a residual stream; never zeros. The offset makes the
    # mean square differ from the variance, so a kernel that subtracts the mean is wrong
    offset = torch.randn((M, 1), generator=gen, device=device)
    scale = torch.rand((M, 1), generator=gen, device=device) * 3.0 + 0.25
    x = (torch.randn((M, N), generator=gen, device=device) * scale + offset).to(dtype)
    weight = (1.0 + 0.2 * torch.randn((N,), generator=gen, device=device)).to(dtype)
    eps = EPS_CHOICES[int(torch.randint(len(EPS_CHOICES), (1,), generator=gen, device=device))]
    return x, weight, eps


def _large_mean(inputs, seed: int):
    """Every row far from zero next to its spread (kernels/variants.py: large_mean_rows, magnitudes 292 to
    476): RMSNorm does not subtract the mean, so the squares are of the full values, past float16's range
    (65504) when a kernel squares in float16, and the output is nearly constant along each row."""
    x, weight, eps = inputs
    gen = generator(seed, x.device)
    rows = large_mean_rows(x.shape[0], x.shape[1], x.dtype, gen, x.device)
    return (rows.to(x.dtype), *copies(weight), eps)


def _tiny_rows(count: int, n: int, eps: float, gen: torch.Generator, device) -> torch.Tensor:
    """[count, n] rows around zero whose mean square is 1/4 to 4 times eps: eps changes their output by a
    factor of 1.1 to 2.2, so a kernel that drops it, or uses another value, is wrong there without any NaN
    to give it away."""
    spread = (eps ** 0.5) * uniform((count, 1), 0.5, 2.0, gen, device)
    return spread * torch.randn((count, n), generator=gen, device=device)


def _constant_rows(inputs, seed: int):
    """A quarter of the rows constant (y = c / sqrt(c^2 + eps) * weight: eps shows at the larger draws of
    it) and a quarter so small that their mean square is of the order of eps; the other rows as made."""
    x, weight, eps = inputs
    M, N = x.shape
    gen = generator(seed, x.device)
    const, tiny = constant_rows_split(M, gen, x.device)
    out = x.float().clone()
    out[const] = small_constants(len(const), gen, x.device)
    out[tiny] = _tiny_rows(len(tiny), N, eps, gen, x.device)
    return (out.to(x.dtype), *copies(weight), eps)


def _wide_range(inputs, seed: int):
    """Row scales over the dtype's range (kernels/variants.py: WIDE_EXPONENTS), elements over 2**+-3 of
    their row's scale: squares past float16's range in float32 and bfloat16, and rows so small that eps
    dominates their mean square."""
    x, weight, eps = inputs
    gen = generator(seed, x.device)
    rows = wide_rows(wide_row_scales(x.shape[0], x.dtype, gen, x.device), x.shape[1], gen, x.device)
    return (rows.to(x.dtype), *copies(weight), eps)


def _strided(inputs, seed: int):
    """x as a view into a wider buffer: rows farther apart than N, NaN in the columns outside the view."""
    x, weight, eps = inputs
    return (row_strided(x, generator(seed, x.device)), *copies(weight), eps)


VARIANTS = {
    "large_mean": _large_mean,
    "constant_rows": _constant_rows,
    "wide_range": _wide_range,
    "strided": _strided,
}


def _reference(x, weight, eps):
    # the definition, written out: no PyTorch version's own rms_norm is the yardstick of the others
    wide = torch.float64 if x.dtype == torch.float32 else torch.float32
    xw = x.to(wide)
    return xw * torch.rsqrt(xw.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.to(wide)


def _eager(x, weight, eps):
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)


def _bytes_moved(shape: Shape, dtype: torch.dtype) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    size = torch.tensor([], dtype=dtype).element_size()
    return (2 * M * N + N) * size  # read x, write y, read weight


def _flops(shape: Shape) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    return 4 * M * N  # square and add, then times rstd and times weight


def _backward_bytes(shape: Shape, dtype: torch.dtype) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    size = torch.tensor([], dtype=dtype).element_size()
    return (3 * M * N + 2 * N) * size  # read x and dy, write dx; weight in, dweight out


def _backward_flops(shape: Shape) -> int:
    M, N = shape.dims["M"], shape.dims["N"]
    return 11 * M * N  # the mean square again, xhat, w * dy, the row sum, dx, the partial sums of dweight


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
        op="rms_norm",
        entry="rms_norm",
        entry_args=("x", "weight", "eps"),
        launcher=_rms_norm_fwd,
        kernels=(_row_tile, _row_rstd, _row_scale, _rms_load_tile, _rms_finish_tile, _rms_norm_fwd_kernel),
        params=params,
        title="RMSNorm candidate, forward and backward",
        backward=Backward(RMSNormFunction, _rms_norm_bwd, (_rms_norm_bwd_kernel, _column_sum_kernel, bwd_layout),
                          frozenset(BWD_KNOBS)),
    ),
    canonical=row_tile_canonical(SEED_PARAMS, "CHUNK_N"),
    backward_knobs=frozenset(BWD_KNOBS),
)

SPEC = OpSpec(
    name="rms_norm",
    entry="rms_norm",
    signature=("rms_norm(x: [M, N], weight: [N], eps: float) -> [M, N] in x.dtype; x's rows may be any "
               "distance apart (columns contiguous), weight contiguous, eps varies per call"),
    description="RMSNorm over the last dimension of a [M, N] tensor (the rows are B*T tokens)",
    make_inputs=_make_inputs,
    reference=_reference,
    eager=_eager,
    shapes=(
        _shape("microgpt-B32-T128", 4096, 256, "microgpt", timed=True),
        _shape("gpt2-B8-T1024", 8192, 768, "gpt2", timed=True),
        _shape("gpt2-B1-T128", 128, 768, "gpt2"),
        _shape("one-row", 1, 768, "edge"),
        _shape("odd-rows-383", 1001, 383, "edge"),
        _shape("odd-rows-385", 257, 385, "edge"),
        _shape("width-1023", 333, 1023, "edge"),
        _shape("width-1025", 77, 1025, "edge"),
    ),
    interpreter_shapes=(
        _shape("microgpt-width", 16, 256, "microgpt"),
        _shape("gpt2-width", 16, 768, "gpt2"),
        _shape("one-row", 1, 768, "edge"),
        _shape("odd-rows-383", 13, 383, "edge"),
        _shape("odd-rows-385", 9, 385, "edge"),
        _shape("width-1023", 5, 1023, "edge"),
        _shape("width-1025", 3, 1025, "edge"),
        # many rows: a persistent grid (at most 128 programs on the CPU) of tiles up to 4 rows loops over
        # more than one wave; under the interpreter a program costs milliseconds whatever the width
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
