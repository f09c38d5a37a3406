"""kernels/add_layer_norm.py: the spec (two outputs, eager within the tolerances), the seed forward kernel
at several template points, the differentiable add_layer_norm() against float64 autograd (both outputs'
gradients, either one unused), and the template space (validate, normalize, neighbours, render, rules).
All on the CPU through Triton's interpreter (conftest sets TRITON_INTERPRET=1)."""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from evaluators.checker import compare
from evaluators.static import check_candidate
from kernels import DTYPES, get_spec
from kernels.add_layer_norm import (BWD_KNOBS, BWD_SEED_PARAMS, SEED_PARAMS, _add_layer_norm_bwd, _add_layer_norm_fwd,
                                   _add_layer_norm_fwd_kernel, add_layer_norm)
from kernels.layer_norm import EPS_CHOICES
from kernels.spec import Shape
from memory import Rulebook

SPEC = get_spec("add_layer_norm")
SPACE = SPEC.template
# the interpreter's many-rows shape costs seconds a call: the loops over template points keep to the small
# shapes, and tests/test_spec_coverage.py runs the seed and the promoted kernels on that one too
SMALL_SHAPES = tuple(s for s in SPEC.interpreter_shapes if s.dims["M"] < 256)
EDGE_WIDTHS = {383, 385, 1023, 1025}


def dims(shapes) -> set[tuple[int, int]]:
    return {(s.dims["M"], s.dims["N"]) for s in shapes}


def shape(m: int, n: int, origin: str = "edge") -> Shape:
    return Shape(name=f"{m}x{n}", dims={"M": m, "N": n}, origin=origin)


def check_outputs(outs, inputs, dtype_key):
    """Both outputs against the wide reference, with the layout of PyTorch's own result; failures as text."""
    tol = SPEC.tolerances[dtype_key]
    eager = SPEC.eager(*inputs)
    assert isinstance(outs, tuple) and len(outs) == 2
    assert outs[0].untyped_storage().data_ptr() != outs[1].untyped_storage().data_ptr()
    problems = []
    for name, out, ref, like in zip(("s", "y"), outs, SPEC.reference(*inputs), eager):
        assert (out.dtype, out.shape, out.stride()) == (like.dtype, like.shape, like.stride()), name
        result = compare(out, ref, tol.atol, tol.rtol)
        if not result.ok:
            problems.append(f"{name}: {result.summary()}")
    return problems


# ----------------------------------------------------------------------------- spec

def test_spec_names_and_entry():
    assert SPEC.name == "add_layer_norm" and SPEC.entry == "add_layer_norm"
    assert SPEC.signature.startswith("add_layer_norm(x")
    for arg in ("residual", "weight", "bias", "eps"):
        assert arg in SPEC.signature
    assert SPEC.has_backward and SPEC.bound == "memory"


def test_shapes_cover_both_models_and_edges():
    gpu = dims(SPEC.shapes)
    assert {(8192, 768), (16384, 384), (128, 768)} <= gpu
    assert SPEC.headline_shape().dims == {"M": 8192, "N": 768}
    assert dims(SPEC.timed_shapes()) == {(8192, 768), (16384, 384)}
    assert any(m == 1 for m, _ in gpu) and any(m % 2 == 1 and m > 1 for m, _ in gpu)
    assert EDGE_WIDTHS <= {n for _, n in gpu}
    assert all(not s.timed for s in SPEC.shapes if s.origin == "edge")
    small = dims(SPEC.interpreter_shapes)
    assert EDGE_WIDTHS | {384, 768} <= {n for _, n in small}
    assert any(m == 1 for m, _ in small) and max(m for m, _ in dims(SMALL_SHAPES)) <= 16
    # one shape of many narrow rows besides: the interpreter's cost is per program, not per element
    assert [(m, n) for m, n in small if m > 16] == [(1027, 96)]
    # no tl.dot here, so bfloat16 runs on the CPU too
    assert SPEC.gpu_dtypes == ("bfloat16", "float16", "float32")
    assert SPEC.cpu_dtypes == ("float32", "float16", "bfloat16")


