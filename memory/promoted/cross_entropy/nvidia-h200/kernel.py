"""Cross-entropy candidate, forward and backward

Generated from the cross_entropy template. Parameters: BLOCK_V=4096, ROWS=1, NUM_WARPS=8, NUM_STAGES=1, SPLIT_V=1, LSE='chunk', EVICTION='', FUSED_BLOCK_V=4096, FUSED_ROWS=1, FUSED_WARPS=8, FUSED_STAGES=2, FUSED_LSE='chunk', FUSED_EVICTION='', SCALE_BLOCK=4096
"""
import math
import typing

import torch
import triton
import triton.language as tl


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
    pid = tl.program_id(0)
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
                       dlogits=None, n_valid=None):
    """Validate, allocate, launch. Parameters in capitals are the template's knobs; `dlogits` and
    `n_valid` are given by the fused path only, which then gets the gradient written too."""
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
        _cross_entropy_fwd_kernel[(triton.cdiv(M, rows) * splits,)](
            logits, targets, loss, part, dlogits if grad else loss, n_valid if grad else targets,
            logits.stride(0), dlogits.stride(0) if grad else 0, M, V, chunks_per_split,
            BLOCK_V=block_v, ROWS=rows, SPLITS=splits, LSE=LSE, EVICTION=EVICTION, GRAD=grad,
            INDEX_64=index_64, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )
    _cross_entropy_mean_kernel[(1,)](
        loss, part, logits, targets, out, logits.stride(0), M, V,
        SPLITS=splits, SPLITS_P2=triton.next_power_of_2(splits), BLOCK_R=1024, INDEX_64=index_64,
        num_warps=4,
    )
    return out


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
               FUSED_EVICTION, SCALE_BLOCK):
    """(mean loss, its gradient for an incoming gradient of 1), both from one pass over the logits.
    Parameters in capitals are the backward's template knobs (the fused kernel makes the gradient, so its
    tuning is the backward's): FUSED_BLOCK_V columns a chunk, FUSED_ROWS rows a program (at least; narrow
    rows are packed further), FUSED_WARPS and FUSED_STAGES its num_warps and num_stages, FUSED_LSE the form
    of the online log-sum-exp ("chunk" or "lane"), FUSED_EVICTION the cache hint of the first read of the
    logits ("" or "evict_first"). A row is never split over programs: the gradient sweep needs the whole
    row's lse. SCALE_BLOCK belongs to _scale_grad_ and is unused here: both take the same backward point."""
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    targets = targets.contiguous()
    M, V = logits.shape
    dlogits = torch.empty((M, V), dtype=logits.dtype, device=logits.device)
    n_valid = torch.empty((1,), dtype=torch.int32, device=logits.device)
    _count_valid_kernel[(1,)](targets, n_valid, targets.numel(), BLOCK_R=1024)
    loss = _cross_entropy_fwd(logits, targets, BLOCK_V=FUSED_BLOCK_V, ROWS=FUSED_ROWS, NUM_WARPS=FUSED_WARPS,
                              NUM_STAGES=FUSED_STAGES, SPLIT_V=1, LSE=FUSED_LSE, EVICTION=FUSED_EVICTION,
                              dlogits=dlogits, n_valid=n_valid)
    return loss, dlogits


def _scale_grad_(dlogits, grad_loss, *, FUSED_BLOCK_V, FUSED_ROWS, FUSED_WARPS, FUSED_STAGES, FUSED_LSE,
                 FUSED_EVICTION, SCALE_BLOCK):
    """dlogits *= grad_loss in place (the kernel returns at once when it is 1, as loss.backward() passes).
    grad_loss is a one-element tensor on dlogits' device, of any float dtype (the kernel reads it in fp32).
    SCALE_BLOCK, the elements a program scales per step, is the one knob of the backward's this launcher
    uses; the FUSED_* knobs belong to _fused_fwd and are unused here: both take the same backward point."""
    numel = dlogits.numel()
    if numel:
        sms = torch.cuda.get_device_properties(dlogits.device).multi_processor_count if dlogits.is_cuda else 4
        grid = max(1, min(triton.cdiv(numel, SCALE_BLOCK), 4 * sms))
        _scale_in_place_kernel[(grid,)](dlogits, grad_loss, numel, BLOCK=SCALE_BLOCK, num_warps=8)


PARAMS = {
    'BLOCK_V': 4096,
    'ROWS': 1,
    'NUM_WARPS': 8,
    'NUM_STAGES': 1,
    'SPLIT_V': 1,
    'LSE': 'chunk',
    'EVICTION': '',
}


BWD_PARAMS = {
    'FUSED_BLOCK_V': 4096,
    'FUSED_ROWS': 1,
    'FUSED_WARPS': 8,
    'FUSED_STAGES': 2,
    'FUSED_LSE': 'chunk',
    'FUSED_EVICTION': '',
    'SCALE_BLOCK': 4096,
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


def cross_entropy(logits, targets):
    return CrossEntropyFunction.apply(logits, targets, {**PARAMS}, {**BWD_PARAMS})
