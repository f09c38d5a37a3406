"""Cross-entropy of NanoGPT's logits: the mean over rows of logsumexp(logits[i]) - logits[i, targets[i]].

Entry (fixed): cross_entropy(logits [M, V], targets [M] int64) -> 0-d float32 tensor, computed in float32
from logits of any dtype. Rows whose target is -1 (NanoGPT's ignore_index) are left out of the sum and
of the count. V = 50304 for GPT-2 does not fit one tile, so each row is read once in chunks with an
online log-sum-exp: a running max and a running sum of exponentials, rescaled when the max grows.

Two kernels: the first writes one float per row (its loss) or, when a row's V is split across
programs, one partial log-sum-exp per split; the second reduces those in a fixed order to the mean, so
two calls on the same input agree bit for bit (no float atomics).

The entry is differentiable in the logits. Called without a gradient wanted, it runs the kernels above at
the forward's knobs. Called for training, it runs a fused forward instead, whose kernel also writes the
gradient of the mean loss with respect to the logits, (softmax - onehot) / n_valid, in a second sweep
over each row while the row is still in L2; the backward only scales that buffer by the incoming
gradient, and skips even that when the incoming gradient is 1 (a plain loss.backward()), which it learns
on the GPU without a host sync. So the fused kernel's tuning is the backward's part of the template space.
`cross_entropy_fused` is the same differentiable seed under the name the training code knows.

Contract: the logits' columns are contiguous but their rows may be any distance apart (logits.stride(0)
>= V) and they may start anywhere in their storage: the real 50257 columns of GPT-2's logits padded to
50304 are such a view. targets is contiguous.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .candidate import Backward, render_candidate
from .spec import OpSpec, Shape, TemplateSpace, Tolerance
from .variants import copies, generator, log_uniform, row_strided, signs, some_rows, uniform


@triton.jit
def _cross_entropy_fwd_kernel(
    LOGITS,     # [M, V] logits, rows stride_l apart, columns contiguous
    TARGETS,    # [M] int64 class of each row, or -1 for a row left out
    LOSS,       # [M] float32 per-row loss, 0 for rows left out (written when SPLITS == 1)
    PART,       # [M, SPLITS] float32 log-sum-exp of each split of a row (written when SPLITS > 1)
    DLOGITS,    # [M, V] gradient of the mean loss, rows stride_d apart (written when GRAD)
    N_VALID,    # [1] int32 number of rows whose target is not -1 (read when GRAD)
    stride_l,   # elements between rows of LOGITS
    stride_d,   # elements between rows of DLOGITS
    M,          # rows
    V,          # classes
    chunks_per_split,           # chunks of BLOCK_V columns each split covers
    n_work,                     # (row block, split) pairs; the programs take them in a grid-stride loop
    BLOCK_V: tl.constexpr,      # columns per chunk
    ROWS: tl.constexpr,         # rows per program
    SPLITS: tl.constexpr,       # programs per row, each over its own range of columns
    LSE: tl.constexpr,          # "chunk": reduce each chunk to one running (max, sum) per row;
                                # "lane": keep a running (max, sum) per column lane, reduce once at the end
    EVICTION: tl.constexpr,     # cache hint for the first read of the logits: "" or "evict_first"
    GRAD: tl.constexpr,         # also write the gradient (needs SPLITS == 1: the whole row's lse)
    INDEX_64: tl.constexpr,     # offsets in int64, needed only past 2**31 elements
):
    # a finite floor for the running max (the lowest float32): masked columns load -inf, and
    # exp(-inf - floor) = 0 where exp(-inf - (-inf)) would be NaN
    floor = -3.4028234663852886e38
    # one work item a program, or with fewer programs than items (a grid of a few per SM) each takes every
    # num_programs-th: the rows in flight at once are then few enough that the gradient sweep finds its row
    # still in L2
    for pid in range(tl.program_id(0), n_work, tl.num_programs(0)):
        split = pid % SPLITS
        rows = (pid // SPLITS) * ROWS + tl.arange(0, ROWS)
        row_mask = rows < M
        if INDEX_64:
            rows = rows.to(tl.int64)  # rows * stride overflows int32 past 2**31 elements
        cols = tl.arange(0, BLOCK_V)
        row_ptr = LOGITS + rows[:, None] * stride_l
        v_start = split * chunks_per_split * BLOCK_V
        v_end = tl.minimum(V, v_start + chunks_per_split * BLOCK_V)
        if LSE == "lane":
            m_lane = tl.full([ROWS, BLOCK_V], floor, dtype=tl.float32)
            s_lane = tl.zeros([ROWS, BLOCK_V], dtype=tl.float32)
        else:
            m = tl.full([ROWS], floor, dtype=tl.float32)
            s = tl.zeros([ROWS], dtype=tl.float32)
        for start in range(v_start, v_end, BLOCK_V):
            c = start + cols
            mask = row_mask[:, None] & (c < v_end)[None, :]
            x = tl.load(row_ptr + c[None, :], mask=mask, other=float("-inf"),
                        eviction_policy=EVICTION).to(tl.float32)
            if LSE == "lane":
                # no reduction in the loop, at the price of a second exp per element
                m_new = tl.maximum(m_lane, x)
                s_lane = s_lane * tl.exp(m_lane - m_new) + tl.exp(x - m_new)
                m_lane = m_new
            else:
                m_new = tl.maximum(m, tl.max(x, axis=1))
                s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
                m = m_new
        if LSE == "lane":
            m = tl.max(m_lane, axis=1)
            s = tl.sum(s_lane * tl.exp(m_lane - m[:, None]), axis=1)
        log_s = tl.log(s)
        if SPLITS > 1:
            tl.store(PART + rows * SPLITS + split, m + log_s, mask=row_mask)
        else:
            t = tl.load(TARGETS + rows, mask=row_mask, other=-1)
            valid = row_mask & (t != -1)
            # a target outside [0, V) is the caller's error; the mask keeps it from reading out of bounds
            x_t = tl.load(LOGITS + rows * stride_l + t, mask=valid & (t >= 0) & (t < V), other=0.0).to(tl.float32)
            # m and log(s) are kept apart: m + log(s) rounds at the row's magnitude (3e-5 at logits near 1000),
            # and x - m, m - x_t are exact for logits near the max
            tl.store(LOSS + rows, tl.where(valid, (m - x_t) + log_s, 0.0), mask=row_mask)
            if GRAD:
                scale = tl.where(valid, 1.0 / tl.load(N_VALID).to(tl.float32), 0.0)
                d_ptr = DLOGITS + rows[:, None] * stride_d
                # second sweep: the row was just read, so it comes back from L2
                for start in range(0, V, BLOCK_V):
                    c = start + cols
                    mask = row_mask[:, None] & (c < V)[None, :]
                    x = tl.load(row_ptr + c[None, :], mask=mask, other=0.0).to(tl.float32)
                    p = tl.exp((x - m[:, None]) - log_s[:, None])
                    g = tl.where(c[None, :] == t[:, None], p - 1.0, p) * scale[:, None]
                    tl.store(d_ptr + c[None, :], g.to(DLOGITS.dtype.element_ty), mask=mask)


@triton.jit
def _cross_entropy_mean_kernel(
    LOSS,       # [M] float32 per-row loss (SPLITS == 1)
    PART,       # [M, SPLITS] float32 per-split log-sum-exp (SPLITS > 1)
    LOGITS,     # [M, V] logits, for the target logit when SPLITS > 1
    TARGETS,    # [M] int64 class of each row, or -1
    OUT,        # [] float32 mean loss over the rows whose target is not -1
    stride_l,
    M,
    V,
    SPLITS: tl.constexpr,
    SPLITS_P2: tl.constexpr,    # next_pow2(SPLITS), the tile width over the splits
    BLOCK_R: tl.constexpr,      # rows per step
    INDEX_64: tl.constexpr,
):
    # one program, rows in a fixed order: the same sum on every call
    acc = tl.zeros([BLOCK_R], dtype=tl.float32)
    count = tl.zeros([BLOCK_R], dtype=tl.int32)
    for start in range(0, M, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        row_mask = rows < M
        t = tl.load(TARGETS + rows, mask=row_mask, other=-1)
        valid = row_mask & (t != -1)
        if SPLITS > 1:
            sp = tl.arange(0, SPLITS_P2)
            part = tl.load(PART + rows[:, None] * SPLITS + sp[None, :],
                           mask=valid[:, None] & (sp < SPLITS)[None, :], other=float("-inf"))
            # every split of a valid row covers at least one column, so its max is finite
            top = tl.where(valid, tl.max(part, axis=1), 0.0)
            lse = top + tl.log(tl.sum(tl.exp(part - top[:, None]), axis=1))
            if INDEX_64:
                rows = rows.to(tl.int64)
            x_t = tl.load(LOGITS + rows * stride_l + t, mask=valid & (t >= 0) & (t < V), other=0.0)
            loss = lse - x_t.to(tl.float32)
        else:
            loss = tl.load(LOSS + rows, mask=valid, other=0.0)
        acc += tl.where(valid, loss, 0.0)
        count += valid.to(tl.int32)
    # with every row left out this is 0 / 0 = NaN, as in PyTorch
    tl.store(OUT, tl.sum(acc, axis=0) / tl.sum(count, axis=0).to(tl.float32))


def _cross_entropy_fwd(logits, targets, BLOCK_V, ROWS, NUM_WARPS, NUM_STAGES, SPLIT_V, LSE, EVICTION,
                       dlogits=None, n_valid=None, programs_per_sm=0):
    """Validate, allocate, launch. Parameters in capitals are the template's knobs; `dlogits`, `n_valid`
    and `programs_per_sm` are given by the fused path only, which then gets the gradient written too (with
    programs_per_sm > 0, on a grid of that many programs per SM, each taking row blocks in turn)."""
    if logits.dim() != 2 or logits.shape[1] == 0 or targets.shape != (logits.shape[0],):
        raise ValueError(f"cross_entropy wants logits [M, V > 0] and targets [M]; got {tuple(logits.shape)}, "
                         f"{tuple(targets.shape)}")
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64, got {targets.dtype}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if not targets.is_contiguous():
        targets = targets.contiguous()
    M, V = logits.shape
    out = torch.empty((), dtype=torch.float32, device=logits.device)
    grad = dlogits is not None
    block_v = min(BLOCK_V, triton.next_power_of_2(V))
    # narrow rows (V = 65) are packed so that a tile still holds about BLOCK_V elements
    rows = max(ROWS, BLOCK_V // block_v)
    n_chunks = triton.cdiv(V, block_v)
    splits = 1 if grad else min(SPLIT_V, n_chunks)
    chunks_per_split = triton.cdiv(n_chunks, splits)
    splits = triton.cdiv(n_chunks, chunks_per_split)  # no split left without columns
    loss = torch.empty((M,), dtype=torch.float32, device=logits.device)
    part = torch.empty((M, splits), dtype=torch.float32, device=logits.device)
    index_64 = M * max(logits.stride(0), dlogits.stride(0) if grad else 0) >= 2**31
    if M > 0:
        n_work = triton.cdiv(M, rows) * splits
        grid = n_work
        if programs_per_sm > 0:
            sms = torch.cuda.get_device_properties(logits.device).multi_processor_count if logits.is_cuda else 4
            grid = min(n_work, programs_per_sm * sms)
        _cross_entropy_fwd_kernel[(grid,)](
            logits, targets, loss, part, dlogits if grad else loss, n_valid if grad else targets,
            logits.stride(0), dlogits.stride(0) if grad else 0, M, V, chunks_per_split, n_work,
            BLOCK_V=block_v, ROWS=rows, SPLITS=splits, LSE=LSE, EVICTION=EVICTION, GRAD=grad,
            INDEX_64=index_64, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )
    _cross_entropy_mean_kernel[(1,)](
        loss, part, logits, targets, out, logits.stride(0), M, V,
        SPLITS=splits, SPLITS_P2=triton.next_power_of_2(splits), BLOCK_R=1024, INDEX_64=index_64,
        num_warps=4,
    )
    return out


# ----------------------------------------------------------------------------- fused forward + backward

@triton.jit
def _count_valid_kernel(
    TARGETS,    # [M] int64 class of each row, or -1
    N_VALID,    # [1] int32 number of rows whose target is not -1 (written)
    M,
    BLOCK_R: tl.constexpr,
):
    count = tl.zeros([BLOCK_R], dtype=tl.int32)
    for start in range(0, M, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        t = tl.load(TARGETS + rows, mask=rows < M, other=-1)
        count += (t != -1).to(tl.int32)
    tl.store(N_VALID, tl.sum(count, axis=0))


@triton.jit
def _scale_in_place_kernel(
    G,          # [numel] gradient buffer, scaled in place
    SCALE,      # [] the incoming gradient of the loss
    numel,
    BLOCK: tl.constexpr,
):
    scale = tl.load(SCALE).to(tl.float32)
    # loss.backward() passes 1: the buffer already holds the answer, and every program leaves at once
    if scale != 1.0:
        for tile in range(tl.program_id(0), tl.cdiv(numel, BLOCK), tl.num_programs(0)):
            offs = tl.cast(tile, tl.int64) * BLOCK + tl.arange(0, BLOCK)
            mask = offs < numel
            g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(G + offs, (g * scale).to(G.dtype.element_ty), mask=mask)


def _fused_fwd(logits, targets, *, FUSED_BLOCK_V, FUSED_ROWS, FUSED_WARPS, FUSED_STAGES, FUSED_LSE,
               FUSED_EVICTION, FUSED_PROGRAMS_PER_SM, SCALE_BLOCK):
    """(mean loss, its gradient for an incoming gradient of 1), both from one pass over the logits.
    Parameters in capitals are the backward's template knobs (the fused kernel makes the gradient, so its
    tuning is the backward's): FUSED_BLOCK_V columns a chunk, FUSED_ROWS rows a program (at least; narrow
    rows are packed further), FUSED_WARPS and FUSED_STAGES its num_warps and num_stages, FUSED_LSE the form
    of the online log-sum-exp ("chunk" or "lane"), FUSED_EVICTION the cache hint of the first read of the
    logits ("" or "evict_first"), FUSED_PROGRAMS_PER_SM the grid: 0 for a program per row block, else that
    many programs per SM taking the row blocks in turn. The gradient sweep re-reads each row; with a program
    per block, as many rows are in flight as the SMs hold programs (GPT-2's rows are 100 KB: four 8-warp
    programs on each of 132 SMs keep some 50 MB in flight, an H200's whole L2), so the re-read may go back
    to HBM; fewer programs keep it in L2 at the price of fewer loads in flight. A row is never split over
    programs: the gradient sweep needs the whole row's lse. SCALE_BLOCK belongs to _scale_grad_ and is
    unused here: both take the same backward point."""
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    targets = targets.contiguous()
    M, V = logits.shape
    dlogits = torch.empty((M, V), dtype=logits.dtype, device=logits.device)
    n_valid = torch.empty((1,), dtype=torch.int32, device=logits.device)
    _count_valid_kernel[(1,)](targets, n_valid, targets.numel(), BLOCK_R=1024)
    loss = _cross_entropy_fwd(logits, targets, BLOCK_V=FUSED_BLOCK_V, ROWS=FUSED_ROWS, NUM_WARPS=FUSED_WARPS,
                              NUM_STAGES=FUSED_STAGES, SPLIT_V=1, LSE=FUSED_LSE, EVICTION=FUSED_EVICTION,
                              dlogits=dlogits, n_valid=n_valid, programs_per_sm=FUSED_PROGRAMS_PER_SM)
    return loss, dlogits


def _scale_grad_(dlogits, grad_loss, *, FUSED_BLOCK_V, FUSED_ROWS, FUSED_WARPS, FUSED_STAGES, FUSED_LSE,
                 FUSED_EVICTION, FUSED_PROGRAMS_PER_SM, SCALE_BLOCK):
    """dlogits *= grad_loss in place (the kernel returns at once when it is 1, as loss.backward() passes).
    grad_loss is a one-element tensor on dlogits' device, of any float dtype (the kernel reads it in fp32).
    SCALE_BLOCK, the elements a program scales per step, is the one knob of the backward's this launcher
    uses; the FUSED_* knobs belong to _fused_fwd and are unused here: both take the same backward point."""
    numel = dlogits.numel()
    if numel:
        sms = torch.cuda.get_device_properties(dlogits.device).multi_processor_count if dlogits.is_cuda else 4
        grid = max(1, min(triton.cdiv(numel, SCALE_BLOCK), 4 * sms))
        _scale_in_place_kernel[(grid,)](dlogits, grad_loss, numel, BLOCK=SCALE_BLOCK, num_warps=8)


# the backward's seed: the fused kernel at the forward seed's chunks and warps with 2 stages (the second
# sweep re-reads each chunk while it is in L2), the scale in steps of 4096 elements
BWD_SEED_PARAMS = {
    "FUSED_BLOCK_V": 4096,
    "FUSED_ROWS": 1,
    "FUSED_WARPS": 8,
    "FUSED_STAGES": 2,
    "FUSED_LSE": "chunk",
    "FUSED_EVICTION": "",
    "FUSED_PROGRAMS_PER_SM": 0,
    "SCALE_BLOCK": 4096,
}
BWD_KNOBS = {
    "FUSED_BLOCK_V": (256, 512, 1024, 2048, 4096, 8192),
    "FUSED_ROWS": (1, 2, 4),
    "FUSED_WARPS": (1, 2, 4, 8, 16),
    "FUSED_STAGES": (1, 2, 3, 4),
    "FUSED_LSE": ("chunk", "lane"),
    "FUSED_EVICTION": ("", "evict_first"),
    "FUSED_PROGRAMS_PER_SM": (0, 1, 2, 3, 4),
    "SCALE_BLOCK": (1024, 2048, 4096, 8192),
}


class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, params, bwd_params):
        if logits.dim() != 2 or targets.shape != (logits.shape[0],) or targets.dtype != torch.int64:
            raise ValueError(f"cross_entropy wants logits [M, V] and int64 targets [M]; got {tuple(logits.shape)}, "
                             f"{tuple(targets.shape)} {targets.dtype}")
        ctx.bwd_params = bwd_params
        ctx.used = False
        if not ctx.needs_input_grad[0]:
            # no gradient wanted: the plain forward at the forward's knobs, nothing saved
            return _cross_entropy_fwd(logits, targets, **params)
        # the gradient is made here, in the pass that reads the logits for the loss, at the backward's knobs
        loss, dlogits = _fused_fwd(logits, targets, **bwd_params)
        ctx.save_for_backward(dlogits)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.used:
            raise RuntimeError("the fused cross-entropy scales its saved gradient in place, so its backward "
                               "runs once per forward (no retain_graph)")
        ctx.used = True
        (dlogits,) = ctx.saved_tensors
        # the buffer _fused_fwd allocated, no view of the logits or of grad_loss: scaling it in place is safe
        _scale_grad_(dlogits, grad_loss, **ctx.bwd_params)
        return dlogits, None, None, None


def cross_entropy_fused(logits, targets):
    """Mean cross-entropy (ignore_index -1), differentiable in logits; the gradient is made in the forward."""
    return CrossEntropyFunction.apply(logits, targets, SEED_PARAMS, BWD_SEED_PARAMS)


SEED_PARAMS = {
    "BLOCK_V": 4096,
    "ROWS": 1,
    "NUM_WARPS": 8,
    "NUM_STAGES": 1,
    "SPLIT_V": 1,
    "LSE": "chunk",
    "EVICTION": "",
}


def cross_entropy(logits, targets):
    """The seed kernel, differentiable: the mean loss as a 0-d float32 tensor. Without a gradient wanted it
    runs the forward kernels alone; with one, the fused kernel that writes the gradient as it goes."""
    return CrossEntropyFunction.apply(logits, targets, SEED_PARAMS, BWD_SEED_PARAMS)


# ----------------------------------------------------------------------------- spec

def _make_inputs(shape: Shape, dtype: torch.dtype, seed: int, device: str):
    M, V = shape.dims["M"], shape.dims["V"]
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn((M, V), generator=gen, device=device) * 2.0
    targets = torch.randint(0, V, (M,), generator=gen, device=device)
    # one confident logit per row (15 to 25 above the rest): exp would overflow without the max shift;
    # about a third of the rows are confident of their target, so their loss is near zero
    top = torch.randint(0, V, (M,), generator=gen, device=device)
    hit = torch.rand((M,), generator=gen, device=device) < 0.35
    top = torch.where(hit, targets, top)
    boost = 15.0 + 10.0 * torch.rand((M,), generator=gen, device=device)
    logits[torch.arange(M, device=device), top] += boost
    # about one row in ten is left out (target -1), always at least one when M > 1, never all of them
    ignored = torch.rand((M,), generator=gen, device=device) < 0.1
    if M > 1:
        ignored[M - 1] = True
    ignored[0] = False
    targets = torch.where(ignored, torch.full_like(targets, -1), targets)
    return logits.to(dtype), targets


def _large_mean(inputs, seed: int):
    """Every row offset by +-200 to +-1000: the loss is the same, but exp without the row's max subtracted
    overflows (positive offsets) or every term underflows to 0 and log(0) = -inf (negative ones)."""
    logits, targets = inputs
    gen = generator(seed, logits.device)
    M = logits.shape[0]
    offset = signs((M, 1), gen, logits.device) * uniform((M, 1), 200.0, 1000.0, gen, logits.device)
    return (logits.float() + offset).to(logits.dtype), *copies(targets)


def _constant_rows(inputs, seed: int):
    """A quarter of the rows with every logit equal (a tie over the whole row: the loss is log V); the
    other rows as made."""
    logits, targets = inputs
    M = logits.shape[0]
    gen = generator(seed, logits.device)
    rows = some_rows(M, 0.25, gen, logits.device)
    out = logits.float().clone()
    out[rows] = 3.0 * torch.randn((len(rows), 1), generator=gen, device=logits.device)
    return out.to(logits.dtype), *copies(targets)


def _wide_range(inputs, seed: int):
    """Rows of normal draws scaled by 2**-8 .. 2**10 (the same for every dtype: float16 holds 4096 and a row
    of that spread is one-hot already): from nearly uniform softmaxes to losses in the thousands."""
    logits, targets = inputs
    M, V = logits.shape
    gen = generator(seed, logits.device)
    scale = log_uniform((M, 1), -8.0, 10.0, gen, logits.device)
    out = scale * torch.randn((M, V), generator=gen, device=logits.device)
    return out.to(logits.dtype), *copies(targets)


def _strided(inputs, seed: int):
    """The logits as a view into a wider buffer: rows farther apart than V, NaN in the columns outside."""
    logits, targets = inputs
    return row_strided(logits, generator(seed, logits.device)), *copies(targets)


VARIANTS = {
    "large_mean": _large_mean,
    "constant_rows": _constant_rows,
    "wide_range": _wide_range,
    "strided": _strided,
}


def _reference(logits, targets):
    return torch.nn.functional.cross_entropy(logits.to(torch.float64), targets, ignore_index=-1)


def _eager(logits, targets):
    # NanoGPT's loss: the logits upcast to float32
    return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=-1)


def _bytes_moved(shape: Shape, dtype: torch.dtype) -> int:
    M, V = shape.dims["M"], shape.dims["V"]
    size = torch.tensor([], dtype=dtype).element_size()
    return M * V * size + M * 8 + 4  # read the logits and the int64 targets, write the float32 loss


def _flops(shape: Shape) -> int:
    M, V = shape.dims["M"], shape.dims["V"]
    return 4 * M * V  # max, subtract, exp, add per logit


def _backward_bytes(shape: Shape, dtype: torch.dtype) -> int:
    M, V = shape.dims["M"], shape.dims["V"]
    size = torch.tensor([], dtype=dtype).element_size()
    # the gradient of the logits: written once (by the fused forward, or by a backward of its own)
    return M * V * size


def _context(shape: Shape, sm_count: int) -> dict:
    return {
        "row_wise": True,
        "rows_over_2x_sms": shape.dims["M"] > 2 * sm_count,
        "width": shape.dims["V"],
    }


def _shape(name, m, v, origin, timed=False):
    return Shape(name=name, dims={"M": m, "V": v}, origin=origin, timed=timed)


TEMPLATE = TemplateSpace(
    params={
        "BLOCK_V": (256, 512, 1024, 2048, 4096, 8192),
        "ROWS": (1, 2, 4),
        "NUM_WARPS": (1, 2, 4, 8, 16),
        "NUM_STAGES": (1, 2, 3, 4),
        "SPLIT_V": (1, 2, 4, 8, 16),
        "LSE": ("chunk", "lane"),
        "EVICTION": ("", "evict_first"),
        **BWD_KNOBS,
    },
    seed={**SEED_PARAMS, **BWD_SEED_PARAMS},
    render=lambda params: render_candidate(
        op="cross_entropy",
        entry="cross_entropy",
        entry_args=("logits", "targets"),
        launcher=_cross_entropy_fwd,
        kernels=(_cross_entropy_fwd_kernel, _cross_entropy_mean_kernel),
        params=params,
        title="Cross-entropy candidate, forward and backward",
        # the Function's forward runs _fused_fwd when a gradient is wanted and its backward _scale_grad_
        backward=Backward(CrossEntropyFunction, _scale_grad_,
                          (_count_valid_kernel, _scale_in_place_kernel, _fused_fwd), frozenset(BWD_KNOBS)),
    ),
    backward_knobs=frozenset(BWD_KNOBS),
)

SPEC = OpSpec(
    name="cross_entropy",
    entry="cross_entropy",
    signature=("cross_entropy(logits: [M, V], targets: [M] int64) -> [] float32 mean loss, ignore_index -1; the "
               "rows of logits may be any distance apart (columns contiguous), targets contiguous"),
    description="mean cross-entropy of a [M, V] logits tensor against int64 targets; rows with target -1 "
                "are left out (the rows are B*T tokens, V the vocabulary)",
    make_inputs=_make_inputs,
    reference=_reference,
    eager=_eager,
    shapes=(
        _shape("gpt2-B8-T1024", 8192, 50304, "gpt2", timed=True),
        _shape("shakespeare-B64-T256", 16384, 65, "shakespeare", timed=True),
        _shape("gpt2-B1-T128", 128, 50304, "gpt2"),
        _shape("one-row", 1, 50304, "edge"),
        _shape("vocab-50257", 31, 50257, "edge"),  # GPT-2's own vocabulary: odd, a multiple of no chunk
        _shape("odd-rows-383", 1001, 383, "edge"),
        _shape("odd-rows-385", 257, 385, "edge"),
        _shape("width-1023", 333, 1023, "edge"),
        _shape("width-1025", 77, 1025, "edge"),
    ),
    interpreter_shapes=(
        _shape("shakespeare-vocab", 16, 65, "shakespeare"),
        _shape("gpt2-vocab", 2, 50304, "gpt2"),  # several chunks, the last one partial
        _shape("one-row", 1, 1025, "edge"),
        _shape("odd-rows-383", 13, 383, "edge"),
        _shape("odd-rows-385", 9, 385, "edge"),
        _shape("width-1023", 5, 1023, "edge"),
        _shape("width-1025", 3, 1025, "edge"),
        # many rows: the mean kernel loops over blocks of 1024 rows, with a partial last one; narrow rows are
        # packed 32 to a program, so this costs the seed only ~0.3 s a call under the interpreter
        _shape("rows-2051", 2051, 65, "edge"),
    ),
    gpu_dtypes=("bfloat16", "float16", "float32"),
    cpu_dtypes=("float32", "float16", "bfloat16"),
    # the loss is computed in float32 whatever the logits' dtype, and compared with a float64 reference
    # computed from the same (rounded) logits, so one tolerance fits every dtype
    tolerances={
        "float32": Tolerance(atol=1e-4, rtol=1e-5),
        "float16": Tolerance(atol=1e-4, rtol=1e-5),
        "bfloat16": Tolerance(atol=1e-4, rtol=1e-5),
    },
    bytes_moved=_bytes_moved,
    flops=_flops,
    backward_bytes=_backward_bytes,
    bound="memory",
    has_backward=True,
    template=TEMPLATE,
    context=_context,
    tags=("row_wise", "reduction"),
    variants=VARIANTS,
)