def test_tolerances_order():
    tol = SPEC.tolerances
    assert tol["float32"].atol < tol["float16"].atol <= tol["bfloat16"].atol


@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2)])
@pytest.mark.parametrize("m,n", [(8192, 768), (16384, 384), (1, 1025)])
def test_bytes_moved(dtype, size, m, n):
    assert SPEC.bytes_moved(shape(m, n), dtype) == (4 * m * n + 2 * n) * size


def test_flops_scale_with_size():
    assert SPEC.flops(shape(16, 768)) > 0
    assert SPEC.flops(shape(32, 768)) == 2 * SPEC.flops(shape(16, 768))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_make_inputs(dtype):
    s = shape(13, 383)
    x, r, w, b, eps = SPEC.make_inputs(s, DTYPES[dtype], 1, "cpu")
    assert x.shape == r.shape == (13, 383) and w.shape == b.shape == (383,)
    assert x.dtype == r.dtype == w.dtype == b.dtype == DTYPES[dtype]
    assert isinstance(eps, float) and eps in EPS_CHOICES
    for t in (x, r, w, b):
        assert torch.isfinite(t).all() and t.abs().sum() > 0
    assert x.float().std(dim=1).min() > 0 and r.float().std(dim=1).min() > 0
    again = SPEC.make_inputs(s, DTYPES[dtype], 2, "cpu")
    for a, c in zip((x, r, w, b), again):
        assert not torch.equal(a, c)


def test_make_inputs_fresh_per_call():
    first = SPEC.make_inputs(shape(4, 64), torch.float32, 7, "cpu")
    second = SPEC.make_inputs(shape(4, 64), torch.float32, 7, "cpu")
    first[1].zero_()
    assert second[1].abs().sum() > 0, "calls must not share storage"


def test_reference_is_wide_and_from_the_unrounded_sum():
    x, r, w, b, eps = SPEC.make_inputs(shape(5, 100), torch.float16, 3, "cpu")
    s, y = SPEC.reference(x, r, w, b, eps)
    assert s.dtype == y.dtype == torch.float32
    wide = x.float() + r.float()
    assert torch.equal(s, wide)
    assert not torch.equal(s, (x + r).float()), "the fp16 sum rounds; the reference must not"
    mean = wide.mean(dim=1, keepdim=True)
    var = ((wide - mean) ** 2).mean(dim=1, keepdim=True)
    manual = (wide - mean) / torch.sqrt(var + eps) * w.float() + b.float()
    assert torch.allclose(y, manual, atol=1e-5, rtol=1e-5)
    x32, r32, w32, b32, _ = SPEC.make_inputs(shape(5, 100), torch.float32, 3, "cpu")
    assert all(t.dtype == torch.float64 for t in SPEC.reference(x32, r32, w32, b32, eps))
    s_e, y_e = SPEC.eager(x, r, w, b, eps)
    assert s_e.dtype == y_e.dtype == torch.float16 and torch.equal(s_e, x + r)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_eager_passes_the_tolerances(dtype):
    # eager normalises the rounded sum, the reference the unrounded one: the tolerance must absorb that
    for i, s in enumerate(SPEC.shapes):
        inputs = SPEC.make_inputs(s, DTYPES[dtype], 40 + i, "cpu")
        tol = SPEC.tolerances[dtype]
        for out, ref in zip(SPEC.eager(*inputs), SPEC.reference(*inputs)):
            result = compare(out, ref, tol.atol, tol.rtol)
            assert result.ok, f"{s.name}: {result.summary()}"


def test_context_facts():
    ctx = SPEC.context(shape(8192, 768), 132)
    assert ctx == {"row_wise": True, "normalization": True, "rows_over_2x_sms": True, "width": 768}
    assert SPEC.context(shape(264, 768), 132)["rows_over_2x_sms"] is False
    assert SPEC.context(shape(265, 768), 132)["rows_over_2x_sms"] is True


