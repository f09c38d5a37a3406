"""Causal self-attention as NanoGPT runs it, straight from the packed output of c_attn.

Entry: attention(qkv [B, T, 3C], n_head) -> y [B, T, C] in qkv's dtype, with D = C // n_head (64 in both
models). Head h reads q, k and v at columns h*D, C + h*D and 2C + h*D of each token's row and writes its
output at columns h*D of y: no split, no transpose copies, no [B, H, T, D] tensors.

Forward (FlashAttention-2): one program per (query block, batch*head); the keys are walked in blocks up to
the diagonal only, with an online softmax in fp32 on exp2 and the causal mask applied on the diagonal
blocks alone. The backward (FlashAttention-2 too) recomputes the probabilities from the saved log-sum-exp:
one kernel for dQ per query block, which also writes delta = rowsum(dy * y), then one for dK/dV per key
block, both writing into one dqkv [B, T, 3C] laid out like qkv. The backward is a part of the template
space: each kernel's tiles, warps, stages and whether it masks every block or the diagonal ones alone.

Contract: qkv is contiguous, as c_attn's output always is (a Linear writes a fresh [B, T, 3C] tensor), so a
kernel may index it as B*T rows 3C apart or build tensor descriptors from its shape alone; the launcher
here takes strides all the same. The checks give no strided variant: there is no caller that makes one.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .candidate import Backward, render_candidate
from .spec import OpSpec, Shape, TemplateSpace, Tolerance
from .variants import generator, log_uniform, signs, uniform


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


# the backward's seed, what the backward always ran: 64 x 64 tiles on 4 warps and 2 stages for both kernels
# (tiles that suit head_dim 64), the causal mask on every block. No knob changes what is computed for an
# element: the tiles change at most the order of the fp32 sums, the diagonal split drops selects that keep
# every value as it is
BWD_SEED_PARAMS = {
    "DKDV_BLOCK_M": 64,
    "DKDV_BLOCK_N": 64,
    "DKDV_WARPS": 4,
    "DKDV_STAGES": 2,
    "DKDV_SPLIT_DIAGONAL": False,
    "DQ_BLOCK_M": 64,
    "DQ_BLOCK_N": 64,
    "DQ_WARPS": 4,
    "DQ_STAGES": 2,
    "DQ_SPLIT_DIAGONAL": False,
}
BWD_KNOBS = {
    "DKDV_BLOCK_M": (32, 64, 128),
    "DKDV_BLOCK_N": (32, 64, 128),
    "DKDV_WARPS": (4, 8),
    "DKDV_STAGES": (1, 2, 3, 4),
    "DKDV_SPLIT_DIAGONAL": (False, True),
    "DQ_BLOCK_M": (32, 64, 128),
    "DQ_BLOCK_N": (32, 64, 128),
    "DQ_WARPS": (4, 8),
    "DQ_STAGES": (1, 2, 3, 4),
    "DQ_SPLIT_DIAGONAL": (False, True),
}


# The seed, reasoned for Hopper (compiled with Triton 3.6 for sm_90, not timed): 128 query rows on 8 warps
# give two warpgroups of 64 rows each (wgmma's height), 112 registers a thread and 64 KiB of shared memory,
# so two programs share an SM with four warpgroups between them; Triton issues each wgmma and waits for it,
# so the tensor cores stay busy only by switching warpgroups. On 4 warps the same tile needs 254 of the 255
# registers. 3 stages keep two K/V tiles in flight. Pointer loads, not descriptors: the kernel then needs
# no scratch allocator, and descriptors save registers, not traffic; USE_TMA is for the search to judge.
SEED_PARAMS = {
    "BLOCK_M": 128,
    "BLOCK_N": 64,
    "NUM_WARPS": 8,
    "NUM_STAGES": 3,
    "MASK_VALUE": -1e20,
    "USE_TMA": False,
    "V_EARLY": False,
    "LONGEST_FIRST": True,
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
    """The seed kernel, differentiable: causal self-attention of packed qkv [B, T, 3C] into y [B, T, C]."""
    return AttentionFunction.apply(qkv, n_head, SEED_PARAMS, BWD_SEED_PARAMS)


# ----------------------------------------------------------------------------- spec

def _make_inputs(shape: Shape, dtype: torch.dtype, seed: int, device: str):
    B, T, H, D = (shape.dims[k] for k in ("B", "T", "H", "D"))
    C = H * D
    gen = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn((B, T, 3, H, D), generator=gen, device=device)
    # per-head sharpness: query scales in [0.5, 2.5] give score spreads from flat to peaked softmaxes
    sharpness = 0.5 + 2.0 * torch.rand((H, 1), generator=gen, device=device)
    qkv[:, :, 0] *= sharpness
    return qkv.reshape(B, T, 3 * C).to(dtype), H


def _heads(qkv, n_head):
    """qkv as a float32 copy [B, T, 3, H, D]: index 0, 1, 2 of dimension 2 are q, k, v."""
    B, T, C3 = qkv.shape
    return qkv.float().reshape(B, T, 3, n_head, C3 // 3 // n_head).clone()


def _large_mean(inputs, seed: int):
    """Scores with a large offset per (batch, head), +-90 to +-110 on every query's row alike, over their
    usual spread: in one dimension j of each head every query holds sqrt(D) and every key its own value
    plus the offset, so each score gains exactly the offset. The softmax ignores it, but exp without the
    running max subtracted overflows float32 (past 88.7: positive offsets) or underflows to 0 / 0 (negative
    ones), and scores rounded to 16 bits lose the spread. No larger: the rounding of a float32 score grows
    with it, and at 100 it already costs an honest float32 kernel about half of float32's tolerance."""
    qkv, n_head = inputs
    t = _heads(qkv, n_head)
    B, T, _, H, D = t.shape
    gen = generator(seed, qkv.device)
    offset = signs((B, 1, H, 1), gen, qkv.device) * uniform((B, 1, H, 1), 90.0, 110.0, gen, qkv.device)
    j = torch.randint(0, D, (B, 1, H, 1), generator=gen, device=qkv.device)
    onehot = torch.arange(D, device=qkv.device) == j
    t[:, :, 0] = torch.where(onehot, math.sqrt(D), t[:, :, 0])
    t[:, :, 1] = t[:, :, 1] + onehot * offset
    return t.reshape(qkv.shape).to(qkv.dtype), n_head


