"""Cross-entropy forward candidate

Generated from the cross_entropy template. Parameters: BLOCK_V=4096, ROWS=1, NUM_WARPS=8, NUM_STAGES=2, SPLIT_V=1, LSE='chunk', EVICTION='evict_first'
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
    lse = m + tl.log(s)
    if SPLITS > 1:
        tl.store(PART + rows * SPLITS + split, lse, mask=row_mask)
    else:
        t = tl.load(TARGETS + rows, mask=row_mask, other=-1)
        valid = row_mask & (t != -1)
        # a target outside [0, V) is the caller's error; the mask keeps it from reading out of bounds
        x_t = tl.load(LOGITS + rows * stride_l + t, mask=valid & (t >= 0) & (t < V), other=0.0).to(tl.float32)
        tl.store(LOSS + rows, tl.where(valid, lse - x_t, 0.0), mask=row_mask)
        if GRAD:
            scale = tl.where(valid, 1.0 / tl.load(N_VALID).to(tl.float32), 0.0)
            d_ptr = DLOGITS + rows[:, None] * stride_d
            # second sweep: the row was just read, so it comes back from L2
            for start in range(0, V, BLOCK_V):
                c = start + cols
                mask = row_mask[:, None] & (c < V)[None, :]
                x = tl.load(row_ptr + c[None, :], mask=mask, other=0.0).to(tl.float32)
                p = tl.exp(x - lse[:, None])
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


PARAMS = {
    'BLOCK_V': 4096,
    'ROWS': 1,
    'NUM_WARPS': 8,
    'NUM_STAGES': 2,
    'SPLIT_V': 1,
    'LSE': 'chunk',
    'EVICTION': 'evict_first',
}


def cross_entropy(logits, targets):
    return _cross_entropy_fwd(logits, targets, **PARAMS)