def test_seed_rules_reach_template_knobs(memory_root):
    book = Rulebook.load(memory_root)
    rules = {r.id: r for r in book.query(SPEC.name, SPEC.context(SPEC.headline_shape(), 132))}
    for rule_id, knob in (("rowwise.pow2-masking", "SINGLE_TILE"), ("rowwise.persistent-grid", "PERSISTENT")):
        knobs = SPACE.knobs_for(rules[rule_id].suggests)
        assert knobs == {knob: True} and SPACE.validate(knobs)[knob] is True


# ----------------------------------------------------------------------------- seed forward kernel

POINTS = {
    "seed": {},
    "single-tile": {"SINGLE_TILE": True, "ROWS_PER_PROGRAM": 1},
    "single-rows-4": {"SINGLE_TILE": True, "ROWS_PER_PROGRAM": 4, "EVICTION": "evict_first"},
    "chunked-128": {"CHUNK_N": 128, "ROWS_PER_PROGRAM": 2, "CONST_WIDTH": False},
    "chunked-512": {"CHUNK_N": 512, "ROWS_PER_PROGRAM": 8},
    "persistent-2": {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "SINGLE_TILE": True},
    # 8 programs on the CPU's assumed 4 SMs: each strides over two or more tiles, loading the next ahead
    "prefetch": {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "SINGLE_TILE": True, "ROWS_PER_PROGRAM": 1,
                 "PREFETCH": True, "STORE_CACHE": ".cs", "SCALE_EARLY": True},
    "prefetch-rows-2": {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "SINGLE_TILE": True, "ROWS_PER_PROGRAM": 2,
                        "PREFETCH": True, "CONST_WIDTH": False},
    "straight-line": {"SINGLE_TILE": True, "ROWS_PER_PROGRAM": 2, "STORE_CACHE": ".cs", "SCALE_EARLY": True},
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("point", list(POINTS), ids=list(POINTS))
def test_seed_kernel_matches_reference(point, dtype):
    params = SPACE.forward_point(SPACE.validate(POINTS[point]))
    failures = []
    for i, s in enumerate(SMALL_SHAPES):
        inputs = SPEC.make_inputs(s, DTYPES[dtype], 100 + i, "cpu")
        originals = [t.clone() for t in inputs[:4]]
        outs = _add_layer_norm_fwd(*inputs, **params)
        for before, after in zip(originals, inputs[:4]):
            assert torch.equal(before, after), "the kernel changed its inputs"
        failures += [f"{s.name}: {p}" for p in check_outputs(outs, inputs, dtype)]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("point", ["seed", "single-tile"])
def test_seed_kernel_bfloat16(point):
    # elementwise bfloat16 is exact in the interpreter (only tl.dot is not), so the GPU dtype runs here too
    params = SPACE.forward_point(SPACE.validate(POINTS[point]))
    for i, s in enumerate(SMALL_SHAPES[:4]):
        inputs = SPEC.make_inputs(s, torch.bfloat16, 7 + i, "cpu")
        assert not check_outputs(_add_layer_norm_fwd(*inputs, **params), inputs, "bfloat16")


@pytest.mark.parametrize("point", ["seed", "single-tile"])
def test_s_is_the_rounded_sum_and_y_uses_the_unrounded_one(point):
    # a large offset makes rounding s to fp16 visible in y (eager normalises the rounded s); y computed
    # from the fp32 sum stays within y's own rounding of the wide result
    gen = torch.Generator().manual_seed(4)
    x = (8.0 + 0.5 * torch.randn(6, 385, generator=gen)).half()
    r = (0.5 * torch.randn(6, 385, generator=gen)).half()
    w, b = torch.ones(385, dtype=torch.float16), torch.zeros(385, dtype=torch.float16)
    s, y = _add_layer_norm_fwd(x, r, w, b, 1e-5, **SPACE.forward_point(SPACE.validate(POINTS[point])))
    assert torch.equal(s, x + r)
    wide = F.layer_norm(x.float() + r.float(), (385,), w.float(), b.float(), 1e-5)
    eager = F.layer_norm(x + r, (385,), w, b, 1e-5)
    assert (eager.float() - wide).abs().max() > 4e-3
    assert (y.float() - wide).abs().max() < 2e-3


@pytest.mark.parametrize("point", ["seed", "single-tile", "persistent-2"])
def test_seed_kernel_non_contiguous_rows(point):
    params = SPACE.forward_point(SPACE.validate(POINTS[point]))
    M, N = 13, 385
    wide_x, wide_r, w, b, eps = SPEC.make_inputs(shape(M, 2 * N + 7), torch.float32, 5, "cpu")
    x, r = wide_x[:, 3:3 + N], wide_r[:, N + 7:]
    w, b = w[:N].contiguous(), b[:N].contiguous()
    assert x.stride(0) > N and not x.is_contiguous() and r.stride(0) > N
    outs = _add_layer_norm_fwd(x, r, w, b, eps, **params)
    assert all(o.is_contiguous() for o in outs)
    assert not check_outputs(outs, (x, r, w, b, eps), "float32")


@pytest.mark.parametrize("single_tile, grid, prefetch", [(True, 4, False), (True, 2, False), (True, 2, True),
                                                          (False, 4, False)],
                         ids=["one-tile-each", "persistent", "persistent-prefetch", "chunked"])
def test_int64_offsets_give_the_same_result(single_tile, grid, prefetch):
    # the launcher picks int64 offsets only past 2**31 elements, too large for a CPU test: launch the
    # kernel directly both ways on a small problem (7 rows, 2 per tile: 4 tiles)
    inputs = SPEC.make_inputs(shape(7, 200), torch.float32, 6, "cpu")
    x, r, w, b, eps = inputs
    results = []
    for index_64 in (False, True):
        s, y = torch.empty_like(x), torch.empty_like(x)
        _add_layer_norm_fwd_kernel[(grid,)](x, r, w, b, s, y, 200, 200, 200, 200, 7, 200, eps,
                                            BLOCK_N=256 if single_tile else 64, ROWS=2, SINGLE_TILE=single_tile,
                                            PERSISTENT=grid < 4, PREFETCH=prefetch, SCALE_EARLY=prefetch,
                                            EVICTION="", STORE_CACHE="",
                                            WIDTH=0, INDEX_64=index_64)
        results.append((s, y))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert not check_outputs(results[1], inputs, "float32")


def test_seed_kernel_rejects_bad_inputs():
    x, r, w, b, eps = SPEC.make_inputs(shape(4, 64), torch.float32, 0, "cpu")
    with pytest.raises(ValueError):
        _add_layer_norm_fwd(x, r[:2], w, b, eps, **SEED_PARAMS)
    with pytest.raises(ValueError):
        _add_layer_norm_fwd(x, r, w[:32], b, eps, **SEED_PARAMS)
    with pytest.raises(ValueError):
        _add_layer_norm_fwd(x.reshape(2, 2, 64), r.reshape(2, 2, 64), w, b, eps, **SEED_PARAMS)
    with pytest.raises(ValueError, match="floating"):
        _add_layer_norm_fwd(x, r.to(torch.int32), w, b, eps, **SEED_PARAMS)


def test_a_16_bit_branch_into_a_float32_stream():
    # mixed-precision training: s stays in the residual's float32, y comes out in the branch's dtype
    x, r, w, b, eps = SPEC.make_inputs(shape(6, 96), torch.float32, 3, "cpu")
    branch = x.half()
    s, y = _add_layer_norm_fwd(branch, r, w, b, eps, **SEED_PARAMS)
    assert (s.dtype, y.dtype) == (torch.float32, torch.float16)
    want = branch.double() + r.double()
    assert torch.allclose(s.double(), want, atol=1e-6)
    ref = torch.nn.functional.layer_norm(want, (96,), w.double(), b.double(), eps)
    assert torch.allclose(y.double(), ref, atol=4e-3, rtol=4e-3)
    dy, ds = torch.randn(6, 96).half(), torch.randn(6, 96)
    dx, dx_lo, dw, db = _add_layer_norm_bwd(ds, dy, s, w, eps, torch.float16, **BWD_SEED_PARAMS)
    assert (dx.dtype, dx_lo.dtype) == (torch.float32, torch.float16)
    assert torch.equal(dx_lo, dx.half())


def test_no_rows_gives_empty_outputs():
    x = torch.empty((0, 64))
    s, y = _add_layer_norm_fwd(x, x.clone(), torch.ones(64), torch.zeros(64), 1e-5, **SEED_PARAMS)
    assert s.shape == y.shape == (0, 64)


def test_the_check_catches_wrong_outputs():
    inputs = SPEC.make_inputs(shape(3, 383), torch.float32, 0, "cpu")
    s, y = _add_layer_norm_fwd(*inputs, **SEED_PARAMS)
    assert not check_outputs((s, y), inputs, "float32")
    x, r, w, b, eps = inputs
    # normalising x alone (the residual forgotten) or a slightly wrong s must both be caught
    forgot = F.layer_norm(x, (383,), w, b, eps)
    assert check_outputs((s, forgot), inputs, "float32")
    nudged = s.clone()
    nudged[1, 5] += 1e-2
    assert check_outputs((nudged, y), inputs, "float32")


# ----------------------------------------------------------------------------- autograd

def _leaves(m, n, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, n, generator=gen) * 2.0 + 0.5).to(dtype)
    r = (torch.randn(m, n, generator=gen) * 0.5).to(dtype)
    w = (1.0 + 0.2 * torch.randn(n, generator=gen)).to(dtype)
    b = (0.2 * torch.randn(n, generator=gen)).to(dtype)
    ds = torch.randn(m, n, generator=gen).to(dtype)
    dy = torch.randn(m, n, generator=gen).to(dtype)
    return (x, r, w, b), ds, dy


