"""Causal self-attention candidate, forward and backward

Generated from the attention template. Parameters: BLOCK_M=64, BLOCK_N=64, NUM_WARPS=4, NUM_STAGES=3, MASK_VALUE=-1e+20, USE_TMA=False, V_EARLY=True, LONGEST_FIRST=True, DKDV_BLOCK_M=64, DKDV_BLOCK_N=64, DKDV_WARPS=4, DKDV_STAGES=2, DKDV_SPLIT_DIAGONAL=False, DQ_BLOCK_M=64, DQ_BLOCK_N=64, DQ_WARPS=4, DQ_STAGES=2, DQ_SPLIT_DIAGONAL=False
"""
import math
import typing

import torch
import triton
import triton.language as tl


@triton.jit
def _attention_load_kv(
    src,            # a tensor descriptor over this head's [T, D] keys or values, or a pointer to row start_n
    tile,           # [BLOCK_N, D] element offsets of a tile from its first row
    start_n, T,
    BLOCK_N: tl.constexpr, USE_TMA: tl.constexpr,
    MASKED: tl.constexpr,   # the tile may pass row T (pointers only: a descriptor reads zeros there)
):
    if USE_TMA:
        x = src.load([start_n, 0])
    elif MASKED:
        x = tl.load(src + tile, mask=(start_n + tl.arange(0, BLOCK_N))[:, None] < T, other=0.0)
    else:
        x = tl.load(src + tile)
    return x