def _constant_rows(inputs, seed: int):
    """In about half of the (batch, head) pairs, at least one, every key the same vector (one of the
    pair's own keys, at random): each query's scores tie, and its output is the mean of the values it sees."""
    qkv, n_head = inputs
    t = _heads(qkv, n_head)
    B, T, _, H, D = t.shape
    gen = generator(seed, qkv.device)
    tied = torch.rand((B, H), generator=gen, device=qkv.device) < 0.5
    tied.view(-1)[int(torch.randint(0, B * H, (1,), generator=gen, device=qkv.device))] = True
    k = t[:, :, 1]
    which = torch.randint(0, T, (B, 1, H, 1), generator=gen, device=qkv.device).expand(B, 1, H, D)
    t[:, :, 1] = torch.where(tied[:, None, :, None], k.gather(1, which), k)
    return t.reshape(qkv.shape).to(qkv.dtype), n_head


def _wide_range(inputs, seed: int):
    """Per head, q and k each scaled by 2**-2 .. 2**1.25: softmaxes from flat to about six times sharper
    than made; per token and head, v scaled by 2**-6 .. 2**0. v goes no higher: an honest kernel rounds the
    probabilities to 16 bits before P.V, an error that scales with sum(p |v|) where the tolerance scales
    with |y|, and large values of either sign that cancel in y would fail it."""
    qkv, n_head = inputs
    t = _heads(qkv, n_head)
    B, T, _, H, D = t.shape
    gen = generator(seed, qkv.device)
    t[:, :, 0] *= log_uniform((B, 1, H, 1), -2.0, 1.25, gen, qkv.device)
    t[:, :, 1] *= log_uniform((B, 1, H, 1), -2.0, 1.25, gen, qkv.device)
    t[:, :, 2] *= log_uniform((B, T, H, 1), -6.0, 0.0, gen, qkv.device)
    return t.reshape(qkv.shape).to(qkv.dtype), n_head