def _run_both(tensors, grads_for):
    """Our op and float64 autograd of the unfused op, backpropagating `grads_for(s, y)` pairs."""
    ours = [t.clone().requires_grad_() for t in tensors]
    ref = [t.to(torch.float64).requires_grad_() for t in tensors]
    s, y = add_layer_norm(*ours, 1e-5)
    s_ref = ref[0] + ref[1]
    y_ref = F.layer_norm(s_ref, (tensors[0].shape[1],), ref[2], ref[3], 1e-5)
    outs, grads = grads_for(s, y)
    torch.autograd.backward(outs, grads)
    outs_ref, grads_ref = grads_for(s_ref, y_ref)
    torch.autograd.backward(outs_ref, [g.to(torch.float64) for g in grads_ref])
    return (s, y), ours, (s_ref, y_ref), ref


# observed max-abs errors on the interpreter: fp32 <= 2e-6, fp16 <= 6e-3 (gradients up to ~16)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 1e-2)], ids=["float32", "float16"])
@pytest.mark.parametrize("m,n", [(7, 383), (16, 768), (1, 1025)])
def test_autograd_both_outputs(m, n, dtype, tol):
    tensors, ds, dy = _leaves(m, n, dtype, seed=m * 1000 + n)
    outs, ours, outs_ref, ref = _run_both(tensors, lambda s, y: ((s, y), (ds, dy)))
    for out, out_ref in zip(outs, outs_ref):
        assert out.dtype == dtype and compare(out, out_ref, tol, tol).ok
    for name, a, r in zip(("x", "residual", "weight", "bias"), ours, ref):
        assert a.grad is not None and a.grad.dtype == dtype and a.grad.shape == r.grad.shape, name
        result = compare(a.grad, r.grad, tol, tol)
        assert result.ok, f"grad {name}: {result.summary()}"


