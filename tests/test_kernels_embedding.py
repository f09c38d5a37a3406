"""kernels/embedding.py: the spec (shapes with P >= T, ids that reach both ends of the table), the seed
forward kernel at several template points and on strided inputs, the differentiable embedding() against
float64 autograd (repeated tokens through the atomics, unused positions), and the template space.
All on the CPU through Triton's interpreter (conftest sets TRITON_INTERPRET=1)."""
from __future__ import annotations

import importlib.util
import random
import sys
import types

import pytest
import torch

from evaluators.checker import compare
from evaluators.static import check_candidate
from kernels import DTYPES, get_spec
from kernels.embedding import (BWD_KNOBS, BWD_SEED_PARAMS, SEED_PARAMS, _embedding_bwd, _embedding_fwd,
                              _embedding_fwd_kernel, embedding)
from kernels.spec import Shape
from memory import Rulebook

SPEC = get_spec("embedding")
SPACE = SPEC.template
# the interpreter's many-rows shape costs seconds a call: the loops over template points keep to the small
# shapes, and tests/test_spec_coverage.py runs the seed and the promoted kernels on that one too
SMALL_SHAPES = tuple(s for s in SPEC.interpreter_shapes if s.dims["B"] * s.dims["T"] < 256)
EDGE_WIDTHS = {383, 385, 1023, 1025}
KEYS = ("B", "T", "V", "C", "P")


def dims(shapes) -> set[tuple[int, ...]]:
    return {tuple(s.dims[k] for k in KEYS) for s in shapes}


def shape(b, t, v, c, p) -> Shape:
    return Shape(name=f"{b}x{t}x{v}x{c}x{p}", dims=dict(zip(KEYS, (b, t, v, c, p))), origin="edge")


def check_output(out, inputs, dtype_key):
    """The output against the wide reference, with the layout of PyTorch's own result."""
    like = SPEC.eager(*inputs)
    assert (out.dtype, out.shape, out.stride()) == (like.dtype, like.shape, like.stride())
    tol = SPEC.tolerances[dtype_key]
    return compare(out, SPEC.reference(*inputs), tol.atol, tol.rtol)


# ----------------------------------------------------------------------------- spec

def test_spec_names_and_entry():
    assert SPEC.name == "embedding" and SPEC.entry == "embedding"
    assert SPEC.signature.startswith("embedding(idx")
    assert "wte" in SPEC.signature and "wpe" in SPEC.signature
    assert SPEC.has_backward and SPEC.bound == "memory"


def test_shapes_cover_both_models_and_edges():
    gpu = dims(SPEC.shapes)
    assert {(8, 1024, 50304, 768, 1024), (64, 256, 65, 384, 256), (1, 128, 50304, 768, 1024)} <= gpu
    assert SPEC.headline_shape().dims == dict(zip(KEYS, (8, 1024, 50304, 768, 1024)))
    assert {tuple(s.dims.values()) for s in SPEC.timed_shapes()} == {(8, 1024, 50304, 768, 1024),
                                                                     (64, 256, 65, 384, 256)}
    for shapes in (SPEC.shapes, SPEC.interpreter_shapes):
        d = dims(shapes)
        assert all(p >= t for _, t, _, _, p in d)
        assert any(t == 1 for _, t, _, _, _ in d)
        assert any(t % 2 == 1 and t > 1 and p > t for _, t, _, _, p in d)
        assert any(v == 1 for _, _, v, _, _ in d)
        assert EDGE_WIDTHS <= {c for _, _, _, c, _ in d}
    assert all(b * t <= 32 and v <= 300 for b, t, v, _, _ in dims(SMALL_SHAPES))
    # one shape of many tokens besides: the interpreter's cost is per program, not per element
    assert [(b * t, c) for b, t, _, c, _ in dims(SPEC.interpreter_shapes) if b * t > 32] == [(1020, 96)]
    assert "bfloat16" in SPEC.cpu_dtypes  # no tl.dot: exact in the interpreter


def test_tolerances_order():
    tol = SPEC.tolerances
    assert tol["float32"].atol < tol["float16"].atol <= tol["bfloat16"].atol


@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2)])
def test_bytes_moved(dtype, size):
    b, t, c = 8, 1024, 768
    fixed = b * t * 8 + (t * c + b * t * c) * size  # ids, positions, output
    headline = SPEC.bytes_moved(shape(b, t, 50304, c, 1024), dtype)
    # about 8% of 8192 draws from 50304 ids repeat one: those rows come from the cache
    assert fixed + 7400 * c * size < headline < fixed + 7700 * c * size
    # a 65-row table is read once however many tokens gather it; unused positions are never read
    assert SPEC.bytes_moved(shape(64, 256, 65, 384, 256), dtype) == (
        64 * 256 * 8 + (65 * 384 + 256 * 384 + 64 * 256 * 384) * size)
    assert SPEC.bytes_moved(shape(2, 9, 1, c, 16), dtype) == 2 * 9 * 8 + (c + 9 * c + 2 * 9 * c) * size
    assert SPEC.bytes_moved(shape(b, t, 65, c, 4096), dtype) == SPEC.bytes_moved(shape(b, t, 65, c, 1024), dtype)