# no strided variant: qkv is contiguous by contract (see the module's docstring)
VARIANTS = {
    "large_mean": _large_mean,
    "constant_rows": _constant_rows,
    "wide_range": _wide_range,
}


def _split_heads(qkv, n_head):
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = qkv.split(C, dim=2)
    return [t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v)]


def _eager(qkv, n_head):
    # NanoGPT's CausalSelfAttention.forward between c_attn and c_proj
    B, T, C3 = qkv.shape
    q, k, v = _split_heads(qkv, n_head)
    y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).contiguous().view(B, T, C3 // 3)


def _sdpa(qkv, n_head):
    # torch's attention kernel alone, on the same strided views: the model's eager code above also pays
    # for the copy that merges the heads, which a kernel writing [B, T, C] directly does not need
    q, k, v = _split_heads(qkv, n_head)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _reference(qkv, n_head):
    wide = torch.float64 if qkv.dtype == torch.float32 else torch.float32
    B, T, C3 = qkv.shape
    q, k, v = _split_heads(qkv.to(wide), n_head)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    causal = torch.ones(T, T, dtype=torch.bool, device=qkv.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v
    return y.transpose(1, 2).contiguous().view(B, T, C3 // 3)


def _bytes_moved(shape: Shape, dtype: torch.dtype) -> int:
    B, T, H, D = (shape.dims[k] for k in ("B", "T", "H", "D"))
    size = torch.tensor([], dtype=dtype).element_size()
    return 4 * B * T * H * D * size  # read q, k, v; write y


def _flops(shape: Shape) -> int:
    B, T, H, D = (shape.dims[k] for k in ("B", "T", "H", "D"))
    return 4 * B * H * T * T * D // 2  # QK^T and PV, 2 flops a multiply-add, half the scores causal


def _backward_bytes(shape: Shape, dtype: torch.dtype) -> int:
    B, T, H, D = (shape.dims[k] for k in ("B", "T", "H", "D"))
    size = torch.tensor([], dtype=dtype).element_size()
    # read q, k, v, y and dy, write dq, dk, dv; the float32 log-sum-exp and delta rows besides
    return 8 * B * T * H * D * size + 3 * B * H * T * 4


def _backward_flops(shape: Shape) -> int:
    # QK^T recomputed, dP = dY V^T, dV = P^T dY, dQ = dS K, dK = dS^T Q: five matmuls to the forward's two
    return _flops(shape) * 5 // 2


def _context(shape: Shape, sm_count: int) -> dict:
    return {"head_dim": shape.dims["D"], "causal": True, "has_dot": True, "seq_len": shape.dims["T"]}


def _shape(name, b, t, h, origin, timed=False, d=64):
    return Shape(name=name, dims={"B": b, "T": t, "H": h, "D": d}, origin=origin, timed=timed)


def _translate(suggests: dict) -> dict:
    # Load latencies in cuTile's terms (FMHAv4): K_LAT = how many iterations ahead K is loaded, V_LAT the
    # same for V. Triton's software pipeliner keeps NUM_STAGES - 1 iterations of loads in flight, so
    # K_LAT -> NUM_STAGES = K_LAT + 1; V loaded further ahead than K (V_LAT > K_LAT) -> V_EARLY, the V
    # load issued before the QK^T product instead of after the softmax. Other keys pass through.
    out = {k: v for k, v in suggests.items() if k not in ("K_LAT", "V_LAT")}
    if "K_LAT" in suggests:
        out.setdefault("NUM_STAGES", int(suggests["K_LAT"]) + 1)
        if "V_LAT" in suggests:
            out.setdefault("V_EARLY", suggests["V_LAT"] > suggests["K_LAT"])
    # A tile of at most 64 query rows is one warpgroup's work (Hopper's wgmma is 64 rows tall); with 8
    # warps Triton splits its key columns over two warpgroups and reduces every row through shared
    # memory (seen in the compiled layouts), a different kernel from the tile the lesson measured. So a
    # lesson that names such a tile and no warp count gets the 4 warps that keep whole rows in a warpgroup.
    if "BLOCK_M" in suggests and suggests["BLOCK_M"] <= 64:
        out.setdefault("NUM_WARPS", 4)
    # The lessons' tiles, warps and latencies were measured on forward kernels: the backward's knobs have
    # names of their own (DKDV_*, DQ_*), so BLOCK_M, NUM_STAGES and the rest reach the forward alone
    return out


def _render(params):
    # -inf has no literal: the candidate carries the string and the launcher reads it with float()
    baked = {k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in params.items()}
    return render_candidate(
        op="attention",
        entry="attention",
        entry_args=("qkv", "n_head"),
        launcher=_attention_fwd,
        kernels=(_attention_load_kv, _attention_fwd_inner, _attention_fwd_kernel),
        params=baked,
        title="Causal self-attention candidate, forward and backward",
        backward=Backward(AttentionFunction, _attention_bwd,
                          (_attention_bwd_dkdv_inner, _attention_bwd_dkdv_kernel, _attention_bwd_dq_inner,
                           _attention_bwd_dq_kernel), frozenset(BWD_KNOBS)),
    )


TEMPLATE = TemplateSpace(
    params={
        "BLOCK_M": (32, 64, 128),
        "BLOCK_N": (32, 64, 128),
        "NUM_WARPS": (4, 8),
        "NUM_STAGES": (1, 2, 3, 4),
        "MASK_VALUE": (-1e20, float("-inf")),
        "USE_TMA": (False, True),
        "V_EARLY": (False, True),
        "LONGEST_FIRST": (False, True),
        **BWD_KNOBS,
    },
    seed={**SEED_PARAMS, **BWD_SEED_PARAMS},
    render=_render,
    translate=_translate,
    backward_knobs=frozenset(BWD_KNOBS),
)

SPEC = OpSpec(
    name="attention",
    entry="attention",
    signature=("attention(qkv: [B, T, 3C] contiguous, n_head: int) -> [B, T, C] in qkv.dtype (causal, "
               "D = C // n_head)"),
    description="Causal self-attention reading NanoGPT's packed c_attn output and writing merged heads",
    make_inputs=_make_inputs,
    reference=_reference,
    eager=_eager,
    shapes=(
        _shape("gpt2-B8-T1024", 8, 1024, 12, "gpt2", timed=True),
        _shape("shakespeare-B64-T256", 64, 256, 6, "shakespeare", timed=True),
        _shape("gpt2-B1-T128", 1, 128, 12, "gpt2"),
        _shape("one-token", 3, 1, 12, "edge"),
        _shape("T127-odd-B", 3, 127, 4, "edge"),
        _shape("T65", 5, 65, 6, "edge"),
        _shape("T200", 1, 200, 12, "edge"),
    ),
    interpreter_shapes=(
        _shape("gpt2-heads", 1, 64, 2, "gpt2"),
        _shape("shakespeare-heads", 2, 32, 2, "shakespeare"),
        _shape("one-token", 2, 1, 2, "edge"),
        _shape("T65", 1, 65, 2, "edge"),
        _shape("T17-odd-B", 3, 17, 2, "edge"),
        # many rows: 2050 queries, each walking up to 17 key blocks past a partial last one; ~0.7 s (float16)
        # to ~1.8 s (float32) a call for the seed under the interpreter
        _shape("T1025", 2, 1025, 1, "edge"),
    ),
    gpu_dtypes=("bfloat16", "float16", "float32"),
    cpu_dtypes=("float32", "float16"),
    tolerances={
        "float32": Tolerance(atol=1e-4, rtol=1e-4),
        "float16": Tolerance(atol=5e-3, rtol=5e-3),
        "bfloat16": Tolerance(atol=2.5e-2, rtol=2e-2),
    },
    bytes_moved=_bytes_moved,
    flops=_flops,
    backward_bytes=_backward_bytes,
    backward_flops=_backward_flops,
    bound="compute",
    has_backward=True,
    template=TEMPLATE,
    context=_context,
    tags=("attention", "causal"),
    baselines={"sdpa": _sdpa},
    variants=VARIANTS,
)
