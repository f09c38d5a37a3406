"""Token + position embedding forward candidate

Generated from the embedding template. Parameters: ROWS_PER_PROGRAM=16, BATCH_PER_PROGRAM=1, NUM_WARPS=4, SINGLE_TILE=True, CHUNK_C=256, PERSISTENT=False, PROGRAMS_PER_SM=4, NUM_STAGES=1, EVICTION='', CONST_WIDTH=True
"""
import math
import typing

import torch
import triton
import triton.language as tl


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


PARAMS = {
    'ROWS_PER_PROGRAM': 16,
    'BATCH_PER_PROGRAM': 1,
    'NUM_WARPS': 4,
    'SINGLE_TILE': True,
    'CHUNK_C': 256,
    'PERSISTENT': False,
    'PROGRAMS_PER_SM': 4,
    'NUM_STAGES': 1,
    'EVICTION': '',
    'CONST_WIDTH': True,
}


def embedding(idx, wte, wpe):
    return _embedding_fwd(idx, wte, wpe, **PARAMS)