@pytest.mark.parametrize("tokens,v", [(8192, 50304), (16384, 65), (128, 50304), (1, 50304), (9, 1), (66, 517)])
def test_bytes_moved_counts_the_distinct_rows_make_inputs_gathers(tokens, v):
    s = shape(1, tokens, v, 64, tokens)
    gathered = (SPEC.bytes_moved(s, torch.float32) - tokens * 8 - 2 * tokens * 64 * 4) // (64 * 4)
    assert 1 <= gathered <= min(tokens, v)
    seen = [len(SPEC.make_inputs(s, torch.float32, seed, "cpu")[0].unique()) for seed in range(4)]
    assert abs(sum(seen) / len(seen) - gathered) <= max(2, 0.02 * gathered)


def test_flops_scale_with_tokens():
    assert SPEC.flops(shape(2, 8, 65, 384, 8)) == 2 * SPEC.flops(shape(1, 8, 65, 384, 8)) > 0


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_make_inputs(dtype):
    s = shape(3, 7, 40, 383, 16)
    idx, wte, wpe = SPEC.make_inputs(s, DTYPES[dtype], 1, "cpu")
    assert idx.shape == (3, 7) and idx.dtype == torch.int64
    assert wte.shape == (40, 383) and wpe.shape == (16, 383) and wte.dtype == wpe.dtype == DTYPES[dtype]
    assert int(idx.min()) == 0 and int(idx.max()) == 39, "both ends of the table are gathered"
    assert len(idx.unique()) > 3
    for t in (wte, wpe):
        assert torch.isfinite(t).all() and t.abs().sum() > 0
    idx2, wte2, wpe2 = SPEC.make_inputs(s, DTYPES[dtype], 2, "cpu")
    assert not torch.equal(idx, idx2) and not torch.equal(wte, wte2) and not torch.equal(wpe, wpe2)


def test_make_inputs_extremes_move_and_tiny_shapes_work():
    places = set()
    for seed in range(6):
        idx = SPEC.make_inputs(shape(2, 9, 1000, 8, 9), torch.float32, seed, "cpu")[0].view(-1)
        assert (idx == 0).any() and (idx == 999).any()
        places.add(int((idx == 999).nonzero()[0]))
    assert len(places) > 1, "the extremes sit at random places"
    one = SPEC.make_inputs(shape(1, 1, 50, 8, 4), torch.float32, 0, "cpu")[0]
    assert one.shape == (1, 1) and 0 <= int(one) < 50
    only_row = SPEC.make_inputs(shape(2, 3, 1, 8, 4), torch.float32, 0, "cpu")[0]
    assert torch.equal(only_row, torch.zeros(2, 3, dtype=torch.int64))


def test_reference_is_wide_and_correct():
    idx, wte, wpe = SPEC.make_inputs(shape(2, 5, 30, 64, 9), torch.float16, 3, "cpu")
    ref = SPEC.reference(idx, wte, wpe)
    assert ref.dtype == torch.float32 and ref.shape == (2, 5, 64)
    for b in range(2):
        for t in range(5):
            assert torch.equal(ref[b, t], wte[idx[b, t]].float() + wpe[t].float())
    eager = SPEC.eager(idx, wte, wpe)
    assert eager.dtype == torch.float16 and eager.is_contiguous()
    model = SPEC.baselines["nanogpt"](idx, wte, wpe)
    assert torch.equal(model, eager) and model.stride() == eager.stride()
    idx32, wte32, wpe32 = SPEC.make_inputs(shape(2, 5, 30, 64, 9), torch.float32, 3, "cpu")
    assert SPEC.reference(idx32, wte32, wpe32).dtype == torch.float64


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_eager_passes_the_tolerances(dtype):
    for i, s in enumerate(SPEC.shapes):
        inputs = SPEC.make_inputs(s, DTYPES[dtype], 40 + i, "cpu")
        tol = SPEC.tolerances[dtype]
        result = compare(SPEC.eager(*inputs), SPEC.reference(*inputs), tol.atol, tol.rtol)
        assert result.ok, f"{s.name}: {result.summary()}"


def test_context_facts(memory_root):
    ctx = SPEC.context(SPEC.headline_shape(), 132)
    assert ctx["row_wise"] is True and ctx["normalization"] is False
    assert ctx["width"] == 768 and ctx["tokens"] == 8192 and ctx["rows_over_2x_sms"] is True
    assert SPEC.context(shape(2, 132, 65, 384, 256), 132)["rows_over_2x_sms"] is False
    assert SPEC.context(shape(1, 265, 65, 384, 512), 132)["rows_over_2x_sms"] is True
    # the pow2 rule reaches a knob; the persistent-grid rule is about normalisations, not gathers
    rules = {r.id: r for r in Rulebook.load(memory_root).query(SPEC.name, ctx)}
    assert SPACE.knobs_for(rules["rowwise.pow2-masking"].suggests) == {"SINGLE_TILE": True}
    assert "rowwise.persistent-grid" not in rules
    assert SPACE.knobs_for({"PERSISTENT": True}) == {"PERSISTENT": True}


# ----------------------------------------------------------------------------- seed forward kernel

