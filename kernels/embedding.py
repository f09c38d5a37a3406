"""Token plus position embedding: out[b, t] = wte[idx[b, t]] + wpe[t].

Entry (fixed): embedding(idx [B, T] int64, wte [V, C], wpe [P, C]) -> [B, T, C] in wte's dtype, with
P >= T (the position table has block_size rows; only the first T are used). Memory-bound: each token's
row of wte is gathered once, the T rows of wpe are read once per program that needs them (held in
registers across the batch entries of a tile), and the output is written once; PyTorch eager writes the
gathered rows and reads them back for the add.

Token ids outside [0, V) are out of contract: like an out-of-range gather they read memory outside wte.
Checking them on the device would cost a reduction and a host sync per call, so the kernel does not.

Contract: idx, wte and wpe have contiguous columns, but the rows of each may be any distance apart and
each may start anywhere in its storage: NanoGPT's generate() passes idx[:, -block_size:], a column slice
of a longer sequence. The output is contiguous.

The backward sums each output row's gradient over the batch into wpe's first T rows, and into its token's
row of dwte in one of three ways (template knobs): scattered with fp32 atomics (then cast to wte's dtype),
into a [V, C] buffer or only into rows for the tokens present (compact), which makes dwte's last bits
depend on the order in which rows arrive; summed by the program of the
token's first position in position order, which is deterministic; or by segments, the positions grouped by
token first so that one pass over the table sums each row and writes it once, zeros included, whose
grouping order (and so a repeated token's last bits) varies too. The forward is deterministic.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .candidate import Backward, render_candidate
from .spec import OpSpec, Shape, TemplateSpace, Tolerance, row_tile_canonical
from .variants import copies, generator, row_strided, wide_values


@triton.jit
def _embedding_fwd_kernel(
    IDX,        # [B, T] token ids (int64 or int32), strides stride_ib, stride_it
    WTE,        # [V, C] token table, rows stride_wte apart, columns contiguous
    WPE,        # [P, C] position table, rows stride_wpe apart, columns contiguous; rows 0..T-1 are read
    OUT,        # [B, T, C] output, contiguous
    stride_ib,  # elements between batch entries of IDX
    stride_it,  # elements between positions of IDX
    stride_wte, # elements between rows of WTE
    stride_wpe, # elements between rows of WPE
    B,          # batch
    T,          # sequence length
    C,          # width
    BLOCK_C: tl.constexpr,      # columns per tile: next_pow2(C) for one tile, else the chunk width
    ROWS: tl.constexpr,         # positions per tile
    BATCH: tl.constexpr,        # batch entries per tile, sharing the tile's rows of WPE
    SINGLE_TILE: tl.constexpr,  # the whole row in one masked tile or a loop over column chunks
    EVICTION: tl.constexpr,     # cache hint for the gathered rows of WTE: "" or "evict_first"
    WIDTH: tl.constexpr,        # C baked in as a compile-time constant, or 0 to read it at run time
    INDEX_64: tl.constexpr,     # offsets in int64, needed only past 2**31 elements (int32 saves registers)
):
    if WIDTH > 0:
        C = WIDTH  # a constant width folds the column mask and unrolls the chunk loop
    pid = tl.program_id(0)
    n_t = tl.cdiv(T, ROWS)
    n_tiles = n_t * tl.cdiv(B, BATCH)
    cols = tl.arange(0, BLOCK_C)
    # one iteration per program unless the grid is persistent (fewer programs than tiles)
    for tile in range(pid, n_tiles, tl.num_programs(0)):
        # neighbouring tiles take neighbouring positions of one batch group: their writes are contiguous
        t = (tile % n_t) * ROWS + tl.arange(0, ROWS)
        b = (tile // n_t) * BATCH + tl.arange(0, BATCH)
        tok_mask = (b < B)[:, None] & (t < T)[None, :]              # [BATCH, ROWS]
        if INDEX_64:
            t = t.to(tl.int64)
            b = b.to(tl.int64)
        tok = tl.load(IDX + b[:, None] * stride_ib + t[None, :] * stride_it, mask=tok_mask, other=0)
        if INDEX_64:
            tok = tok.to(tl.int64)
        else:
            tok = tok.to(tl.int32)  # the launcher checked that V * stride_wte fits
        tok_row = tok * stride_wte
        out_row = (b[:, None] * T + t[None, :]) * C
        if SINGLE_TILE:
            _embedding_columns(WTE, WPE, OUT, tok_row, out_row, tok_mask, t, stride_wpe, T, cols, cols < C,
                               EVICTION)
        else:
            for start in range(0, C, BLOCK_C):
                c = start + cols
                _embedding_columns(WTE, WPE, OUT, tok_row, out_row, tok_mask, t, stride_wpe, T, c, c < C,
                                   EVICTION)


@triton.jit
def _embedding_columns(WTE, WPE, OUT, tok_row, out_row, tok_mask, t, stride_wpe, T, c, c_mask,
                       EVICTION: tl.constexpr):
    """One column block of a [BATCH, ROWS] tile of tokens: gather, add the positions, store."""
    pos_mask = (t < T)[:, None] & c_mask[None, :]
    # the position rows are reused by every batch entry (here and in other programs): keep them cached
    pos = tl.load(WPE + t[:, None] * stride_wpe + c[None, :], mask=pos_mask, other=0.0,
                  eviction_policy="evict_last").to(tl.float32)
    mask = tok_mask[:, :, None] & c_mask[None, None, :]
    emb = tl.load(WTE + tok_row[:, :, None] + c[None, None, :], mask=mask, other=0.0,
                  eviction_policy=EVICTION).to(tl.float32)
    out = emb + pos[None, :, :]
    tl.store(OUT + out_row[:, :, None] + c[None, None, :], out.to(OUT.dtype.element_ty), mask=mask)


def _embedding_fwd(idx, wte, wpe, ROWS_PER_PROGRAM, BATCH_PER_PROGRAM, NUM_WARPS, SINGLE_TILE, CHUNK_C,
                   PERSISTENT, PROGRAMS_PER_SM, NUM_STAGES, EVICTION, CONST_WIDTH):
    """Validate, allocate, launch. Parameters in capitals are the template's knobs."""
    if idx.dim() != 2 or wte.dim() != 2 or wpe.dim() != 2 or wpe.shape[1] != wte.shape[1]:
        raise ValueError(f"embedding wants idx [B, T], wte [V, C], wpe [P, C]; got {tuple(idx.shape)}, "
                         f"{tuple(wte.shape)}, {tuple(wpe.shape)}")
    if idx.dtype != torch.int64 and idx.dtype != torch.int32:
        raise ValueError(f"idx must hold int64 or int32 token ids, not {idx.dtype}")
    if wpe.dtype != wte.dtype:
        raise ValueError(f"wpe is {wpe.dtype}, wte is {wte.dtype}; both tables must have one dtype")
    B, T = idx.shape
    V, C = wte.shape
    if wpe.shape[0] < T:
        raise ValueError(f"{T} positions but the position table has only {wpe.shape[0]} rows")
    if wte.stride(1) != 1:
        wte = wte.contiguous()
    if wpe.stride(1) != 1:
        wpe = wpe.contiguous()
    out = torch.empty((B, T, C), dtype=wte.dtype, device=wte.device)
    if B * T == 0 or C == 0:
        return out
    block_c = triton.next_power_of_2(C) if SINGLE_TILE else min(CHUNK_C, triton.next_power_of_2(C))
    n_tiles = triton.cdiv(T, ROWS_PER_PROGRAM) * triton.cdiv(B, BATCH_PER_PROGRAM)
    grid = n_tiles
    if PERSISTENT:
        sms = torch.cuda.get_device_properties(wte.device).multi_processor_count if wte.is_cuda else 4
        grid = min(n_tiles, sms * PROGRAMS_PER_SM)
    largest = max(V * wte.stride(0), wpe.shape[0] * wpe.stride(0), B * T * C,
                  B * abs(idx.stride(0)) + T * abs(idx.stride(1)))
    _embedding_fwd_kernel[(grid,)](
        idx, wte, wpe, out, idx.stride(0), idx.stride(1), wte.stride(0), wpe.stride(0), B, T, C,
        BLOCK_C=block_c, ROWS=ROWS_PER_PROGRAM, BATCH=BATCH_PER_PROGRAM, SINGLE_TILE=SINGLE_TILE,
        EVICTION=EVICTION, WIDTH=C if CONST_WIDTH else 0, INDEX_64=largest >= 2**31,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    return out


@triton.jit
def _embedding_bwd_wte_kernel(
    IDX,        # [B, T] token ids, strides stride_ib, stride_it
    DY,         # [B, T, C] gradient of the output, strides stride_db, stride_dt, columns contiguous
    ACC,        # [V, C] float32 accumulator, zeroed, contiguous
    stride_ib,
    stride_it,
    stride_db,
    stride_dt,
    B,
    T,
    C,
    BLOCK_C: tl.constexpr,
    ROWS: tl.constexpr,         # tokens per program
    FIRST,      # [V] int32 first position of each token (read when COMPACT)
    COMPACT: tl.constexpr,      # ACC is [B * T, C], a row per token at its first position, not [V, C]
):
    # int64 token index: (b * stride_db) and (tok * C) overflow int32 on large tables
    r = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    live = r < B * T
    b = r // T
    t = r % T
    tok = tl.load(IDX + b * stride_ib + t * stride_it, mask=live, other=0).to(tl.int64)
    if COMPACT:
        tok = tl.load(FIRST + tok, mask=live, other=0).to(tl.int64)
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        mask = live[:, None] & (c < C)[None, :]
        g = tl.load(DY + (b * stride_db + t * stride_dt)[:, None] + c[None, :], mask=mask, other=0.0)
        # a token that occurs several times adds into its row from several programs; only the sums
        # matter (the cast reads them in a later launch), so no ordering fence around the atomics
        tl.atomic_add(ACC + tok[:, None] * C + c[None, :], g.to(tl.float32), mask=mask, sem="relaxed")


@triton.jit
def _embedding_bwd_wte_owner_kernel(
    IDX,        # [B, T] token ids, strides stride_ib, stride_it
    DY,         # [B, T, C] gradient of the output, strides stride_db, stride_dt, columns contiguous
    DWTE,       # [V, C] gradient of the token table, zeroed, contiguous, in the table's dtype
    stride_ib,
    stride_it,
    stride_db,
    stride_dt,
    B,
    T,
    C,
    BLOCK_C: tl.constexpr,      # columns per program (the grid's second axis)
    BLOCK_T: tl.constexpr,      # token ids compared per step of the scans
):
    # program r (a flat position b * T + t) owns its token's row of DWTE when r is that token's first
    # position; the owner adds the row's gradients position by position in a fixed order and stores the
    # sum once, so dwte is the same on every call, with no atomics and no float32 buffer
    # int64 positions and rows: (b * stride_db) and (tok * C) overflow int32 on large tables
    r = tl.program_id(0).to(tl.int64)
    n = B * T
    tok = tl.load(IDX + (r // T) * stride_ib + (r % T) * stride_it)
    lanes = tl.arange(0, BLOCK_T)
    # an earlier position with the same id owns the row: scan from the start, stop at the first found
    start = r * 0
    earlier = 0
    while (start < r) & (earlier == 0):
        q = start + lanes
        before = q < r
        ids = tl.load(IDX + (q // T) * stride_ib + (q % T) * stride_it, mask=before, other=0)
        earlier = tl.sum((before & (ids == tok)).to(tl.int32), axis=0)
        start += BLOCK_T
    if earlier == 0:
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for first in range(r, n, BLOCK_T):
            q = first + lanes
            b = q // T
            t = q % T
            live = q < n
            ids = tl.load(IDX + b * stride_ib + t * stride_it, mask=live, other=0)
            hit = live & (ids == tok)
            # most steps of a large vocabulary hold no other occurrence: they skip the loads of dy
            if tl.sum(hit.to(tl.int32), axis=0) > 0:
                g = tl.load(DY + (b * stride_db + t * stride_dt)[:, None] + c[None, :],
                            mask=hit[:, None] & cmask[None, :], other=0.0)
                acc += tl.sum(g.to(tl.float32), axis=0)
        tl.store(DWTE + tok.to(tl.int64) * C + c, acc.to(DWTE.dtype.element_ty), mask=cmask)


@triton.jit
def _embedding_bwd_starts_kernel(
    COUNT,      # [V] int32: positions per token
    START,      # [V] int32, written: where each token's positions begin in ORDER
    TOTAL,      # [1] int32, zeroed: positions placed so far
    V,
    BLOCK: tl.constexpr,        # tokens per program
):
    # each block of tokens takes one contiguous stretch of ORDER with a single atomic; which stretch a
    # block gets depends on the order the programs run, but only the grouping matters to the sums
    v = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = v < V
    n = tl.load(COUNT + v, mask=live, other=0)
    base = tl.atomic_add(TOTAL, tl.sum(n, axis=0))
    tl.store(START + v, base + tl.cumsum(n, axis=0) - n, mask=live)


@triton.jit
def _embedding_bwd_group_kernel(
    IDX,        # [B, T] token ids, strides stride_ib, stride_it
    PER_TOKEN,  # [V] int32: the counts (zeroed) when counting; else each token's next free place in ORDER
                # (its start, advanced here to its end)
    ORDER,      # [B * T] int32, written when placing: positions grouped by token
    stride_ib,
    stride_it,
    B,
    T,
    BLOCK: tl.constexpr,        # positions per program
    PLACE: tl.constexpr,        # count the positions of each token, or place each in its token's stretch
):
    r = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = r < B * T
    tok = tl.load(IDX + (r // T) * stride_ib + (r % T) * stride_it, mask=live, other=0)
    place = tl.atomic_add(PER_TOKEN + tok, 1, mask=live, sem="relaxed")
    if PLACE:
        tl.store(ORDER + place, r.to(tl.int32), mask=live)


@triton.jit
def _embedding_bwd_segments_kernel(
    DY,         # [B, T, C] gradient of the output, strides stride_db, stride_dt, columns contiguous
    COUNT,      # [V] int32: positions per token
    END,        # [V] int32: where each token's positions end in ORDER
    ORDER,      # [B * T] int32: positions grouped by token
    DWTE,       # [V, C] gradient of the token table, contiguous, in the table's dtype; every row written
    stride_db,
    stride_dt,
    T,
    V,
    C,
    BLOCK_C: tl.constexpr,      # columns per program (the grid's second axis)
    BLOCK_R: tl.constexpr,      # positions of one token gathered a step
    ROWS: tl.constexpr,         # table rows per program
):
    # one pass over the table: a row no id points to is stored as zeros here, so dwte needs no zero-fill,
    # no float32 copy and no cast; a row of n positions is their sum in float32, ceil(n / BLOCK_R) steps.
    # Most rows of a large vocabulary are such zeros: one tile store for all of a program's, and the
    # per-row loop only for the others
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    first_row = tl.program_id(0).to(tl.int64) * ROWS
    rows = first_row + tl.arange(0, ROWS)
    counts = tl.load(COUNT + rows, mask=rows < V, other=0)
    unused = (rows < V) & (counts == 0)
    tl.store(DWTE + rows[:, None] * C + c[None, :], tl.zeros([ROWS, BLOCK_C], dtype=DWTE.dtype.element_ty),
             mask=unused[:, None] & cmask[None, :])
    lanes = tl.arange(0, BLOCK_R)
    for i in range(ROWS):
        v = first_row + i
        if v < V:
            n = tl.load(COUNT + v)
            if n > 0:
                end = tl.load(END + v)
                acc = tl.zeros([BLOCK_C], dtype=tl.float32)
                for first in range(end - n, end, BLOCK_R):
                    q = first + lanes
                    live = q < end
                    r = tl.load(ORDER + q, mask=live, other=0).to(tl.int64)
                    g = tl.load(DY + ((r // T) * stride_db + (r % T) * stride_dt)[:, None] + c[None, :],
                                mask=live[:, None] & cmask[None, :], other=0.0)
                    acc += tl.sum(g.to(tl.float32), axis=0)
                tl.store(DWTE + v * C + c, acc.to(DWTE.dtype.element_ty), mask=cmask)


@triton.jit
def _cast_kernel(
    SRC,        # [n] float32
    DST,        # [n] in the destination dtype
    n,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(DST + offs, tl.load(SRC + offs, mask=mask).to(DST.dtype.element_ty), mask=mask)


@triton.jit
def _embedding_bwd_first_kernel(
    IDX,        # [B, T] token ids, strides stride_ib, stride_it
    FIRST,      # [V] int32, filled with B * T: lowered to the first flat position of each token present
    stride_ib,
    stride_it,
    B,
    T,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = r < B * T
    r64 = r.to(tl.int64)
    tok = tl.load(IDX + (r64 // T) * stride_ib + (r64 % T) * stride_it, mask=live, other=0)
    tl.atomic_min(FIRST + tok, r, mask=live, sem="relaxed")


@triton.jit
def _embedding_bwd_compact_rows_kernel(
    ACC,        # [B * T, C] float32 sums, a row per token present at its first position
    FIRST,      # [V] int32 first position of each token, B * T for a token absent
    DWTE,       # [V, C] the token table's gradient, contiguous (written whole)
    n,          # B * T
    V,
    C,
    BLOCK_C: tl.constexpr,
    ROWS: tl.constexpr,         # table rows a program writes
):
    v = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows, cmask = v < V, c < C
    first = tl.load(FIRST + v, mask=rows, other=n).to(tl.int64)
    present = rows & (first < n)
    g = tl.load(ACC + first[:, None] * C + c[None, :], mask=present[:, None] & cmask[None, :], other=0.0)
    tl.store(DWTE + v[:, None] * C + c[None, :], g.to(DWTE.dtype.element_ty), mask=rows[:, None] & cmask[None, :])


@triton.jit
def _embedding_bwd_wpe_kernel(
    DY,         # [B, T, C] gradient of the output, strides stride_db, stride_dt, columns contiguous
    OUT,        # [S, R, C] sums over each chunk of BATCH batch entries (written whole: rows T.. are zero)
    stride_db,
    stride_dt,
    B,
    T,
    R,          # rows of a chunk's sums: P for the table's gradient itself (S = 1), T for partials
    C,
    BATCH,      # batch entries a chunk sums
    BLOCK_C: tl.constexpr,
    ROWS: tl.constexpr,         # positions per program
):
    first_row = tl.program_id(0) * ROWS
    p = first_row + tl.arange(0, ROWS)
    chunk = tl.program_id(1)
    live = p < T
    p64 = p.to(tl.int64)
    first = chunk * BATCH
    # programs past the sequence only write zeros: no batch loop for them
    n_b = (first_row < T).to(tl.int32) * tl.minimum(B - first, BATCH)
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        cmask = c < C
        mask = live[:, None] & cmask[None, :]
        acc = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
        # the pointer advances by a batch entry each step; pointer arithmetic is 64-bit
        ptrs = DY + first.to(tl.int64) * stride_db + (p64 * stride_dt)[:, None] + c[None, :]
        for _ in range(0, n_b):
            acc += tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            ptrs += stride_db
        tl.store(OUT + (chunk.to(tl.int64) * R + p64)[:, None] * C + c[None, :], acc.to(OUT.dtype.element_ty),
                 mask=(p < R)[:, None] & cmask[None, :])


@triton.jit
def _embedding_bwd_wpe_sum_kernel(
    PART,       # [S, T, C] float32 partial sums
    DWPE,       # [P, C] gradient of the position table (written whole: rows T.. are zero), contiguous
    S,
    T,
    P,
    C,
    BLOCK_C: tl.constexpr,
    ROWS: tl.constexpr,         # positions per program
):
    p = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    p64 = p.to(tl.int64)
    live = p < T
    n_s = (tl.program_id(0) * ROWS < T).to(tl.int32) * S
    for start in range(0, C, BLOCK_C):
        c = start + tl.arange(0, BLOCK_C)
        cmask = c < C
        acc = tl.zeros([ROWS, BLOCK_C], dtype=tl.float32)
        # the chunks in their order: the same sum on every call
        for s in range(0, n_s):
            acc += tl.load(PART + (s * T + p64)[:, None] * C + c[None, :], mask=live[:, None] & cmask[None, :],
                           other=0.0)
        tl.store(DWPE + p64[:, None] * C + c[None, :], acc.to(DWPE.dtype.element_ty),
                 mask=(p < P)[:, None] & cmask[None, :])


def _embedding_bwd(dy, idx, V, P, dtype, BWD_SEGMENTS, BWD_SEG_ROWS, BWD_SEG_BLOCK, BWD_ATOMIC, BWD_COMPACT,
                   BWD_COMPACT_ROWS, BWD_WTE_ROWS, BWD_SCAN_BLOCK, BWD_WTE_BLOCK_C, BWD_WPE_ROWS, BWD_WPE_BLOCK_C,
                   BWD_WPE_BATCH, BWD_WARPS):
    """(d wte [V, C], d wpe [P, C]) in the tables' dtype from the output's gradient [B, T, C]. Parameters in
    capitals are the backward's template knobs:
    BWD_SEGMENTS    d wte by segments (then BWD_ATOMIC is unused): the positions are counted and grouped by
                    token with integer atomics (B * T of them, not B * T * C), then one pass over the table
                    sums each row's positions in float32 and writes every row once, zeros included: no
                    zero-fill, no [V, C] float32 buffer, no cast. The grouping's order varies from call to
                    call, so the last bits of a repeated token's row do too
    BWD_SEG_ROWS    table rows a program of that pass writes
    BWD_SEG_BLOCK   positions of one token it gathers a step
    BWD_ATOMIC      d wte by float32 atomics, token rows scattered as they come (then cast to the table's
                    dtype), or by owners: the program of each token's first position sums that token's rows
                    in position order, deterministic, but every position scans the ids before it until it
                    meets its own, and every owner all the ids after it
    BWD_COMPACT     the atomic scatter's float32 rows only for the tokens present: each token's first position
                    (integer atomics, B * T of them) owns a row of a [B * T, C] buffer, and one pass over the
                    table writes every row in its dtype, zeros for the tokens absent. At GPT-2's shape that
                    buffer is 25 MB where the [V, C] one is 154 MB, zeroed, read again and cast. Only
                    where there are fewer positions than tokens: at shakespeare's B * T = 16384 and V = 65
                    the [V, C] buffer is the smaller (an H200 measured 39.7 MiB peak against 12.2 for
                    torch.compile with the compact rows there)
    BWD_COMPACT_ROWS table rows a program of that pass writes
    BWD_WTE_ROWS    token positions a program of the atomic scatter handles (unused by the owners)
    BWD_SCAN_BLOCK  token ids the owners compare a step (unused by the atomic scatter)
    BWD_WTE_BLOCK_C columns of a step of either d wte kernel (at most next_pow2(C)): the atomic scatter loops
                    over the row in such chunks, the owners take one chunk a program
    BWD_WPE_ROWS    positions a program of the d wpe sum over the batch handles
    BWD_WPE_BLOCK_C columns a step of the d wpe sum (at most next_pow2(C))
    BWD_WPE_BATCH   batch entries a program of the d wpe sum adds, 0 for the whole batch: with a smaller
                    chunk, B / BWD_WPE_BATCH programs share each position and a second pass adds their
                    float32 partials in order (shakespeare's B = 64 otherwise leaves 64 programs each
                    walking 64 entries in turn)
    BWD_WARPS       warps of the d wte and d wpe kernels
    """
    B, T, C = dy.shape
    if dy.stride(2) != 1:
        dy = dy.contiguous()
    wte_block_c = min(BWD_WTE_BLOCK_C, triton.next_power_of_2(C))
    if BWD_SEGMENTS:
        dwte = _segment_sums(dy, idx, V, dtype, wte_block_c, BWD_SEG_ROWS, BWD_SEG_BLOCK, BWD_WARPS)
    elif BWD_ATOMIC and BWD_COMPACT and B * T < V:
        n = B * T
        if n >= 2**31:
            raise ValueError(f"{n} token positions do not fit the compact scatter's int32 positions")
        first = torch.full((V,), n, dtype=torch.int32, device=dy.device)
        acc = torch.zeros((max(n, 1), C), dtype=torch.float32, device=dy.device)
        if n > 0:
            _embedding_bwd_first_kernel[(triton.cdiv(n, 512),)](idx, first, idx.stride(0), idx.stride(1), B, T,
                                                                 BLOCK=512)
            _embedding_bwd_wte_kernel[(triton.cdiv(n, BWD_WTE_ROWS),)](
                idx, dy, acc, idx.stride(0), idx.stride(1), dy.stride(0), dy.stride(1), B, T, C,
                BLOCK_C=wte_block_c, ROWS=BWD_WTE_ROWS, FIRST=first, COMPACT=True, num_warps=BWD_WARPS)
        dwte = torch.empty((V, C), dtype=dtype, device=dy.device)
        _embedding_bwd_compact_rows_kernel[(triton.cdiv(V, BWD_COMPACT_ROWS), triton.cdiv(C, wte_block_c))](
            acc, first, dwte, n, V, C, BLOCK_C=wte_block_c, ROWS=BWD_COMPACT_ROWS, num_warps=BWD_WARPS)
    elif BWD_ATOMIC:
        # fp32 tables take the atomics directly; others accumulate in fp32 and are cast once at the end
        acc = torch.zeros((V, C), dtype=torch.float32, device=dy.device)
        _embedding_bwd_wte_kernel[(triton.cdiv(B * T, BWD_WTE_ROWS),)](
            idx, dy, acc, idx.stride(0), idx.stride(1), dy.stride(0), dy.stride(1), B, T, C,
            BLOCK_C=wte_block_c, ROWS=BWD_WTE_ROWS, FIRST=idx, COMPACT=False, num_warps=BWD_WARPS)
        if dtype == torch.float32:
            dwte = acc
        else:
            dwte = torch.empty((V, C), dtype=dtype, device=dy.device)
            _cast_kernel[(triton.cdiv(V * C, 1024),)](acc, dwte, V * C, BLOCK=1024)
    else:
        # rows of tokens that never occur stay zero; each of the others is written once, by its owner
        dwte = torch.zeros((V, C), dtype=dtype, device=dy.device)
        if B * T > 0:
            _embedding_bwd_wte_owner_kernel[(B * T, triton.cdiv(C, wte_block_c))](
                idx, dy, dwte, idx.stride(0), idx.stride(1), dy.stride(0), dy.stride(1), B, T, C,
                BLOCK_C=wte_block_c, BLOCK_T=BWD_SCAN_BLOCK, num_warps=BWD_WARPS)
    dwpe = torch.empty((P, C), dtype=dtype, device=dy.device)
    wpe_block_c = min(BWD_WPE_BLOCK_C, triton.next_power_of_2(C))
    if 0 < BWD_WPE_BATCH < B and T > 0:
        chunks = triton.cdiv(B, BWD_WPE_BATCH)
        part = torch.empty((chunks, T, C), dtype=torch.float32, device=dy.device)
        _embedding_bwd_wpe_kernel[(triton.cdiv(T, BWD_WPE_ROWS), chunks)](
            dy, part, dy.stride(0), dy.stride(1), B, T, T, C, BWD_WPE_BATCH, BLOCK_C=wpe_block_c, ROWS=BWD_WPE_ROWS,
            num_warps=BWD_WARPS)
        _embedding_bwd_wpe_sum_kernel[(triton.cdiv(P, BWD_WPE_ROWS),)](
            part, dwpe, chunks, T, P, C, BLOCK_C=wpe_block_c, ROWS=BWD_WPE_ROWS, num_warps=BWD_WARPS)
    else:
        _embedding_bwd_wpe_kernel[(triton.cdiv(P, BWD_WPE_ROWS), 1)](
            dy, dwpe, dy.stride(0), dy.stride(1), B, T, P, C, max(B, 1), BLOCK_C=wpe_block_c, ROWS=BWD_WPE_ROWS,
            num_warps=BWD_WARPS)
    return dwte, dwpe


def _segment_sums(dy, idx, V, dtype, block_c, rows, block_r, warps, group_block=512):
    """d wte by segments (see BWD_SEGMENTS): count the ids, give each token a stretch of ORDER, place each
    position in its token's stretch, then sum every table row over its stretch. `group_block` positions (or
    tokens) a program of the counting and grouping kernels takes: integer work, one id each."""
    B, T, C = dy.shape
    n = B * T
    if n >= 2**31:
        raise ValueError(f"{n} token positions do not fit the segments' int32 places")
    counts = torch.zeros(V + 1, dtype=torch.int32, device=dy.device)  # V counts and the running total
    count, total = counts[:V], counts[V:]
    cursor = torch.empty(V, dtype=torch.int32, device=dy.device)
    order = torch.empty(max(n, 1), dtype=torch.int32, device=dy.device)
    if n > 0:
        _embedding_bwd_group_kernel[(triton.cdiv(n, group_block),)](
            idx, count, order, idx.stride(0), idx.stride(1), B, T, BLOCK=group_block, PLACE=False)
    _embedding_bwd_starts_kernel[(triton.cdiv(V, group_block),)](count, cursor, total, V, BLOCK=group_block)
    if n > 0:
        _embedding_bwd_group_kernel[(triton.cdiv(n, group_block),)](
            idx, cursor, order, idx.stride(0), idx.stride(1), B, T, BLOCK=group_block, PLACE=True)
    dwte = torch.empty((V, C), dtype=dtype, device=dy.device)
    _embedding_bwd_segments_kernel[(triton.cdiv(V, rows), triton.cdiv(C, block_c))](
        dy, count, cursor, order, dwte, dy.stride(0), dy.stride(1), T, V, C,
        BLOCK_C=block_c, BLOCK_R=block_r, ROWS=rows, num_warps=warps)
    return dwte


# the backward's seed: the atomic scatter, 4 tokens a program, and the d wpe sum over 4 positions a program,
# both in chunks of up to 512 columns on 4 warps
BWD_SEED_PARAMS = {
    "BWD_SEGMENTS": False,
    "BWD_SEG_ROWS": 16,
    "BWD_SEG_BLOCK": 32,
    "BWD_ATOMIC": True,
    "BWD_COMPACT": False,
    "BWD_COMPACT_ROWS": 4,
    "BWD_WTE_ROWS": 4,
    "BWD_SCAN_BLOCK": 128,
    "BWD_WTE_BLOCK_C": 512,
    "BWD_WPE_ROWS": 4,
    "BWD_WPE_BLOCK_C": 512,
    "BWD_WPE_BATCH": 0,
    "BWD_WARPS": 4,
}
BWD_KNOBS = {
    "BWD_SEGMENTS": (False, True),
    "BWD_SEG_ROWS": (1, 4, 16, 64),
    "BWD_SEG_BLOCK": (8, 16, 32, 64, 128),
    "BWD_ATOMIC": (True, False),
    "BWD_COMPACT": (False, True),
    "BWD_COMPACT_ROWS": (1, 4, 16, 64),
    "BWD_WTE_ROWS": (1, 2, 4, 8, 16),
    "BWD_SCAN_BLOCK": (64, 128, 256, 512),
    "BWD_WTE_BLOCK_C": (128, 256, 512, 1024),
    "BWD_WPE_ROWS": (1, 2, 4, 8),
    "BWD_WPE_BLOCK_C": (128, 256, 512, 1024),
    "BWD_WPE_BATCH": (0, 4, 8, 16),
    "BWD_WARPS": (1, 2, 4, 8),
}


SEED_PARAMS = {
    "ROWS_PER_PROGRAM": 4,
    "BATCH_PER_PROGRAM": 1,
    "NUM_WARPS": 4,
    # no reduction over the row, so chunks cost no second pass, and 256 divides 384 and 768 exactly
    # where one pow2 tile would mask a quarter of its lanes at 768
    "SINGLE_TILE": False,
    "CHUNK_C": 256,
    "PERSISTENT": False,
    "PROGRAMS_PER_SM": 4,
    "NUM_STAGES": 1,
    "EVICTION": "",
    "CONST_WIDTH": True,
}


class EmbeddingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, wte, wpe, params, bwd_params):
        ctx.save_for_backward(idx)
        ctx.tables = (wte.shape[0], wpe.shape[0], wte.dtype)
        ctx.bwd_params = bwd_params
        return _embedding_fwd(idx, wte, wpe, **params)

    @staticmethod
    def backward(ctx, dy):
        (idx,) = ctx.saved_tensors
        V, P, dtype = ctx.tables
        dwte, dwpe = _embedding_bwd(dy, idx, V, P, dtype, **ctx.bwd_params)
        return None, dwte, dwpe, None, None


def embedding(idx, wte, wpe):
    """The seed kernel, differentiable in wte and wpe: wte[idx] + wpe[:T] as a [B, T, C] tensor."""
    return EmbeddingFunction.apply(idx, wte, wpe, SEED_PARAMS, BWD_SEED_PARAMS)


# ----------------------------------------------------------------------------- spec

def _make_inputs(shape: Shape, dtype: torch.dtype, seed: int, device: str):
    B, T, V, C, P = (shape.dims[k] for k in ("B", "T", "V", "C", "P"))
    gen = torch.Generator(device=device).manual_seed(seed)
    idx = torch.randint(0, V, (B, T), generator=gen, device=device, dtype=torch.int64)
    if B * T >= 2 and V >= 2:
        # the first and the last row of the table, at random places: the gather's address extremes
        where = torch.randperm(B * T, generator=gen, device=device)[:2]
        flat = idx.view(-1)
        flat[where[0]] = 0
        flat[where[1]] = V - 1
    wte = torch.randn((V, C), generator=gen, device=device).to(dtype)
    wpe = (0.5 * torch.randn((P, C), generator=gen, device=device)).to(dtype)
    return idx, wte, wpe


def _wide_range(inputs, seed: int):
    """Both tables of random sign over the dtype's range (kernels/variants.py: WIDE_EXPONENTS), one binade
    lower so that their sum stays in range: bfloat16 and float32 entries far past float16's range."""
    idx, wte, wpe = inputs
    gen = generator(seed, wte.device)
    wte_s = wide_values(tuple(wte.shape), wte.dtype, gen, wte.device, shrink=1.0)
    wpe_s = wide_values(tuple(wpe.shape), wpe.dtype, gen, wpe.device, shrink=1.0)
    return (*copies(idx), wte_s.to(wte.dtype), wpe_s.to(wpe.dtype))


def _strided(inputs, seed: int):
    """idx, wte and wpe as views into wider buffers, each with its own row stride: NaN around the tables'
    views, and valid ids around idx's (a kernel that strides idx by T gathers real rows, the wrong ones)."""
    idx, wte, wpe = inputs
    gen = generator(seed, idx.device)
    V = wte.shape[0]
    ids = row_strided(idx, gen, fill=lambda size: torch.randint(0, V, size, generator=gen, device=idx.device))
    return ids, row_strided(wte, gen), row_strided(wpe, gen)


# no large_mean or constant_rows: a gather and an add have no row statistic to upset
VARIANTS = {
    "wide_range": _wide_range,
    "strided": _strided,
}


def _reference(idx, wte, wpe):
    wide = torch.float64 if wte.dtype == torch.float32 else torch.float32
    return wte.to(wide)[idx] + wpe.to(wide)[: idx.shape[1]]


def _eager(idx, wte, wpe):
    return wte[idx] + wpe[: idx.shape[1]]


def _distinct_rows(tokens: int, V: int) -> int:
    """Expected number of distinct rows among `tokens` ids drawn uniformly from V (make_inputs' draw)."""
    return round(-V * math.expm1(tokens * math.log1p(-1.0 / V))) if V > 1 else 1


def _bytes_moved(shape: Shape, dtype: torch.dtype) -> int:
    B, T, V, C = (shape.dims[k] for k in ("B", "T", "V", "C"))
    size = torch.tensor([], dtype=dtype).element_size()
    # read the int64 ids, the gathered rows of wte and T rows of wpe; write the output. A row gathered
    # twice comes from the cache, so only distinct rows are DRAM traffic: with V=65 (shakespeare) the
    # whole table is 65 rows, and counting B*T rows would put the too-fast floor above a real kernel
    return B * T * 8 + (_distinct_rows(B * T, V) * C + T * C + B * T * C) * size


def _nanogpt_eager(idx, wte, wpe):
    # the model's own code: nn.Embedding on the ids and on arange(T)
    pos = torch.arange(idx.shape[1], dtype=torch.long, device=idx.device)
    return torch.nn.functional.embedding(idx, wte) + torch.nn.functional.embedding(pos, wpe)


def _flops(shape: Shape) -> int:
    return shape.dims["B"] * shape.dims["T"] * shape.dims["C"]


def _backward_bytes(shape: Shape, dtype: torch.dtype) -> int:
    B, T, V, C = (shape.dims[k] for k in ("B", "T", "V", "C"))
    size = torch.tensor([], dtype=dtype).element_size()
    # read the ids and dy; write the whole token table's gradient (zeros where no id points) and the
    # position table's T rows
    return B * T * 8 + (B * T * C + V * C + T * C) * size


def _context(shape: Shape, sm_count: int) -> dict:
    tokens = shape.dims["B"] * shape.dims["T"]
    return {
        "row_wise": True,
        "normalization": False,
        "rows_over_2x_sms": tokens > 2 * sm_count,
        "width": shape.dims["C"],
        "tokens": tokens,
    }


def _shape(name, b, t, v, c, p, origin, timed=False):
    return Shape(name=name, dims={"B": b, "T": t, "V": v, "C": c, "P": p}, origin=origin, timed=timed)


_row_tile_canonical = row_tile_canonical(SEED_PARAMS, "CHUNK_C")


def _canonical(point: dict) -> dict:
    point = _row_tile_canonical(point)
    # tokens a program belong to the atomic scatter, the scan's width to the owners, rows and steps of the
    # table pass to the segments, which use neither of the other two
    # the compact rows to the atomic scatter alone
    if "BWD_ATOMIC" in point:
        if point.get("BWD_SEGMENTS"):
            unused = ("BWD_ATOMIC", "BWD_COMPACT", "BWD_COMPACT_ROWS", "BWD_WTE_ROWS", "BWD_SCAN_BLOCK")
        elif point["BWD_ATOMIC"]:
            unused = ("BWD_SEG_ROWS", "BWD_SEG_BLOCK", "BWD_SCAN_BLOCK",
                      *(() if point.get("BWD_COMPACT") else ("BWD_COMPACT_ROWS",)))
        else:
            unused = ("BWD_SEG_ROWS", "BWD_SEG_BLOCK", "BWD_WTE_ROWS", "BWD_COMPACT", "BWD_COMPACT_ROWS")
        for knob in unused:
            point[knob] = BWD_SEED_PARAMS[knob]
    return point




TEMPLATE = TemplateSpace(
    params={
        "ROWS_PER_PROGRAM": (1, 2, 4, 8, 16),
        "BATCH_PER_PROGRAM": (1, 2, 4, 8),
        "NUM_WARPS": (1, 2, 4, 8, 16),
        "SINGLE_TILE": (True, False),
        "CHUNK_C": (128, 256, 512),
        "PERSISTENT": (False, True),
        "PROGRAMS_PER_SM": (2, 4, 8, 16),
        "NUM_STAGES": (1, 2, 3),
        "EVICTION": ("", "evict_first"),
        "CONST_WIDTH": (False, True),
        **BWD_KNOBS,
    },
    seed={**SEED_PARAMS, **BWD_SEED_PARAMS},
    render=lambda params: render_candidate(
        op="embedding",
        entry="embedding",
        entry_args=("idx", "wte", "wpe"),
        launcher=_embedding_fwd,
        kernels=(_embedding_columns, _embedding_fwd_kernel),
        params=params,
        title="Token + position embedding candidate, forward and backward",
        backward=Backward(EmbeddingFunction, _embedding_bwd,
                          (_embedding_bwd_wte_kernel, _embedding_bwd_wte_owner_kernel, _cast_kernel,
                           _embedding_bwd_first_kernel, _embedding_bwd_compact_rows_kernel,
                           _embedding_bwd_group_kernel, _embedding_bwd_starts_kernel,
                           _embedding_bwd_segments_kernel, _segment_sums, _embedding_bwd_wpe_kernel,
                           _embedding_bwd_wpe_sum_kernel),
                          frozenset(BWD_KNOBS)),
    ),
    canonical=_canonical,
    backward_knobs=frozenset(BWD_KNOBS),
)

SPEC = OpSpec(
    name="embedding",
    entry="embedding",
    signature=("embedding(idx: [B, T] int64, wte: [V, C], wpe: [P, C] with P >= T) -> [B, T, C] in wte.dtype; "
               "the rows of idx, wte and wpe may be any distance apart (columns contiguous)"),
    description="Token embedding gathered by id plus the position embedding of the first T positions",
    make_inputs=_make_inputs,
    reference=_reference,
    eager=_eager,
    shapes=(
        _shape("gpt2-B8-T1024", 8, 1024, 50304, 768, 1024, "gpt2", timed=True),
        _shape("shakespeare-B64-T256", 64, 256, 65, 384, 256, "shakespeare", timed=True),
        _shape("gpt2-B1-T128", 1, 128, 50304, 768, 1024, "gpt2"),
        _shape("one-token", 1, 1, 50304, 768, 1024, "edge"),
        _shape("odd-T-7", 3, 7, 65, 383, 256, "edge"),
        _shape("odd-T-129", 2, 129, 1000, 385, 1024, "edge"),
        _shape("width-1023", 2, 33, 517, 1023, 64, "edge"),
        _shape("width-1025", 3, 17, 257, 1025, 32, "edge"),
        _shape("vocab-1", 2, 9, 1, 768, 16, "edge"),
    ),
    interpreter_shapes=(
        _shape("gpt2-width", 2, 8, 300, 768, 16, "gpt2"),
        _shape("shakespeare-width", 3, 8, 65, 384, 8, "shakespeare"),
        _shape("one-token", 1, 1, 50, 768, 8, "edge"),
        _shape("odd-T-7", 3, 7, 65, 383, 16, "edge"),
        _shape("odd-T-5", 2, 5, 40, 385, 9, "edge"),
        _shape("width-1023", 1, 5, 17, 1023, 8, "edge"),
        _shape("width-1025", 2, 3, 9, 1025, 4, "edge"),
        _shape("vocab-1", 2, 3, 1, 128, 4, "edge"),
        # more batch entries than a chunk of the split position sum takes (BWD_WPE_BATCH), the last one short
        _shape("batch-9", 9, 3, 40, 96, 8, "edge"),
        # many tokens, T a multiple of no tile height; ~1.7 s a call for the seed under the interpreter
        # (2048 tokens would be ~3.5 s)
        _shape("tokens-1020", 4, 255, 65, 96, 256, "edge"),
    ),
    gpu_dtypes=("bfloat16", "float16", "float32"),
    cpu_dtypes=("float32", "float16", "bfloat16"),
    tolerances={
        # one rounding of a sum of two table entries: half an ulp of the output
        "float32": Tolerance(atol=1e-5, rtol=1e-5),
        "float16": Tolerance(atol=2e-3, rtol=2e-3),
        "bfloat16": Tolerance(atol=1.6e-2, rtol=1.6e-2),
    },
    bytes_moved=_bytes_moved,
    flops=_flops,
    backward_bytes=_backward_bytes,
    bound="memory",
    has_backward=True,
    template=TEMPLATE,
    context=_context,
    tags=("row_wise", "gather"),
    baselines={"nanogpt": _nanogpt_eager},
    variants=VARIANTS,
)