def test_autograd_s_unused():
    # s feeds nothing: its gradient is None and the kernel skips reading it
    tensors, _, dy = _leaves(9, 385, torch.float32, seed=1)
    _, ours, _, ref = _run_both(tensors, lambda s, y: ((y,), (dy,)))
    for name, a, r in zip(("x", "residual", "weight", "bias"), ours, ref):
        result = compare(a.grad, r.grad, 1e-5, 1e-5)
        assert result.ok, f"grad {name}: {result.summary()}"


def test_autograd_y_unused():
    tensors, ds, _ = _leaves(9, 385, torch.float32, seed=2)
    _, ours, _, _ = _run_both(tensors, lambda s, y: ((s,), (ds,)))
    assert torch.equal(ours[0].grad, ds) and torch.equal(ours[1].grad, ds)
    assert ours[2].grad is None and ours[3].grad is None


def test_autograd_gradients_of_the_summands_are_independent():
    # x and residual get one gradient tensor; accumulating into one leaf must not change the other
    tensors, ds, dy = _leaves(5, 128, torch.float32, seed=3)
    _, ours, _, _ = _run_both(tensors, lambda s, y: ((s, y), (ds, dy)))
    before = ours[1].grad.clone()
    ours[0].grad += 1.0
    assert torch.equal(ours[1].grad, before)