POINTS = {
    "seed": {},
    "single-tile": {"SINGLE_TILE": True, "ROWS_PER_PROGRAM": 1},
    "batch-4": {"BATCH_PER_PROGRAM": 4, "ROWS_PER_PROGRAM": 2, "EVICTION": "evict_first"},
    "chunked-128": {"CHUNK_C": 128, "ROWS_PER_PROGRAM": 16, "CONST_WIDTH": False},
    "chunked-512": {"CHUNK_C": 512, "BATCH_PER_PROGRAM": 2, "ROWS_PER_PROGRAM": 8},
    "persistent-2": {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "SINGLE_TILE": True, "BATCH_PER_PROGRAM": 8},
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("point", list(POINTS), ids=list(POINTS))
def test_seed_kernel_matches_reference(point, dtype):
    params = SPACE.forward_point(SPACE.validate(POINTS[point]))
    failures = []
    for i, s in enumerate(SMALL_SHAPES):
        inputs = SPEC.make_inputs(s, DTYPES[dtype], 100 + i, "cpu")
        originals = [t.clone() for t in inputs]
        out = _embedding_fwd(*inputs, **params)
        for before, after in zip(originals, inputs):
            assert torch.equal(before, after), "the kernel changed its inputs"
        result = check_output(out, inputs, dtype)
        if not result.ok:
            failures.append(f"{s.name}: {result.summary()}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("point", ["seed", "batch-4"])
def test_seed_kernel_bfloat16(point):
    # elementwise bfloat16 is exact in the interpreter (only tl.dot is not), so the GPU dtype runs here too
    params = SPACE.forward_point(SPACE.validate(POINTS[point]))
    for i, s in enumerate(SMALL_SHAPES[:4]):
        inputs = SPEC.make_inputs(s, torch.bfloat16, 7 + i, "cpu")
        result = check_output(_embedding_fwd(*inputs, **params), inputs, "bfloat16")
        assert result.ok, f"{s.name}: {result.summary()}"


@pytest.mark.parametrize("batch", [2, 4, 8])
@pytest.mark.parametrize("persistent", [False, True])
def test_batch_groups_cover_every_batch_entry(batch, persistent):
    # more batch entries than one group holds, and a count that no group size divides
    params = SPACE.forward_point(SPACE.validate({"BATCH_PER_PROGRAM": batch, "ROWS_PER_PROGRAM": 2,
                                                 "PERSISTENT": persistent, "PROGRAMS_PER_SM": 2}))
    inputs = SPEC.make_inputs(shape(19, 3, 50, 128, 4), torch.float32, batch, "cpu")
    result = check_output(_embedding_fwd(*inputs, **params), inputs, "float32")
    assert result.ok, result.summary()


@pytest.mark.parametrize("point", ["seed", "single-tile", "batch-4", "persistent-2"])
def test_seed_kernel_strided_inputs(point):
    params = SPACE.forward_point(SPACE.validate(POINTS[point]))
    B, T, V, C, P = 3, 5, 20, 129, 11
    wide = shape(B, 2 * T + 1, V, 2 * C + 3, P + 2)
    idx_wide, wte_wide, wpe_wide = SPEC.make_inputs(wide, torch.float32, 5, "cpu")
    idx = idx_wide.t()[1:2 * T + 1:2].t()          # [B, T] with neither stride 1
    wte, wpe = wte_wide[:, 3:3 + C], wpe_wide[2:, C:2 * C]
    assert idx.stride() != (T, 1) and wte.stride(0) > C and wpe.stride(0) > C
    inputs = (idx, wte, wpe)
    result = check_output(_embedding_fwd(*inputs, **params), inputs, "float32")
    assert result.ok, result.summary()
    as_int32 = (idx.to(torch.int32), wte, wpe)
    result = check_output(_embedding_fwd(*as_int32, **params), inputs, "float32")
    assert result.ok, result.summary()


@pytest.mark.parametrize("single_tile", [True, False])
def test_int64_offsets_give_the_same_result(single_tile):
    # the launcher picks int64 offsets only past 2**31 elements, too large for a CPU test: launch the
    # kernel directly both ways on a small problem
    idx, wte, wpe = SPEC.make_inputs(shape(3, 5, 40, 200, 8), torch.float32, 6, "cpu")
    outs = []
    for index_64 in (False, True):
        out = torch.empty((3, 5, 200))
        _embedding_fwd_kernel[(6,)](idx, wte, wpe, out, idx.stride(0), idx.stride(1), wte.stride(0),
                                    wpe.stride(0), 3, 5, 200, BLOCK_C=256 if single_tile else 64, ROWS=2,
                                    BATCH=2, SINGLE_TILE=single_tile, EVICTION="", WIDTH=0, INDEX_64=index_64)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert check_output(outs[1], (idx, wte, wpe), "float32").ok


def test_seed_kernel_rejects_bad_inputs():
    idx, wte, wpe = SPEC.make_inputs(shape(2, 6, 30, 64, 8), torch.float32, 0, "cpu")
    with pytest.raises(ValueError, match="positions"):
        _embedding_fwd(idx, wte, wpe[:5], **SEED_PARAMS)
    with pytest.raises(ValueError):
        _embedding_fwd(idx.view(-1), wte, wpe, **SEED_PARAMS)
    with pytest.raises(ValueError):
        _embedding_fwd(idx, wte, wpe[:, :32], **SEED_PARAMS)
    with pytest.raises(ValueError, match="int64"):
        _embedding_fwd(idx.float(), wte, wpe, **SEED_PARAMS)
    with pytest.raises(ValueError, match="dtype"):
        _embedding_fwd(idx, wte, wpe.half(), **SEED_PARAMS)


def test_the_check_catches_wrong_positions():
    inputs = SPEC.make_inputs(shape(2, 6, 30, 64, 8), torch.float32, 0, "cpu")
    out = _embedding_fwd(*inputs, **SEED_PARAMS)
    assert check_output(out, inputs, "float32").ok
    idx, wte, wpe = inputs
    # positions off by one (the table read from row 1) must fail the same check
    shifted = _embedding_fwd(idx, wte, wpe[1:], **SEED_PARAMS)
    assert not check_output(shifted, inputs, "float32").ok


# ----------------------------------------------------------------------------- autograd

def _grads(b, t, v, c, p, dtype, seed, dy_t=False):
    idx, wte, wpe = SPEC.make_inputs(shape(b, t, v, c, p), dtype, seed, "cpu")
    gen = torch.Generator().manual_seed(seed)
    # a gradient whose column stride is not 1 takes the copy path
    dy = torch.randn(b, c, t, generator=gen).transpose(1, 2) if dy_t else torch.randn(b, t, c, generator=gen)
    dy = dy.to(dtype)
    ours = [wte.clone().requires_grad_(), wpe.clone().requires_grad_()]
    out = embedding(idx, *ours)
    out.backward(dy)
    ref = [wte.double().requires_grad_(), wpe.double().requires_grad_()]
    (ref[0][idx] + ref[1][:t]).backward(dy.double())
    return out, ours, ref, idx


# observed max-abs errors on the interpreter: fp32 <= 1e-6, fp16 <= 4e-3 (sums of up to 40 rows)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)], ids=["float32", "float16"])
@pytest.mark.parametrize("dims_", [(2, 7, 3, 383, 16), (4, 5, 300, 768, 5), (1, 1, 50, 1025, 8),
                                   (8, 5, 1, 129, 9)], ids=["collisions", "wide-vocab", "one-token", "vocab-1"])
def test_embedding_autograd(dims_, dtype, tol):
    out, ours, ref, idx = _grads(*dims_, dtype, seed=sum(dims_))
    assert out.dtype == dtype
    for name, a, r in zip(("wte", "wpe"), ours, ref):
        assert a.grad is not None and a.grad.dtype == dtype and a.grad.shape == r.grad.shape, name
        result = compare(a.grad, r.grad, tol, tol)
        assert result.ok, f"grad {name}: {result.summary()}"
    B, T, V, C, P = dims_
    assert torch.equal(ours[1].grad[T:], torch.zeros(P - T, C, dtype=dtype)), "unused positions get zeros"
    unused = torch.ones(V, dtype=torch.bool)
    unused[idx.view(-1)] = False
    assert torch.equal(ours[0].grad[unused], torch.zeros(int(unused.sum()), C, dtype=dtype))


def test_embedding_autograd_strided_gradient():
    _, ours, ref, _ = _grads(2, 6, 10, 200, 8, torch.float32, seed=3, dy_t=True)
    for a, r in zip(ours, ref):
        assert compare(a.grad, r.grad, 1e-5, 1e-5).ok


def test_embedding_autograd_repeats_agree_within_rounding():
    # atomics may add a repeated token's rows in any order; results agree within fp32 rounding
    first = _grads(4, 8, 2, 256, 8, torch.float32, seed=9)[1][0].grad
    second = _grads(4, 8, 2, 256, 8, torch.float32, seed=9)[1][0].grad
    assert compare(first, second, 1e-6, 1e-6).ok


# ----------------------------------------------------------------------------- template space

def test_template_seed_is_valid():
    assert SPACE.validate({}) == {**SEED_PARAMS, **BWD_SEED_PARAMS}
    assert set(SPACE.params) == set(SEED_PARAMS) | set(BWD_SEED_PARAMS)
    assert SPACE.backward_knobs == set(BWD_KNOBS) == set(BWD_SEED_PARAMS)
    assert not set(SEED_PARAMS) & set(BWD_SEED_PARAMS)
    assert SPACE.normalize(dict(SEED_PARAMS)) == SEED_PARAMS
    assert SPACE.normalize(SPACE.validate({})) == SPACE.seed
    # the seed's backward is today's: the atomic scatter
    assert BWD_SEED_PARAMS["BWD_ATOMIC"] is True
    for knob, values in BWD_KNOBS.items():
        assert BWD_SEED_PARAMS[knob] in values and 2 <= len(values) <= 5, knob


@pytest.mark.parametrize("knob,value", [("ROWS_PER_PROGRAM", 3), ("BATCH_PER_PROGRAM", 16), ("NUM_WARPS", 32),
                                        ("CHUNK_C", 100), ("PROGRAMS_PER_SM", 0), ("EVICTION", "evict_last")])
def test_validate_rejects_out_of_range(knob, value):
    with pytest.raises(ValueError, match=knob):
        SPACE.validate({knob: value})
    with pytest.raises(ValueError, match="BLOCK_Q"):
        SPACE.validate({"BLOCK_Q": 64})


def test_normalize_merges_switched_off_knobs():
    single = {tuple(sorted(SPACE.normalize(SPACE.validate({"SINGLE_TILE": True, "CHUNK_C": c,
                                                              "NUM_STAGES": st})).items()))
              for c in (128, 256, 512) for st in (1, 2, 3)}
    assert len(single) == 1
    chunked = {tuple(sorted(SPACE.normalize(SPACE.validate({"CHUNK_C": c, "NUM_STAGES": st})).items()))
               for c in (128, 256, 512) for st in (1, 2, 3)}
    assert len(chunked) == 9
    flat = {SPACE.normalize(SPACE.validate({"PROGRAMS_PER_SM": p}))["PROGRAMS_PER_SM"] for p in (2, 4, 8, 16)}
    assert len(flat) == 1
    grid = {SPACE.normalize(SPACE.validate({"PERSISTENT": True, "PROGRAMS_PER_SM": p}))["PROGRAMS_PER_SM"]
            for p in (2, 4, 8, 16)}
    assert len(grid) == 4
    batches = {SPACE.normalize(SPACE.validate({"BATCH_PER_PROGRAM": b}))["BATCH_PER_PROGRAM"]
               for b in (1, 2, 4, 8)}
    assert len(batches) == 4
    # tokens a program belong to the atomic scatter, the scan's width to the owners
    atomic = {tuple(sorted(SPACE.normalize(SPACE.validate({"BWD_WTE_ROWS": r, "BWD_SCAN_BLOCK": t})).items()))
              for r in (1, 16) for t in (64, 512)}
    assert len(atomic) == 2
    owners = {tuple(sorted(SPACE.normalize(SPACE.validate({"BWD_ATOMIC": False, "BWD_WTE_ROWS": r,
                                                           "BWD_SCAN_BLOCK": t})).items()))
              for r in (1, 16) for t in (64, 512)}
    assert len(owners) == 2
    # the segments use neither the scatter's tiles nor the owners' scans, nor the choice between them
    segments = {tuple(sorted(SPACE.normalize(SPACE.validate({"BWD_SEGMENTS": True, "BWD_ATOMIC": a,
                                                             "BWD_WTE_ROWS": r, "BWD_SCAN_BLOCK": t,
                                                             "BWD_SEG_ROWS": rows})).items()))
                for a in (True, False) for r in (1, 16) for t in (64, 512) for rows in (1, 64)}
    assert len(segments) == 2
    others = {SPACE.normalize(SPACE.validate({"BWD_ATOMIC": a, "BWD_SEG_ROWS": rows, "BWD_SEG_BLOCK": b}))["BWD_SEG_ROWS"]
              for a in (True, False) for rows in (1, 64) for b in (8, 128)}
    assert others == {BWD_SEED_PARAMS["BWD_SEG_ROWS"]}
    # the compact pass's rows count only when the atomic scatter is compact
    compact = {SPACE.normalize(SPACE.validate({"BWD_COMPACT": c, "BWD_ATOMIC": a, "BWD_COMPACT_ROWS": rows}))[
        "BWD_COMPACT_ROWS"] for c in (True, False) for a in (True, False) for rows in (1, 64)
        if not (c and a)}
    assert compact == {BWD_SEED_PARAMS["BWD_COMPACT_ROWS"]}
    assert len({SPACE.normalize(SPACE.validate({"BWD_COMPACT": True, "BWD_COMPACT_ROWS": rows}))["BWD_COMPACT_ROWS"]
                for rows in (1, 64)}) == 2
    point = SPACE.validate({"SINGLE_TILE": True, "CHUNK_C": 512})
    SPACE.normalize(point)
    assert point["CHUNK_C"] == 512, "normalize must not mutate its argument"


def test_normalize_is_a_projection():
    keys = set()
    # every 7th point of the forward knobs' space with the backward's at the seed, and 4000 random points
    # of the backward's (millions) with the forward's at the seed
    forward = SPACE.forward_only().all_points()[::7]
    rng = random.Random(0)
    backward = [{**SPACE.seed, **{k: rng.choice(SPACE.params[k]) for k in sorted(SPACE.backward_knobs)}}
                for _ in range(4000)]
    for p in forward + backward:
        n = SPACE.normalize(p)
        assert SPACE.validate(n) == n and SPACE.normalize(n) == n
        keys.add(tuple(sorted(n.items())))
    assert len(keys) < len(forward) + len(backward)


def test_neighbours_differ_in_exactly_one_knob():
    point = SPACE.validate({"SINGLE_TILE": True, "PERSISTENT": True})
    neighbours = SPACE.neighbours(point)
    assert len(neighbours) == sum(len(v) - 1 for v in SPACE.params.values())
    for n in neighbours:
        assert SPACE.validate(n) == n and sum(n[k] != point[k] for k in point) == 1


RENDER_POINTS = [
    {},
    {"SINGLE_TILE": True, "ROWS_PER_PROGRAM": 1, "NUM_WARPS": 8},
    {"BATCH_PER_PROGRAM": 8, "CHUNK_C": 128, "CONST_WIDTH": False, "EVICTION": "evict_first"},
    {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "NUM_STAGES": 3},
]


@pytest.mark.parametrize("point", RENDER_POINTS, ids=["seed", "single", "batch", "persistent"])
def test_rendered_source_passes_static_policy(point):
    params = SPACE.validate(point)
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    assert "def embedding(idx, wte, wpe)" in source
    assert "def _embedding_columns(" in source, "the kernel's helper travels with it"
    # the candidate is differentiable: the backward's kernels and launcher travel with it
    for name in ("def _embedding_bwd(", "def _embedding_bwd_wte_kernel(", "def _embedding_bwd_wte_owner_kernel(",
                 "def _cast_kernel(", "def _embedding_bwd_wpe_kernel(", "class EmbeddingFunction(",
                 "BWD_PARAMS = {"):
        assert name in source, name
    assert "EmbeddingFunction.apply(idx, wte, wpe, {**PARAMS}, {**BWD_PARAMS})" in source
    for knob, value in params.items():
        assert f"{knob!r}: {value!r}" in source
    assert SPACE.render(dict(params)) == source


def test_rendered_candidate_runs(tmp_path):
    """The rendered file works on its own: imported as a module, its entry matches the reference."""
    params = SPACE.validate({"BATCH_PER_PROGRAM": 2, "CHUNK_C": 128})
    path = tmp_path / "cand.py"
    path.write_text(SPACE.render(params))
    spec = importlib.util.spec_from_file_location("rendered_embedding_candidate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PARAMS == SPACE.forward_point(params)
    assert module.BWD_PARAMS == SPACE.backward_point(params) == BWD_SEED_PARAMS
    inputs = SPEC.make_inputs(shape(3, 5, 40, 385, 8), torch.float32, 9, "cpu")
    result = check_output(module.embedding(*inputs), inputs, "float32")
    assert result.ok, result.summary()


# ----------------------------------------------------------------------------- backward template

def _load_source(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def _gradients(entry, inputs, out_grad):
    """Gradients of the floating-point inputs (the tables), backpropagating `out_grad` through `entry`."""
    leaves = [t.clone().requires_grad_() if t.is_floating_point() else t for t in inputs]
    out = entry(*leaves)
    out.backward(out_grad.to(out.dtype))
    return [leaf.grad for leaf in leaves if leaf.is_floating_point()]


# two small interpreter shapes: shakespeare's 65-token vocabulary over 24 tokens (repeats) and an odd width
# with unused positions
BACKWARD_SHAPES = tuple(s for s in SMALL_SHAPES if s.name in ("shakespeare-width", "odd-T-5"))


def _backward_problems(entry) -> list[str]:
    """Where the float32 gradients of wte and wpe through `entry` differ from float64 autograd of the
    reference, on BACKWARD_SHAPES."""
    problems = []
    for i, s in enumerate(BACKWARD_SHAPES):
        inputs = SPEC.make_inputs(s, torch.float32, 40 + i, "cpu")
        idx, wte = inputs[0], inputs[1]
        out_grad = torch.randn((*idx.shape, wte.shape[1]), generator=torch.Generator().manual_seed(i))
        ours = _gradients(entry, inputs, out_grad)
        ref = _gradients(SPEC.reference, inputs, out_grad)
        for name, a, r in zip(("wte", "wpe"), ours, ref):
            assert a is not None and a.dtype == torch.float32 and a.shape == r.shape, name
            # each row sums a few rows of the gradient: the tolerance grows with the sums' magnitude
            result = compare(a, r, 1e-4 * max(1.0, float(r.abs().max())), 1e-4)
            if not result.ok:
                problems.append(f"{s.name} grad {name}: {result.summary()}")
    return problems


# the seed (atomic scatter) and three backward points away from it (forward knobs at the seed): the owners'
# deterministic sum with narrow scans and column chunks, the atomic scatter with other tiles throughout, and
# the segments with several table rows a program and short gathers
BACKWARD_POINTS = {
    "seed": {},
    "owners": {"BWD_ATOMIC": False, "BWD_SCAN_BLOCK": 64, "BWD_WTE_BLOCK_C": 128, "BWD_WPE_ROWS": 2,
               "BWD_WARPS": 2},
    "atomic-tiles": {"BWD_WTE_ROWS": 16, "BWD_WTE_BLOCK_C": 1024, "BWD_WPE_ROWS": 8, "BWD_WPE_BLOCK_C": 128,
                     "BWD_WARPS": 8},
    "segments": {"BWD_SEGMENTS": True, "BWD_SEG_ROWS": 4, "BWD_SEG_BLOCK": 16, "BWD_WTE_BLOCK_C": 256},
    "compact": {"BWD_COMPACT": True, "BWD_COMPACT_ROWS": 16, "BWD_WTE_ROWS": 2, "BWD_WTE_BLOCK_C": 256},
}


@pytest.mark.parametrize("point", BACKWARD_POINTS, ids=list(BACKWARD_POINTS))
def test_rendered_backward_matches_autograd(point):
    """The rendered candidate at a backward point passes the static policy and its gradients match autograd."""
    params = SPACE.validate(BACKWARD_POINTS[point])
    assert SPACE.forward_point(params) == SEED_PARAMS
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    module = _load_source(source, f"rendered_embedding_backward_{point.replace('-', '_')}")
    assert module.BWD_PARAMS == SPACE.backward_point(params)
    problems = _backward_problems(module.embedding)
    assert not problems, problems


# a bug planted in each path: the atomic scatter adds half of each row, the owner skips its own position,
# the segments' table pass drops the last position of each token's stretch, the compact rows' pass writes
# zeros for every token but the first position's
PLANTED = {
    "atomic": ({"BWD_ATOMIC": True}, ("g.to(tl.float32), mask=mask", "0.5 * g.to(tl.float32), mask=mask")),
    "owners": ({"BWD_ATOMIC": False}, ("for first in range(r, n, BLOCK_T):", "for first in range(r + 1, n, BLOCK_T):")),
    "segments": ({"BWD_SEGMENTS": True}, ("live = q < end\n", "live = q < end - 1\n")),
    # the compact rows: a token present keeps its row only where its first position is 0
    "compact": ({"BWD_COMPACT": True}, ("present = rows & (first < n)", "present = rows & (first < 1)")),
}


@pytest.mark.parametrize("path", PLANTED)
def test_rendered_backward_check_catches_a_wrong_gradient(path):
    # the check above can fail: the same candidate with a bug planted in the token table's gradient
    point, (right, wrong) = PLANTED[path]
    source = SPACE.render(SPACE.validate(point))
    assert source.count(right) == 1
    module = _load_source(source.replace(right, wrong), f"rendered_embedding_backward_planted_{path}")
    problems = _backward_problems(module.embedding)
    assert problems and all("grad wte" in p for p in problems), problems


def _tables_grads(B, T, V, C, P, dtype, seed, ids_below=None, **knobs):
    """(d wte, d wpe) of _embedding_bwd at the backward seed with `knobs` over it, and float64 sums; the ids
    are drawn from [0, ids_below) (default V)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, ids_below or V, (B, T), generator=gen)
    dy = torch.randn(B, T, C, generator=gen).to(dtype)
    dwte, dwpe = _embedding_bwd(dy, idx, V, P, dtype, **{**BWD_SEED_PARAMS, **knobs})
    ref_wte = torch.zeros(V, C, dtype=torch.float64).index_add_(0, idx.reshape(-1), dy.double().reshape(-1, C))
    ref_wpe = torch.zeros(P, C, dtype=torch.float64)
    ref_wpe[:T] = dy.double().sum(0)
    return (dwte, dwpe), (ref_wte, ref_wpe)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)], ids=["float32", "float16"])
def test_owners_match_the_sum_and_leave_unused_rows_zero(dtype, tol):
    # 90 positions over 7 of 9 ids: many repeats, more positions than one scan step holds, two rows unused
    (dwte, dwpe), (ref_wte, ref_wpe) = _tables_grads(3, 30, 9, 130, 33, dtype, 2, ids_below=7, BWD_ATOMIC=False,
                                                     BWD_SCAN_BLOCK=64, BWD_WTE_BLOCK_C=128)
    assert dwte.dtype == dwpe.dtype == dtype
    assert compare(dwte, ref_wte, tol, tol).ok and compare(dwpe, ref_wpe, tol, tol).ok
    assert float(ref_wte[:7].abs().min()) > 0 and float(dwte[7:].abs().max()) == 0.0


def test_owners_are_deterministic():
    # one owner adds a token's rows in a fixed order: the same bits on every call; another scan width
    # groups the additions differently, so it agrees within rounding, as the atomic scatter does
    def owners(scan):
        return _tables_grads(4, 40, 3, 96, 40, torch.float32, 5, BWD_ATOMIC=False, BWD_SCAN_BLOCK=scan)[0][0]

    first, again, wide = owners(64), owners(64), owners(512)
    assert torch.equal(first, again)
    assert compare(first, wide.double(), 1e-5, 1e-5).ok
    atomic = _tables_grads(4, 40, 3, 96, 40, torch.float32, 5)[0][0]
    assert compare(first, atomic.double(), 1e-5, 1e-5).ok


def test_owners_take_strided_ids_and_gradients():
    B, T, V, C, P = 3, 5, 40, 129, 7  # 15 positions under 40 tokens: the compact rows
    wide_idx = torch.randint(0, V, (B, 2 * T + 1), generator=torch.Generator().manual_seed(0))
    idx = wide_idx[:, 1::2]                                          # stride 2 between positions
    dy = torch.randn(B, C, T, generator=torch.Generator().manual_seed(1)).transpose(1, 2)  # columns strided
    ref = torch.zeros(V, C, dtype=torch.float64).index_add_(0, idx.reshape(-1), dy.double().reshape(-1, C))
    for ids in (idx, idx.to(torch.int32)):
        dwte, dwpe = _embedding_bwd(dy, ids, V, P, torch.float32, **{**BWD_SEED_PARAMS, "BWD_ATOMIC": False})
        assert compare(dwte, ref, 1e-5, 1e-5).ok
        assert compare(dwpe[:T], dy.double().sum(0), 1e-5, 1e-5).ok and float(dwpe[T:].abs().max()) == 0.0


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)], ids=["float32", "float16"])
@pytest.mark.parametrize("rows,block", [(1, 8), (4, 128)], ids=["row-short-steps", "rows-one-step"])
def test_segments_match_the_sum_and_write_unused_rows_as_zeros(dtype, tol, rows, block):
    # 90 positions over 7 of 9 ids: stretches longer than a step of 8, two rows no id points to. dwte is
    # allocated uninitialised, so a zero there is one the table pass stored
    (dwte, dwpe), (ref_wte, ref_wpe) = _tables_grads(3, 30, 9, 130, 33, dtype, 2, ids_below=7, BWD_SEGMENTS=True,
                                                     BWD_SEG_ROWS=rows, BWD_SEG_BLOCK=block, BWD_WTE_BLOCK_C=128)
    assert dwte.dtype == dwpe.dtype == dtype
    assert compare(dwte, ref_wte, tol, tol).ok and compare(dwpe, ref_wpe, tol, tol).ok
    assert float(ref_wte[:7].abs().min()) > 0 and float(dwte[7:].abs().max()) == 0.0


def test_segments_take_strided_ids_one_token_and_one_position():
    B, T, V, C, P = 3, 5, 40, 129, 7  # 15 positions under 40 tokens: the compact rows
    wide_idx = torch.randint(0, V, (B, 2 * T + 1), generator=torch.Generator().manual_seed(0))
    idx = wide_idx[:, 1::2]                                          # stride 2 between positions
    dy = torch.randn(B, C, T, generator=torch.Generator().manual_seed(1)).transpose(1, 2)  # columns strided
    knobs = {**BWD_SEED_PARAMS, "BWD_SEGMENTS": True, "BWD_SEG_ROWS": 4}
    for ids in (idx, idx.to(torch.int32), torch.full_like(idx, V - 1)):
        ref = torch.zeros(V, C, dtype=torch.float64).index_add_(0, ids.reshape(-1), dy.double().reshape(-1, C))
        dwte, dwpe = _embedding_bwd(dy, ids, V, P, torch.float32, **knobs)
        assert compare(dwte, ref, 1e-5, 1e-5).ok
        assert compare(dwpe[:T], dy.double().sum(0), 1e-5, 1e-5).ok and float(dwpe[T:].abs().max()) == 0.0
    one = torch.randn(1, 1, C, generator=torch.Generator().manual_seed(2))
    dwte, _ = _embedding_bwd(one, torch.tensor([[3]]), V, P, torch.float32, **knobs)
    # a single position's row is its gradient exactly; every other row is zero
    assert torch.equal(dwte[3], one[0, 0]) and float(dwte[torch.arange(V) != 3].abs().max()) == 0.0


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)], ids=["float32", "float16"])
@pytest.mark.parametrize("rows", [1, 64])
def test_compact_rows_match_the_sum_and_write_unused_rows_as_zeros(dtype, tol, rows):
    # 90 positions over 7 of 9 ids (more positions than tokens: the [V, C] buffer is the smaller, and the knob
    # falls back to it), and 90 over 500 ids (the compact rows, most of the table absent)
    for V, below in ((9, 7), (500, None)):
        (dwte, dwpe), (ref_wte, ref_wpe) = _tables_grads(3, 30, V, 130, 33, dtype, 2, ids_below=below,
                                                         BWD_COMPACT=True, BWD_COMPACT_ROWS=rows,
                                                         BWD_WTE_BLOCK_C=128)
        assert dwte.dtype == dwpe.dtype == dtype and dwte.shape == (V, 130)
        assert compare(dwte, ref_wte, tol, tol).ok and compare(dwpe, ref_wpe, tol, tol).ok
        absent = ref_wte.abs().amax(1) == 0
        assert bool(absent.any()) and float(dwte[absent].abs().max()) == 0.0


def test_compact_rows_take_strided_ids_one_token_and_no_position():
    B, T, V, C, P = 3, 5, 40, 129, 7  # 15 positions under 40 tokens: the compact rows
    wide_idx = torch.randint(0, V, (B, 2 * T + 1), generator=torch.Generator().manual_seed(0))
    idx = wide_idx[:, 1::2]                                          # stride 2 between positions
    dy = torch.randn(B, C, T, generator=torch.Generator().manual_seed(1)).transpose(1, 2)  # columns strided
    knobs = {**BWD_SEED_PARAMS, "BWD_COMPACT": True}
    for ids in (idx, idx.to(torch.int32), torch.full_like(idx, V - 1)):
        ref = torch.zeros(V, C, dtype=torch.float64).index_add_(0, ids.reshape(-1), dy.double().reshape(-1, C))
        dwte, dwpe = _embedding_bwd(dy, ids, V, P, torch.float32, **knobs)
        assert compare(dwte, ref, 1e-5, 1e-5).ok
        assert compare(dwpe[:T], dy.double().sum(0), 1e-5, 1e-5).ok and float(dwpe[T:].abs().max()) == 0.0
    empty = torch.empty(2, 0, C)
    dwte, dwpe = _embedding_bwd(empty, torch.empty(2, 0, dtype=torch.int64), V, P, torch.float32, **knobs)
    assert float(dwte.abs().max()) == 0.0 and float(dwpe.abs().max()) == 0.0


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)], ids=["float32", "float16"])
@pytest.mark.parametrize("batch", [4, 8])
def test_wpe_sum_split_over_the_batch_matches_and_repeats_bit_for_bit(dtype, tol, batch):
    # 9 batch entries in chunks of 4 (the last of one) or 8: partial sums added in order in a second pass;
    # P > T, so the rows past the sequence are written as zeros
    knobs = {"BWD_WPE_BATCH": batch, "BWD_WPE_ROWS": 2, "BWD_WPE_BLOCK_C": 128}
    (dwte, dwpe), (ref_wte, ref_wpe) = _tables_grads(9, 13, 11, 130, 17, dtype, 4, **knobs)
    assert dwpe.dtype == dtype and dwpe.shape == (17, 130)
    assert compare(dwpe, ref_wpe, tol, tol).ok and compare(dwte, ref_wte, tol, tol).ok
    assert float(dwpe[13:].abs().max()) == 0.0
    again = _tables_grads(9, 13, 11, 130, 17, dtype, 4, **knobs)[0][1]
    assert torch.equal(dwpe, again)