@triton.jit
def _attention_fwd_inner(
    acc, l_i, m_i,   # running output [BLOCK_M, D], row sums and row maxima [BLOCK_M], all fp32
    q,               # [BLOCK_M, D] queries
    K, V,            # tensor descriptors over this head's [T, D] keys and values if USE_TMA, else
                     # pointers to their row `lo`
    stride_t,        # elements between tokens in qkv
    qk_scale,        # 1/sqrt(D) * log2(e)
    lo, hi,          # key range of this loop, lo a multiple of BLOCK_N
    start_m, T,      # first query of the block, sequence length
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK_VALUE: tl.constexpr,
    DIAGONAL: tl.constexpr,     # blocks that cross the diagonal: causal mask and key bounds needed
    USE_TMA: tl.constexpr, V_EARLY: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    # tile offsets stay small (BLOCK_N rows); the pointers advance in 64 bits
    tile = offs_n[:, None] * stride_t + offs_d[None, :]
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        if V_EARLY:
            v = _attention_load_kv(V, tile, start_n, T, BLOCK_N, USE_TMA, DIAGONAL)
        k = _attention_load_kv(K, tile, start_n, T, BLOCK_N, USE_TMA, DIAGONAL)
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if DIAGONAL:
            # every query row keeps key start_m // BLOCK_N * BLOCK_N <= its own index unmasked in the
            # first diagonal block, and that block (or an off-diagonal one) is seen first: no row is
            # ever fully masked, so even MASK_VALUE = -inf cannot turn a row max into -inf and exp2 into NaN
            qk = tl.where(offs_m[:, None] >= (start_n + offs_n)[None, :], qk, MASK_VALUE)
        # the scale rides on the max subtraction (one FMA a score); folded into q instead it would cost
        # the same and round q * scale back to 16 bits, which nearly doubles the bf16 output error
        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if not V_EARLY:
            v = _attention_load_kv(V, tile, start_n, T, BLOCK_N, USE_TMA, DIAGONAL)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
        m_i = m_new
        if not USE_TMA:
            K += BLOCK_N * stride_t
            V += BLOCK_N * stride_t
    return acc, l_i, m_i


@triton.jit
def _attention_fwd_kernel(
    QKV,            # [B, T, 3C] packed q | k | v; columns contiguous
    Y,              # [B, T, C] output, head h at columns h*D
    LSE,            # [B*H, T] float32 log2-sum-exp of the scaled scores, written if STORE_LSE
    stride_b, stride_t,     # elements between batches and between tokens of QKV
    stride_yb, stride_yt,   # the same for Y
    T, H,           # sequence length, heads
    C,              # model width H * D: the column offset from q to k and from k to v
    qk_scale,       # 1/sqrt(D) * log2(e): scores in log2 units, so exp2 replaces exp
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,      # queries per program
    BLOCK_N: tl.constexpr,      # keys per step
    MASK_VALUE: tl.constexpr,   # score of a masked key (-1e20 or -inf)
    USE_TMA: tl.constexpr,      # load q, k, v through device-side tensor descriptors (Hopper's TMA)
    V_EARLY: tl.constexpr,      # issue the V load before the QK^T product instead of after the softmax
    LONGEST_FIRST: tl.constexpr,  # axis 0 = batch*head and query blocks from the last one down
    STORE_LSE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 (no TF32), "tf32" (the default) otherwise
):
    if LONGEST_FIRST:
        # the hardware launches axis 0 first: every head's longest (last) query block goes out in the
        # first wave and the short ones fill the tail
        bh = tl.program_id(0)
        m_block = tl.num_programs(1) - 1 - tl.program_id(1)
    else:
        m_block = tl.program_id(0)
        bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = m_block * BLOCK_M
    # int64: batch * stride passes 2**31 elements at large B*T*C
    head = b.to(tl.int64) * stride_b + h * HEAD_DIM
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    # causal: keys [0, lo) lie wholly below the diagonal, [lo, hi) cross it
    lo = start_m // BLOCK_N * BLOCK_N
    hi = tl.minimum(start_m + BLOCK_M, T)
    if USE_TMA:
        q_desc = tl.make_tensor_descriptor(QKV + head, shape=[T, HEAD_DIM], strides=[stride_t, 1],
                                           block_shape=[BLOCK_M, HEAD_DIM])
        k_src = tl.make_tensor_descriptor(QKV + head + C, shape=[T, HEAD_DIM], strides=[stride_t, 1],
                                          block_shape=[BLOCK_N, HEAD_DIM])
        v_src = tl.make_tensor_descriptor(QKV + head + 2 * C, shape=[T, HEAD_DIM], strides=[stride_t, 1],
                                          block_shape=[BLOCK_N, HEAD_DIM])
        q = q_desc.load([start_m, 0])
        k_diag = k_src
        v_diag = v_src
    else:
        q_ptrs = QKV + head + start_m.to(tl.int64) * stride_t
        q_ptrs += tl.arange(0, BLOCK_M)[:, None] * stride_t + offs_d[None, :]
        q = tl.load(q_ptrs, mask=offs_m[:, None] < T, other=0.0)
        k_src = QKV + head + C
        v_src = QKV + head + 2 * C
        k_diag = k_src + lo.to(tl.int64) * stride_t
        v_diag = v_src + lo.to(tl.int64) * stride_t
    m_i = tl.full([BLOCK_M], MASK_VALUE, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, k_src, v_src, stride_t, qk_scale, 0, lo,
                                         start_m, T, HEAD_DIM, BLOCK_M, BLOCK_N, MASK_VALUE, False,
                                         USE_TMA, V_EARLY, DOT_PRECISION)
    acc, l_i, m_i = _attention_fwd_inner(acc, l_i, m_i, q, k_diag, v_diag, stride_t, qk_scale, lo, hi,
                                         start_m, T, HEAD_DIM, BLOCK_M, BLOCK_N, MASK_VALUE, True,
                                         USE_TMA, V_EARLY, DOT_PRECISION)
    acc = acc / l_i[:, None]
    row_mask = offs_m < T
    y_ptrs = Y + b.to(tl.int64) * stride_yb + start_m.to(tl.int64) * stride_yt + h * HEAD_DIM
    y_ptrs += tl.arange(0, BLOCK_M)[:, None] * stride_yt + offs_d[None, :]
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=row_mask[:, None])
    if STORE_LSE:
        tl.store(LSE + bh.to(tl.int64) * T + offs_m, m_i + tl.log2(l_i), mask=row_mask)