def test_autograd_same_tensor_as_both_summands():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 200, generator=gen)
    w, b = 1.0 + 0.1 * torch.randn(200, generator=gen), 0.1 * torch.randn(200, generator=gen)
    dy = torch.randn(6, 200, generator=gen)
    leaf = x.clone().requires_grad_()
    add_layer_norm(leaf, leaf, w, b)[1].backward(dy)
    ref = x.double().requires_grad_()
    F.layer_norm(ref + ref, (200,), w.double(), b.double(), 1e-5).backward(dy.double())
    assert compare(leaf.grad, ref.grad, 1e-5, 1e-5).ok


def test_autograd_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(5)
    wide = torch.randn(6, 300, generator=gen)
    w, b = 1.0 + 0.1 * torch.randn(129, generator=gen), 0.1 * torch.randn(129, generator=gen)
    ds, dy = torch.randn(6, 129, generator=gen), torch.randn(129, 6, generator=gen).t()
    assert dy.stride(1) != 1
    leaf = wide.clone().requires_grad_()
    s, y = add_layer_norm(leaf[:, 10:139], leaf[:, 150:279], w, b)
    torch.autograd.backward((s, y), (ds, dy))
    ref = wide.double().requires_grad_()
    s_ref = ref[:, 10:139] + ref[:, 150:279]
    y_ref = F.layer_norm(s_ref, (129,), w.double(), b.double(), 1e-5)
    torch.autograd.backward((s_ref, y_ref), (ds.double(), dy.double()))
    result = compare(leaf.grad, ref.grad, 1e-5, 1e-5)
    assert result.ok, result.summary()


# ----------------------------------------------------------------------------- template space

def test_template_seed_is_valid():
    assert SPACE.validate({}) == {**SEED_PARAMS, **BWD_SEED_PARAMS}
    assert set(SPACE.params) == set(SEED_PARAMS) | set(BWD_SEED_PARAMS)
    assert SPACE.backward_knobs == set(BWD_KNOBS) == set(BWD_SEED_PARAMS)
    assert not set(SEED_PARAMS) & set(BWD_SEED_PARAMS)
    assert SPACE.normalize(dict(SEED_PARAMS)) == SEED_PARAMS
    assert SPACE.normalize(SPACE.validate({})) == SPACE.seed
    for knob, values in BWD_KNOBS.items():
        assert BWD_SEED_PARAMS[knob] in values and 2 <= len(values) <= 5, knob


def test_backward_seed_is_layer_norms_but_its_own():
    # the same first pass and column sums as layer_norm's backward, from the same point, in dicts of its own
    from kernels import layer_norm

    assert BWD_SEED_PARAMS == layer_norm.BWD_SEED_PARAMS and BWD_SEED_PARAMS is not layer_norm.BWD_SEED_PARAMS
    assert BWD_KNOBS == layer_norm.BWD_KNOBS and BWD_KNOBS is not layer_norm.BWD_KNOBS


@pytest.mark.parametrize("knob,value", [("ROWS_PER_PROGRAM", 3), ("NUM_WARPS", 32), ("CHUNK_N", 100),
                                        ("PROGRAMS_PER_SM", 0), ("EVICTION", "evict_last")])
