"""Causal self-attention forward candidate

Generated from the attention template. Parameters: BLOCK_M=64, BLOCK_N=64, NUM_WARPS=4, NUM_STAGES=3, MASK_VALUE=-1e+20, USE_TMA=False, V_EARLY=True, LONGEST_FIRST=True
"""
import math
import typing

import torch
import triton
import triton.language as tl


@triton.jit
def _attention_fwd_inner(
    acc, l_i, m_i,   # running output [BLOCK_M, D], row sums and row maxima [BLOCK_M], all fp32
    q,               # [BLOCK_M, D] queries
    K, V,            # tensor descriptors over this head's [T, D] keys and values if USE_TMA, else
                     # pointers to their row `lo`
    stride_t,        # elements between tokens in qkv
    qk_scale,        # 1/sqrt(D) * log2(e)
    lo, hi,          # key range of this loop, lo a multiple of BLOCK_N
    start_m,         # first query of the block
    T,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MASK_VALUE: tl.constexpr,
    DIAGONAL: tl.constexpr,     # blocks that cross the diagonal: causal mask and key bounds needed
    USE_TMA: tl.constexpr,
    V_EARLY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    # tile offsets stay small (BLOCK_N rows); the pointers advance in 64 bits
    tile = offs_n[:, None] * stride_t + offs_d[None, :]
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        if DIAGONAL:
            kv_mask = (start_n + offs_n)[:, None] < T
        if V_EARLY:
            if USE_TMA:
                v = V.load([start_n, 0])
            elif DIAGONAL:
                v = tl.load(V + tile, mask=kv_mask, other=0.0)
            else:
                v = tl.load(V + tile)
        if USE_TMA:
            k = K.load([start_n, 0])  # rows past T come back as zeros
        elif DIAGONAL:
            k = tl.load(K + tile, mask=kv_mask, other=0.0)
        else:
            k = tl.load(K + tile)
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
            if USE_TMA:
                v = V.load([start_n, 0])
            elif DIAGONAL:
                v = tl.load(V + tile, mask=kv_mask, other=0.0)
            else:
                v = tl.load(V + tile)
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
    stride_b,       # elements between batches of QKV
    stride_t,       # elements between tokens of QKV
    stride_yb,      # elements between batches of Y
    stride_yt,      # elements between tokens of Y
    T,              # sequence length
    H,              # heads
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


def attention(qkv, n_head):
    return _attention_fwd(qkv, n_head, **PARAMS)