def _attention_fwd(qkv, n_head, BLOCK_M, BLOCK_N, NUM_WARPS, NUM_STAGES, MASK_VALUE, USE_TMA, V_EARLY,
                   LONGEST_FIRST, lse=None):
    """Validate, allocate, launch. Parameters in capitals are the template's knobs; `lse` ([B*H, T]
    float32), when given, receives the log2-sum-exp the backward needs."""
    if qkv.dim() != 3 or qkv.shape[2] % 3 != 0:
        raise ValueError(f"attention wants qkv [B, T, 3C]; got {tuple(qkv.shape)}")
    B, T, C3 = qkv.shape
    C = C3 // 3
    if n_head < 1 or C % n_head != 0:
        raise ValueError(f"width {C} does not split into {n_head} heads")
    D = C // n_head
    if D < 16 or D > 256 or D & (D - 1) != 0:
        raise ValueError(f"head dim {D} must be a power of two in [16, 256]")
    if qkv.stride(2) != 1:
        qkv = qkv.contiguous()
    y = torch.empty((B, T, C), dtype=qkv.dtype, device=qkv.device)
    if B * T == 0:
        return y
    size = qkv.element_size()
    # a descriptor needs a 16-byte aligned base and 16-byte multiple strides; every head's base is
    # base + (b * stride_b + h * D + j * C) elements, so all of these must be multiples of 16 bytes
    tma = USE_TMA and qkv.data_ptr() % 16 == 0 and all(
        (n * size) % 16 == 0 for n in (qkv.stride(0), qkv.stride(1), C, D))
    if tma:
        device = qkv.device
        triton.set_allocator(lambda nbytes, alignment, stream: torch.empty(nbytes, dtype=torch.int8,
                                                                             device=device))
    bh = B * n_head
    m_blocks = triton.cdiv(T, BLOCK_M)
    # grid axis 1 holds at most 65535 programs: B*H beyond that goes on axis 0 whatever the order
    longest_first = LONGEST_FIRST or bh > 65535
    grid = (bh, m_blocks) if longest_first else (m_blocks, bh)
    # float32 runs its dots on FMA units (no TF32) with tiles twice the size of 16-bit ones; the knobs
    # are tuned for 16-bit, and multi-buffered fp32 K/V tiles at BLOCK_N = 128 would overflow shared
    # memory, so float32 (checked, never timed) goes unpipelined
    stages = NUM_STAGES if size < 4 else 1
    _attention_fwd_kernel[grid](
        qkv, y, y if lse is None else lse, qkv.stride(0), qkv.stride(1), y.stride(0), y.stride(1),
        T, n_head, C, math.log2(math.e) / math.sqrt(D),
        HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, MASK_VALUE=float(MASK_VALUE), USE_TMA=tma,
        V_EARLY=V_EARLY, LONGEST_FIRST=longest_first, STORE_LSE=lse is not None,
        DOT_PRECISION="ieee" if qkv.dtype == torch.float32 else "tf32",
        num_warps=NUM_WARPS, num_stages=stages,
    )
    return y