def test_validate_rejects_out_of_range(knob, value):
    with pytest.raises(ValueError, match=knob):
        SPACE.validate({knob: value})
    with pytest.raises(ValueError, match="BLOCK_Q"):
        SPACE.validate({"BLOCK_Q": 64})


def test_normalize_merges_switched_off_knobs():
    single = {tuple(sorted(SPACE.normalize(SPACE.validate({"SINGLE_TILE": True, "CHUNK_N": c,
                                                              "NUM_STAGES": st})).items()))
              for c in (128, 256, 512) for st in (1, 2, 3)}
    assert len(single) == 1
    chunked = {tuple(sorted(SPACE.normalize(SPACE.validate({"CHUNK_N": c, "NUM_STAGES": st})).items()))
               for c in (128, 256, 512) for st in (1, 2, 3)}
    assert len(chunked) == 9
    flat = {SPACE.normalize(SPACE.validate({"PROGRAMS_PER_SM": p}))["PROGRAMS_PER_SM"] for p in (2, 4, 8, 16)}
    assert len(flat) == 1
    grid = {SPACE.normalize(SPACE.validate({"PERSISTENT": True, "PROGRAMS_PER_SM": p}))["PROGRAMS_PER_SM"]
            for p in (2, 4, 8, 16)}
    assert len(grid) == 4
    point = SPACE.validate({"SINGLE_TILE": True, "CHUNK_N": 512})
    SPACE.normalize(point)
    assert point["CHUNK_N"] == 512, "normalize must not mutate its argument"


def test_normalize_is_a_projection():
    keys = set()
    # the forward knobs' whole space, the backward's held at the seed (with them the space is too big to list)
    for p in SPACE.forward_only().all_points():
        n = SPACE.normalize(p)
        assert SPACE.validate(n) == n and SPACE.normalize(n) == n
        keys.add(tuple(sorted(n.items())))
    assert len(keys) < SPACE.size()


def test_neighbours_differ_in_exactly_one_knob():
    point = SPACE.validate({"SINGLE_TILE": True, "PERSISTENT": True})
    neighbours = SPACE.neighbours(point)
    assert len(neighbours) == sum(len(v) - 1 for v in SPACE.params.values())
    for n in neighbours:
        assert SPACE.validate(n) == n and sum(n[k] != point[k] for k in point) == 1


RENDER_POINTS = [
    {},
    {"SINGLE_TILE": True, "ROWS_PER_PROGRAM": 1, "NUM_WARPS": 4},
    {"CHUNK_N": 128, "NUM_WARPS": 8, "CONST_WIDTH": False, "EVICTION": "evict_first"},
    {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "ROWS_PER_PROGRAM": 2},
]


@pytest.mark.parametrize("point", RENDER_POINTS, ids=["seed", "single", "chunked", "persistent"])
def test_rendered_source_passes_static_policy(point):
    params = SPACE.validate(point)
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    assert "def add_layer_norm(x, residual, weight, bias, eps)" in source
    # the candidate is differentiable: the backward's kernels, helper and launcher travel with it
    for name in ("def _add_layer_norm_bwd(", "def _add_layer_norm_bwd_kernel(", "def _column_sums_kernel(",
                 "def bwd_layout(", "class AddLayerNormFunction(", "BWD_PARAMS = {"):
        assert name in source, name
    assert "AddLayerNormFunction.apply(x, residual, weight, bias, eps, {**PARAMS}, {**BWD_PARAMS})" in source
    for knob, value in params.items():
        assert f"{knob!r}: {value!r}" in source
    assert SPACE.render(dict(params)) == source


def test_rendered_candidate_runs(tmp_path):
    """The rendered file works on its own: imported as a module, its entry matches the reference."""
    params = SPACE.validate({"CHUNK_N": 128, "ROWS_PER_PROGRAM": 2})
    path = tmp_path / "cand.py"
    path.write_text(SPACE.render(params))
    spec = importlib.util.spec_from_file_location("rendered_add_layer_norm_candidate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PARAMS == SPACE.forward_point(params)
    assert module.BWD_PARAMS == SPACE.backward_point(params) == BWD_SEED_PARAMS
    inputs = SPEC.make_inputs(shape(5, 385), torch.float32, 9, "cpu")
    assert not check_outputs(module.add_layer_norm(*inputs), inputs, "float32")


def _load_source(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def _gradients(entry, inputs, out_grads):
    """Gradients of every floating-point input, backpropagating `out_grads` through `entry`'s outputs."""
    leaves = [t.clone().requires_grad_() if torch.is_tensor(t) and t.is_floating_point() else t for t in inputs]
    outs = entry(*leaves)
    torch.autograd.backward(outs, [g.to(o.dtype) for g, o in zip(out_grads, outs)])
    return [leaf.grad for leaf in leaves if torch.is_tensor(leaf) and leaf.is_floating_point()]


# two small interpreter shapes: an odd width with odd rows, and shakespeare's width
BACKWARD_SHAPES = tuple(s for s in SMALL_SHAPES if s.name in ("odd-rows-383", "shakespeare-width"))


def _backward_problems(entry) -> list[str]:
    """Where the float32 gradients of x, residual, weight and bias through `entry` differ from float64
    autograd of the reference (both outputs' gradients given), on BACKWARD_SHAPES."""
    problems = []
    for i, s in enumerate(BACKWARD_SHAPES):
        inputs = SPEC.make_inputs(s, torch.float32, 40 + i, "cpu")
        gen = torch.Generator().manual_seed(i)
        out_grads = [torch.randn(inputs[0].shape, generator=gen) for _ in range(2)]
        ours = _gradients(entry, inputs, out_grads)
        ref = _gradients(SPEC.reference, inputs, out_grads)
        for name, a, r in zip(("x", "residual", "weight", "bias"), ours, ref):
            assert a is not None and a.dtype == torch.float32 and a.shape == r.shape, name
            # weight and bias sum over the rows: their tolerance grows with the sum's magnitude
            result = compare(a, r, 1e-4 * max(1.0, float(r.abs().max())), 1e-4)
            if not result.ok:
                problems.append(f"{s.name} grad {name}: {result.summary()}")
    return problems


# the seed and two backward points away from it (forward knobs at the seed): long and short row tiles, few
# and many programs (on the CPU's 4 "SMs": 4 programs striding over the row tiles, or one each), fixed warps,
# and the second reduction in wide and narrow strips
BACKWARD_POINTS = {
    "seed": {},
    "long-tiles-few-programs": {"BWD_TILE": 8192, "BWD_PROGRAMS_PER_SM": 1, "BWD_WARPS": 8, "SUM_BLOCK_G": 16,
                                "SUM_BLOCK_N": 128},
    "short-tiles-many-programs": {"BWD_TILE": 1024, "BWD_PROGRAMS_PER_SM": 8, "BWD_WARPS": 2, "SUM_BLOCK_G": 128,
                                  "SUM_BLOCK_N": 16},
}


@pytest.mark.parametrize("point", BACKWARD_POINTS, ids=list(BACKWARD_POINTS))
def test_rendered_backward_matches_autograd(point):
    """The rendered candidate at a backward point passes the static policy and its gradients match autograd."""
    params = SPACE.validate(BACKWARD_POINTS[point])
    assert SPACE.forward_point(params) == SEED_PARAMS
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    module = _load_source(source, f"rendered_add_layer_norm_backward_{point.replace('-', '_')}")
    assert module.BWD_PARAMS == SPACE.backward_point(params)
    problems = _backward_problems(module.add_layer_norm)
    assert not problems, problems


def test_rendered_backward_check_catches_a_wrong_gradient():
    # the check above can fail: the same candidate with its weight and bias gradients swapped
    source = SPACE.render(SPACE.validate({}))
    right = "return dx, dx, dw, db, None, None, None"
    assert right in source
    module = _load_source(source.replace(right, "return dx, dx, db, dw, None, None, None"),
                          "rendered_add_layer_norm_backward_swapped")
    problems = _backward_problems(module.add_layer_norm)
    assert any("grad weight" in p for p in problems) and any("grad bias" in p for p in problems), problems