@triton.jit
def _attention_bwd_dkdv_inner(
    dk, dv,          # running gradients [BLOCK_N, D] of this program's keys and values, fp32
    k, v,            # [BLOCK_N, D] this program's keys and values
    Q, DYH,          # this head's first query in QKV and its first row of dy in DY (int64 offsets applied)
    LSE, DELTA,      # this head's rows of the [B*H, T] log2-sum-exp and delta
    offs_n,          # [BLOCK_N] indices of the keys
    lo, hi,          # query range of this loop, lo a multiple of BLOCK_M
    T, stride_t, stride_dt, qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    CAUSAL: tl.constexpr,   # blocks that cross the diagonal: causal mask and query bounds needed
    DOT_PRECISION: tl.constexpr,
):
    # the tile pointers start from this loop's own `lo` rather than coming out of the loop before: only dk
    # and dv then live from one loop into the next, not two tiles of 64-bit pointers as well
    offs_d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + tl.cast(lo, tl.int64) * stride_t
    q_ptrs += tl.arange(0, BLOCK_M)[:, None] * stride_t + offs_d[None, :]
    dy_ptrs = DYH + tl.cast(lo, tl.int64) * stride_dt
    dy_ptrs += tl.arange(0, BLOCK_M)[:, None] * stride_dt + offs_d[None, :]
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < T
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
        dy = tl.load(dy_ptrs, mask=row_ok[:, None], other=0.0)
        lse = tl.load(LSE + offs_m, mask=row_ok, other=0.0)
        delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
        # transposed probabilities [BLOCK_N, BLOCK_M], recomputed from the saved log-sum-exp
        pt = tl.exp2(tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale - lse[None, :])
        if CAUSAL:
            pt = tl.where((offs_m[None, :] >= offs_n[:, None]) & row_ok[None, :], pt, 0.0)
        # off the diagonal no select at all: a query row past T loads q = dy = 0 and lse = delta = 0, so its
        # pt is exp2(0) = 1 and both its dv term (pt * dy) and its dk term (pt * (dy.v - delta)) are exactly 0
        dv = tl.dot(pt.to(dy.dtype), dy, dv, input_precision=DOT_PRECISION)
        dpt = tl.dot(v, tl.trans(dy), input_precision=DOT_PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
        q_ptrs += BLOCK_M * stride_t
        dy_ptrs += BLOCK_M * stride_dt
    return dk, dv


@triton.jit
def _attention_bwd_dkdv_kernel(
    QKV,            # [B, T, 3C] forward input, contiguous
    DY,             # [B, T, C] gradient of the output
    LSE,            # [B*H, T] float32 log2-sum-exp from the forward
    DELTA,          # [B*H, T] float32 rowsum(dy * y), written by the dQ kernel
    DQKV,           # [B, T, 3C] gradient of qkv, laid out like QKV; this kernel writes the k and v columns
    stride_b, stride_t,     # of QKV and DQKV
    stride_db, stride_dt,   # of DY
    T, H, C,
    qk_scale, sm_scale,     # 1/sqrt(D) * log2(e) and 1/sqrt(D)
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries per step
    BLOCK_N: tl.constexpr,  # keys per program
    SPLIT_DIAGONAL: tl.constexpr,  # causal mask on the query blocks that cross the diagonal only, or on all
    DOT_PRECISION: tl.constexpr,
):
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_n = tl.program_id(0) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    head = b.to(tl.int64) * stride_b + h * HEAD_DIM
    kv_rows = offs_n.to(tl.int64)[:, None] * stride_t + offs_d[None, :]
    kv_mask = offs_n[:, None] < T
    k = tl.load(QKV + head + C + kv_rows, mask=kv_mask, other=0.0)
    v = tl.load(QKV + head + 2 * C + kv_rows, mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    # causal: only queries at or after this key block see it
    lo = start_n // BLOCK_M * BLOCK_M
    dy_head = DY + b.to(tl.int64) * stride_db + h * HEAD_DIM
    lse_row = LSE + bh.to(tl.int64) * T
    delta_row = DELTA + bh.to(tl.int64) * T
    if SPLIT_DIAGONAL:
        # query blocks [lo, mid) start before the block's last key and may see keys after them; from mid on
        # every query sees every key of the block. mid < T except in the last query block
        diag_end = tl.minimum(start_n + BLOCK_N, T)
        mid = lo + tl.cdiv(diag_end - lo, BLOCK_M) * BLOCK_M
        dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, QKV + head, dy_head, lse_row, delta_row, offs_n, lo,
                                           diag_end, T, stride_t, stride_dt, qk_scale, HEAD_DIM, BLOCK_M, True,
                                           DOT_PRECISION)
        dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, QKV + head, dy_head, lse_row, delta_row, offs_n, mid,
                                           T, T, stride_t, stride_dt, qk_scale, HEAD_DIM, BLOCK_M, False,
                                           DOT_PRECISION)
    else:
        dk, dv = _attention_bwd_dkdv_inner(dk, dv, k, v, QKV + head, dy_head, lse_row, delta_row, offs_n, lo,
                                           T, T, stride_t, stride_dt, qk_scale, HEAD_DIM, BLOCK_M, True,
                                           DOT_PRECISION)
    tl.store(DQKV + head + C + kv_rows, (dk * sm_scale).to(DQKV.dtype.element_ty), mask=kv_mask)
    tl.store(DQKV + head + 2 * C + kv_rows, dv.to(DQKV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _attention_bwd_dq_inner(
    dq,              # running gradient [BLOCK_M, D] of this program's queries, fp32
    q, dy,           # [BLOCK_M, D] this program's queries and output gradients
    lse, delta,      # [BLOCK_M] their log2-sum-exp and rowsum(dy * y), fp32
    K, V,            # this head's first key and first value in QKV (int64 offsets applied)
    offs_m,          # [BLOCK_M] indices of the queries
    lo, hi,          # key range of this loop, lo a multiple of BLOCK_N
    T, stride_t, qk_scale,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr,   # blocks that cross the diagonal: causal mask and key bounds needed
    DOT_PRECISION: tl.constexpr,
):
    # tile pointers from this loop's own `lo`, as in _attention_bwd_dkdv_inner
    kv_tile = tl.cast(lo, tl.int64) * stride_t + tl.arange(0, BLOCK_N)[:, None] * stride_t \
        + tl.arange(0, HEAD_DIM)[None, :]
    k_ptrs = K + kv_tile
    v_ptrs = V + kv_tile
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        if CAUSAL:
            kv_mask = offs_n[:, None] < T
            k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
            v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        else:
            # below the diagonal every key precedes this block's first query, so it lies inside [0, T)
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        p = tl.exp2(tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale - lse[:, None])
        if CAUSAL:
            p = tl.where(offs_m[:, None] >= offs_n[None, :], p, 0.0)
        dp = tl.dot(dy, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
        k_ptrs += BLOCK_N * stride_t
        v_ptrs += BLOCK_N * stride_t
    return dq


@triton.jit
def _attention_bwd_dq_kernel(
    QKV,            # [B, T, 3C] forward input, contiguous
    Y,              # [B, T, C] forward output, contiguous
    DY,             # [B, T, C] gradient of the output
    LSE,            # [B*H, T] float32 log2-sum-exp from the forward
    DELTA,          # [B*H, T] float32 rowsum(dy * y) (written here for the dK/dV kernel, run after)
    DQKV,           # [B, T, 3C] gradient of qkv; this kernel writes the q columns
    stride_b, stride_t,     # of QKV and DQKV
    stride_db, stride_dt,   # of DY
    stride_yb, stride_yt,   # of Y
    T, H, C,
    qk_scale, sm_scale,     # 1/sqrt(D) * log2(e) and 1/sqrt(D)
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per step
    SPLIT_DIAGONAL: tl.constexpr,  # causal mask on the key blocks that cross the diagonal only, or on all
    DOT_PRECISION: tl.constexpr,
):
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = tl.program_id(0) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    rows = offs_m.to(tl.int64)[:, None]
    head = b.to(tl.int64) * stride_b + h * HEAD_DIM
    q = tl.load(QKV + head + rows * stride_t + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    dy = tl.load(DY + b.to(tl.int64) * stride_db + rows * stride_dt + h * HEAD_DIM + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    # delta here rather than in a kernel of its own: this program reads its dy rows anyway
    y = tl.load(Y + b.to(tl.int64) * stride_yb + rows * stride_yt + h * HEAD_DIM + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    delta = tl.sum(y.to(tl.float32) * dy.to(tl.float32), axis=1)
    stats = bh.to(tl.int64) * T
    tl.store(DELTA + stats + offs_m, delta, mask=row_ok)
    lse = tl.load(LSE + stats + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_head = QKV + head + C
    v_head = QKV + head + 2 * C
    hi = tl.minimum(start_m + BLOCK_M, T)
    if SPLIT_DIAGONAL:
        # key blocks [0, mid) end at or before this block's first query: no mask. A query row past T
        # (row_ok false) has q = dy = 0 and lse = delta = 0, so its ds is exactly 0 there, and it is not stored
        mid = start_m // BLOCK_N * BLOCK_N
        dq = _attention_bwd_dq_inner(dq, q, dy, lse, delta, k_head, v_head, offs_m, 0, mid, T, stride_t, qk_scale,
                                     HEAD_DIM, BLOCK_N, False, DOT_PRECISION)
        dq = _attention_bwd_dq_inner(dq, q, dy, lse, delta, k_head, v_head, offs_m, mid, hi, T, stride_t,
                                     qk_scale, HEAD_DIM, BLOCK_N, True, DOT_PRECISION)
    else:
        dq = _attention_bwd_dq_inner(dq, q, dy, lse, delta, k_head, v_head, offs_m, 0, hi, T, stride_t, qk_scale,
                                     HEAD_DIM, BLOCK_N, True, DOT_PRECISION)
    tl.store(DQKV + head + rows * stride_t + offs_d[None, :], (dq * sm_scale).to(DQKV.dtype.element_ty),
             mask=row_ok[:, None])


def _attention_bwd(dy, qkv, y, lse, n_head, DKDV_BLOCK_M, DKDV_BLOCK_N, DKDV_WARPS, DKDV_STAGES,
                   DKDV_SPLIT_DIAGONAL, DQ_BLOCK_M, DQ_BLOCK_N, DQ_WARPS, DQ_STAGES, DQ_SPLIT_DIAGONAL):
    """dqkv [B, T, 3C] from dy [B, T, C], the forward's contiguous input and output and its log2-sum-exp.
    Parameters in capitals are the backward's template knobs, for each of its two kernels:
    DKDV_* the dK/dV kernel (one program per DKDV_BLOCK_N keys, walking the queries after them
    DKDV_BLOCK_M at a time), DQ_* the dQ kernel (one program per DQ_BLOCK_M queries, walking the keys
    before them DQ_BLOCK_N at a time); *_WARPS and *_STAGES its num_warps and num_stages (software
    pipelining of the walk's loads); *_SPLIT_DIAGONAL walks the blocks that cross the diagonal apart
    from the others, so that the causal mask and bounds checks are paid on the diagonal blocks alone."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    D = C // n_head
    if dy.stride(2) != 1:
        dy = dy.contiguous()
    # every element is written: q columns by the dQ kernel, k and v columns by the dK/dV kernel
    dqkv = torch.empty_like(qkv)
    if B * T == 0:
        return dqkv
    delta = torch.empty((B * n_head, T), dtype=torch.float32, device=qkv.device)
    scales = (math.log2(math.e) / math.sqrt(D), 1.0 / math.sqrt(D))
    precision = "ieee" if qkv.dtype == torch.float32 else "tf32"
    # float32 (checked, never timed) tiles are twice the size of 16-bit ones: on an H200, 128 x 128 tiles
    # pipelined 3 deep asked for 256 KiB of shared memory (4 deep: 320 KiB) of the 227 KiB there are and
    # fit at 2; the knobs are tuned for 16-bit, so float32 keeps at most the seed's 2 stages
    dq_stages, dkdv_stages = (DQ_STAGES, DKDV_STAGES) if qkv.element_size() < 4 else (
        min(DQ_STAGES, 2), min(DKDV_STAGES, 2))
    # the dQ kernel first: it writes delta, which the dK/dV kernel reads for every query of its walk. Each
    # kernel's grid follows its own tiles, so the two may tile T differently
    _attention_bwd_dq_kernel[(triton.cdiv(T, DQ_BLOCK_M), B * n_head)](
        qkv, y, dy, lse, delta, dqkv, qkv.stride(0), qkv.stride(1), dy.stride(0), dy.stride(1),
        y.stride(0), y.stride(1), T, n_head, C, *scales,
        HEAD_DIM=D, BLOCK_M=DQ_BLOCK_M, BLOCK_N=DQ_BLOCK_N, SPLIT_DIAGONAL=DQ_SPLIT_DIAGONAL,
        DOT_PRECISION=precision, num_warps=DQ_WARPS, num_stages=dq_stages)
    _attention_bwd_dkdv_kernel[(triton.cdiv(T, DKDV_BLOCK_N), B * n_head)](
        qkv, dy, lse, delta, dqkv, qkv.stride(0), qkv.stride(1), dy.stride(0), dy.stride(1),
        T, n_head, C, *scales,
        HEAD_DIM=D, BLOCK_M=DKDV_BLOCK_M, BLOCK_N=DKDV_BLOCK_N, SPLIT_DIAGONAL=DKDV_SPLIT_DIAGONAL,
        DOT_PRECISION=precision, num_warps=DKDV_WARPS, num_stages=dkdv_stages)
    return dqkv


PARAMS = {
    'BLOCK_M': 64,
    'BLOCK_N': 64,
    'NUM_WARPS': 4,
    'NUM_STAGES': 3,
    'MASK_VALUE': -1e+20,
    'USE_TMA': False,
    'V_EARLY': True,
    'LONGEST_FIRST': True,
}


BWD_PARAMS = {
    'DKDV_BLOCK_M': 64,
    'DKDV_BLOCK_N': 64,
    'DKDV_WARPS': 4,
    'DKDV_STAGES': 2,
    'DKDV_SPLIT_DIAGONAL': False,
    'DQ_BLOCK_M': 64,
    'DQ_BLOCK_N': 64,
    'DQ_WARPS': 4,
    'DQ_STAGES': 2,
    'DQ_SPLIT_DIAGONAL': False,
}


class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, n_head, params, bwd_params):
        qkv = qkv.contiguous()
        if qkv.dim() != 3:
            raise ValueError(f"attention wants qkv [B, T, 3C]; got {tuple(qkv.shape)}")
        # the log2-sum-exp of every query row: the backward recomputes the probabilities from it
        lse = torch.empty((qkv.shape[0] * n_head, qkv.shape[1]), dtype=torch.float32, device=qkv.device)
        y = _attention_fwd(qkv, n_head, **params, lse=lse)
        ctx.save_for_backward(qkv, y, lse)
        ctx.n_head = n_head
        ctx.bwd_params = bwd_params
        return y

    @staticmethod
    def backward(ctx, dy):
        qkv, y, lse = ctx.saved_tensors
        return _attention_bwd(dy, qkv, y, lse, ctx.n_head, **ctx.bwd_params), None, None, None


def attention(qkv, n_head):
    return AttentionFunction.apply(qkv, n_head, {**PARAMS}, {**BWD_PARAMS})
