"""kernels/attention.py: the spec, the forward kernel at several template points (pointer and TMA loads),
the differentiable attention() against float64 autograd, and the template space (translate, render, the
seed rules). All on the CPU through Triton's interpreter (conftest sets TRITON_INTERPRET=1), except the
tests marked gpu."""
from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import types

import pytest
import torch

from agents.search.coder import counterfactual
from agents.search.planner import Planner
from evaluators.checker import compare
from evaluators.static import check_candidate
from kernels import DTYPES, TARGETS, get_spec
from kernels.attention import (BWD_KNOBS, BWD_SEED_PARAMS, SEED_PARAMS, _attention_bwd, _attention_fwd,
                               attention)
from kernels.spec import Shape
from memory import Rulebook

SPEC = get_spec("attention")
SPACE = SPEC.template
# the interpreter's many-rows shape costs seconds a call: the loops over template points keep to the small
# shapes, and tests/test_spec_coverage.py runs the seed and the promoted kernels on that one too
SMALL_SHAPES = tuple(s for s in SPEC.interpreter_shapes if s.dims["B"] * s.dims["T"] < 256)


def shape(b: int, t: int, h: int, d: int = 64, origin: str = "edge") -> Shape:
    return Shape(name=f"{b}x{t}x{h}x{d}", dims={"B": b, "T": t, "H": h, "D": d}, origin=origin)


def dims(shapes) -> set[tuple[int, int, int, int]]:
    return {tuple(s.dims[k] for k in ("B", "T", "H", "D")) for s in shapes}


def forward_params(point) -> dict:
    """The forward launcher's knobs at a template point (the rest of the point is the backward's)."""
    return SPACE.forward_point(SPACE.validate(point))


def check(out, inputs, dtype: str):
    tol = SPEC.tolerances[dtype]
    return compare(out, SPEC.reference(*inputs), tol.atol, tol.rtol)


# ----------------------------------------------------------------------------- spec

def test_spec_names_and_entry():
    assert SPEC.name == "attention" and SPEC.entry == "attention"
    assert SPEC.signature.startswith("attention(qkv") and "n_head" in SPEC.signature
    assert SPEC.has_backward and SPEC.bound == "compute"
    assert "attention" in TARGETS["nanogpt"]


def test_shapes_cover_both_models_and_edges():
    assert dims(SPEC.timed_shapes()) == {(8, 1024, 12, 64), (64, 256, 6, 64)}
    assert SPEC.headline_shape().dims == {"B": 8, "T": 1024, "H": 12, "D": 64}
    assert (1, 128, 12, 64) in dims(SPEC.shapes)
    for shapes in (SPEC.shapes, SPEC.interpreter_shapes):
        ts = {s.dims["T"] for s in shapes}
        assert 1 in ts, "one token"
        assert any(t % 64 and t > 64 for t in ts), "a sequence that does not fill a tile"
        assert any(s.dims["B"] % 2 and s.dims["B"] > 1 for s in shapes), "an odd batch"
        assert {s.dims["D"] for s in shapes} == {64}
        assert all(not s.timed for s in shapes if s.origin == "edge")
    # the interpreter is slow: tiny problems only
    assert all(s.dims["T"] <= 70 and s.dims["B"] * s.dims["H"] <= 6 for s in SMALL_SHAPES)
    # and one of many rows: a long sequence in one head
    assert [dict(s.dims) for s in SPEC.interpreter_shapes if s not in SMALL_SHAPES] == [
        {"B": 2, "T": 1025, "H": 1, "D": 64}]


def test_dtypes_and_tolerances():
    assert set(SPEC.gpu_dtypes) == {"bfloat16", "float16", "float32"}
    assert set(SPEC.cpu_dtypes) == {"float32", "float16"}  # tl.dot on bf16 is broken in the interpreter
    tol = SPEC.tolerances
    assert tol["float32"].atol <= 1e-4 < tol["float16"].atol < tol["bfloat16"].atol <= 3e-2


@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2)])
def test_bytes_moved_and_flops(dtype, size):
    s = shape(8, 1024, 12)
    assert SPEC.bytes_moved(s, dtype) == (8 * 1024 * 3 * 768 + 8 * 1024 * 768) * size
    assert SPEC.flops(s) == 2 * 8 * 12 * 1024 * 1024 * 64
    assert SPEC.flops(shape(2, 1024, 12)) == 2 * SPEC.flops(shape(1, 1024, 12))
    assert SPEC.flops(shape(1, 2048, 12)) == 4 * SPEC.flops(shape(1, 1024, 12))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_make_inputs(dtype):
    qkv, n_head = SPEC.make_inputs(shape(3, 17, 2), DTYPES[dtype], 1, "cpu")
    assert qkv.shape == (3, 17, 3 * 128) and qkv.dtype == DTYPES[dtype] and qkv.is_contiguous()
    assert n_head == 2 and isinstance(n_head, int)
    assert torch.isfinite(qkv).all() and qkv.float().std() > 0.5
    assert not torch.equal(qkv, SPEC.make_inputs(shape(3, 17, 2), DTYPES[dtype], 2, "cpu")[0])
    again = SPEC.make_inputs(shape(3, 17, 2), DTYPES[dtype], 1, "cpu")[0]
    again.zero_()
    assert qkv.abs().sum() > 0, "calls must not share storage"


def test_reference_is_wide_and_matches_eager():
    qkv, h = SPEC.make_inputs(shape(2, 33, 3), torch.float32, 4, "cpu")
    ref = SPEC.reference(qkv, h)
    assert ref.dtype == torch.float64 and ref.shape == (2, 33, 192)
    eager = SPEC.eager(qkv, h)
    assert eager.dtype == torch.float32 and eager.is_contiguous() and eager.shape == (2, 33, 192)
    assert compare(eager, ref, 1e-5, 1e-5).ok
    # the first token attends to itself alone: its output is its own value
    v0 = qkv[:, 0, 2 * 192:].double()
    assert torch.allclose(ref[:, 0], v0, atol=1e-12)
    half, h = SPEC.make_inputs(shape(1, 9, 2), torch.float16, 4, "cpu")
    assert SPEC.reference(half, h).dtype == torch.float32 and SPEC.eager(half, h).dtype == torch.float16


def test_context_facts():
    ctx = SPEC.context(SPEC.headline_shape(), 132)
    assert ctx == {"head_dim": 64, "causal": True, "has_dot": True, "seq_len": 1024}


def test_seed_rules_apply_in_this_templates_terms(memory_root):
    plan = Planner(Rulebook.load(memory_root), None, "H100", 132, budget=8, test_rules=True).plan(SPEC)
    applied = {r.id for r in plan.rules}
    assert {"attention.stability-floor", "attention.tile-64x64", "attention.load-pipelining"} <= applied
    assert not [n for n in plan.notes if "outside" in n], plan.notes
    assert plan.suggestions == {"MASK_VALUE": -1e20, "BLOCK_M": 64, "BLOCK_N": 64, "NUM_WARPS": 4,
                                "NUM_STAGES": 3, "V_EARLY": True}
    first = SPACE.normalize(SPACE.validate({**SEED_PARAMS, **plan.suggestions}))
    for rule in plan.rules:
        flipped = counterfactual(SPACE, first, rule)
        assert SPACE.validate(flipped) == flipped and flipped != first, rule.id


# ----------------------------------------------------------------------------- forward kernel

POINTS = {
    "seed": {},
    "tma": {"USE_TMA": True},
    "64x64-v-early": {"BLOCK_M": 64, "BLOCK_N": 64, "V_EARLY": True, "NUM_STAGES": 1},
    "32x128-tma-v-early": {"BLOCK_M": 32, "BLOCK_N": 128, "USE_TMA": True, "V_EARLY": True},
    "128x128-4warps": {"BLOCK_N": 128, "NUM_WARPS": 4},
    "64x32-inf-in-order": {"BLOCK_M": 64, "BLOCK_N": 32, "MASK_VALUE": float("-inf"), "LONGEST_FIRST": False},
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("point", list(POINTS), ids=list(POINTS))
def test_forward_matches_reference(point, dtype):
    params = forward_params(POINTS[point])
    failures = []
    for i, s in enumerate(SMALL_SHAPES):
        inputs = SPEC.make_inputs(s, DTYPES[dtype], 100 + i, "cpu")
        original = inputs[0].clone()
        out = _attention_fwd(*inputs, **params)
        eager = SPEC.eager(*inputs)
        assert out.dtype == eager.dtype and out.shape == eager.shape and out.stride() == eager.stride()
        assert torch.equal(inputs[0], original), "the kernel changed its input"
        result = check(out, inputs, dtype)
        if not result.ok:
            failures.append(f"{s.name} {s}: {result.summary()}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("point", ["seed", "tma"])
def test_forward_reads_strided_rows(point):
    # qkv as a column slice of a wider activation: rows further apart than 3C, passed as strides
    B, T, H = 2, 37, 2
    wide = torch.randn(B, T, 3 * 128 + 16)
    qkv = wide[:, :, 8:8 + 3 * 128]
    assert not qkv.is_contiguous() and qkv.stride(2) == 1
    out = _attention_fwd(qkv, H, **forward_params(POINTS[point]))
    assert out.is_contiguous()
    assert check(out, (qkv, H), "float32").ok


def test_forward_copies_a_transposed_input():
    qkv = torch.randn(2, 3 * 128, 21).transpose(1, 2)
    assert qkv.stride(2) != 1
    assert check(_attention_fwd(qkv, 2, **SEED_PARAMS), (qkv, 2), "float32").ok


def test_forward_other_head_dims():
    for d in (16, 32, 128):
        qkv, h = SPEC.make_inputs(shape(1, 40, 2, d), torch.float32, d, "cpu")
        assert check(_attention_fwd(qkv, h, **SEED_PARAMS), (qkv, h), "float32").ok, d


def test_forward_order_and_mask_value_change_nothing_but_speed():
    qkv, h = SPEC.make_inputs(shape(3, 70, 2), torch.float32, 8, "cpu")
    base = _attention_fwd(qkv, h, **SEED_PARAMS)
    for change in ({"LONGEST_FIRST": False}, {"MASK_VALUE": float("-inf")}, {"V_EARLY": True}):
        assert torch.equal(base, _attention_fwd(qkv, h, **{**SEED_PARAMS, **change})), change


def test_forward_stores_the_log2_sum_exp():
    qkv, h = SPEC.make_inputs(shape(2, 45, 2), torch.float32, 9, "cpu")
    lse = torch.full((4, 45), float("nan"))
    _attention_fwd(qkv, h, **SEED_PARAMS, lse=lse)
    q, k = (t.double().view(2, 45, 2, 64).transpose(1, 2) for t in qkv.split(128, dim=2)[:2])
    scores = (q @ k.transpose(-1, -2) / 8.0).masked_fill(~torch.ones(45, 45, dtype=torch.bool).tril(),
                                                          float("-inf"))
    expected = torch.logsumexp(scores, dim=-1).reshape(4, 45) / math.log(2.0)
    assert compare(lse, expected, 1e-5, 1e-5).ok


@pytest.mark.parametrize("bad,n_head", [((4, 3 * 128), 2), ((2, 4, 100), 2), ((2, 4, 3 * 128), 3),
                                        ((2, 4, 3 * 96), 2), ((2, 4, 3 * 512), 1)])
def test_forward_rejects_bad_shapes(bad, n_head):
    with pytest.raises(ValueError):
        _attention_fwd(torch.randn(bad), n_head, **SEED_PARAMS)


def test_compare_catches_a_wrong_output():
    qkv, h = SPEC.make_inputs(shape(1, 20, 2), torch.float32, 3, "cpu")
    out = _attention_fwd(qkv, h, **SEED_PARAMS)
    assert check(out, (qkv, h), "float32").ok
    out[0, 7, 70] += 1e-3
    assert not check(out, (qkv, h), "float32").ok


# ----------------------------------------------------------------------------- autograd

def _autograd_pair(qkv, n_head, dy):
    ours = qkv.clone().requires_grad_()
    y = attention(ours, n_head)
    y.backward(dy)
    ref = qkv.to(torch.float64).requires_grad_()
    y_ref = SPEC.reference(ref, n_head)
    y_ref.backward(dy.to(torch.float64))
    return y, ours.grad, y_ref, ref.grad


# observed max-abs gradient errors on the interpreter: fp32 <= 1.2e-6, fp16 <= 2.5e-3
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-5, 1e-5), (torch.float16, 1e-2, 1e-2)],
                         ids=["float32", "float16"])
@pytest.mark.parametrize("b,t,h,d", [(1, 64, 2, 64), (3, 17, 2, 64), (1, 65, 2, 64), (2, 1, 2, 64),
                                     (1, 70, 2, 32)])
def test_attention_autograd(b, t, h, d, dtype, atol, rtol):
    gen = torch.Generator().manual_seed(b * 1000 + t)
    qkv = torch.randn(b, t, 3 * h * d, generator=gen).to(dtype)
    dy = torch.randn(b, t, h * d, generator=gen).to(dtype)
    y, grad, y_ref, grad_ref = _autograd_pair(qkv, h, dy)
    assert y.dtype == dtype and grad.dtype == dtype and grad.shape == qkv.shape
    result = compare(y, y_ref, atol, rtol)
    assert result.ok, f"forward: {result.summary()}"
    for name, cols in (("q", slice(0, h * d)), ("k", slice(h * d, 2 * h * d)), ("v", slice(2 * h * d, None))):
        result = compare(grad[..., cols], grad_ref[..., cols], atol, rtol)
        assert result.ok, f"grad {name}: {result.summary()}"


def test_attention_gradient_of_a_strided_input_and_gradient():
    gen = torch.Generator().manual_seed(5)
    wide = torch.randn(2, 30, 3 * 128 + 8, generator=gen)
    dy = torch.randn(2, 128, 30, generator=gen).transpose(1, 2)  # not contiguous either
    leaf = wide.clone().requires_grad_()
    attention(leaf[:, :, 4:4 + 3 * 128], 2).backward(dy)
    ref = wide.double().requires_grad_()
    SPEC.reference(ref[:, :, 4:4 + 3 * 128], 2).backward(dy.double())
    assert compare(leaf.grad, ref.grad, 1e-5, 1e-5).ok
    assert torch.equal(leaf.grad[..., :4], torch.zeros(2, 30, 4))


def test_attention_backward_is_deterministic():
    gen = torch.Generator().manual_seed(6)
    qkv = torch.randn(1, 50, 3 * 128, generator=gen)
    dy = torch.randn(1, 50, 128, generator=gen)
    grads = []
    for _ in range(2):
        leaf = qkv.clone().requires_grad_()
        attention(leaf, 2).backward(dy)
        grads.append(leaf.grad)
    assert torch.equal(grads[0], grads[1])


# ----------------------------------------------------------------------------- template space

def test_template_seed_is_valid():
    assert SPACE.validate({}) == {**SEED_PARAMS, **BWD_SEED_PARAMS}
    assert set(SPACE.params) == set(SEED_PARAMS) | set(BWD_SEED_PARAMS)
    assert not set(SEED_PARAMS) & set(BWD_SEED_PARAMS)
    assert SPACE.backward_knobs == set(BWD_KNOBS) == set(BWD_SEED_PARAMS)
    assert SPACE.forward_point(SPACE.seed) == SEED_PARAMS and SPACE.backward_point(SPACE.seed) == BWD_SEED_PARAMS
    for knob, values in BWD_KNOBS.items():
        assert BWD_SEED_PARAMS[knob] in values and SPACE.params[knob] == values, knob
    for knob in ("DKDV_BLOCK_M", "DKDV_BLOCK_N", "DQ_BLOCK_M", "DQ_BLOCK_N"):
        assert set(BWD_KNOBS[knob]) == {32, 64, 128}
    for knob in ("BLOCK_M", "BLOCK_N"):
        assert {32, 64, 128} <= set(SPACE.params[knob])
    assert set(SPACE.params["NUM_STAGES"]) == {1, 2, 3, 4}
    assert set(SPACE.params["NUM_WARPS"]) == {4, 8}
    assert SPACE.params["MASK_VALUE"] == (-1e20, float("-inf"))


@pytest.mark.parametrize("knob,value", [("BLOCK_M", 256), ("NUM_STAGES", 5), ("MASK_VALUE", -1e4)])
def test_validate_rejects_out_of_range(knob, value):
    with pytest.raises(ValueError, match=knob):
        SPACE.validate({knob: value})


def test_translate_load_latencies():
    assert SPACE.knobs_for({"K_LAT": 2, "V_LAT": 5}) == {"NUM_STAGES": 3, "V_EARLY": True}
    assert SPACE.knobs_for({"K_LAT": 3, "V_LAT": 3}) == {"NUM_STAGES": 4, "V_EARLY": False}
    assert SPACE.knobs_for({"K_LAT": 1}) == {"NUM_STAGES": 2}
    # a knob the rule names itself wins over the translation; unknown keys are dropped
    assert SPACE.knobs_for({"K_LAT": 2, "NUM_STAGES": 1, "USE_DOT": True}) == {"NUM_STAGES": 1}
    # a tile of 64 query rows or fewer is one warpgroup's: 4 warps unless the lesson names a count
    assert SPACE.knobs_for({"BLOCK_M": 64, "BLOCK_N": 64}) == {"BLOCK_M": 64, "BLOCK_N": 64, "NUM_WARPS": 4}
    assert SPACE.knobs_for({"BLOCK_M": 32, "NUM_WARPS": 8}) == {"BLOCK_M": 32, "NUM_WARPS": 8}
    assert SPACE.knobs_for({"BLOCK_M": 128, "BLOCK_N": 64}) == {"BLOCK_M": 128, "BLOCK_N": 64}
    assert SPACE.knobs_for({"MASK_VALUE": -1e20}) == {"MASK_VALUE": -1e20}


def test_no_two_points_merge():
    # every knob changes the compiled kernel or its grid, so canonical has nothing to merge; the forward and
    # backward space together is too large to list, so the forward's points and the backward's neighbours
    forward = SPACE.forward_only()
    points = forward.all_points()
    assert len({tuple(sorted(SPACE.normalize(p).items())) for p in points}) == len(points) == forward.size()
    assert all(SPACE.normalize(p) == p for p in SPACE.neighbours(SPACE.validate({})))


def test_backward_launcher_takes_every_knob_without_defaults():
    params = list(inspect.signature(_attention_bwd).parameters.values())
    assert [p.name for p in params[:5]] == ["dy", "qkv", "y", "lse", "n_head"]
    assert {p.name for p in params[5:]} == set(BWD_KNOBS)
    assert all(p.default is inspect.Parameter.empty for p in params)


RENDER_POINTS = [{}, {"USE_TMA": True, "MASK_VALUE": float("-inf")}, {"BLOCK_M": 32, "BLOCK_N": 128,
                 "V_EARLY": True, "LONGEST_FIRST": False}, {"NUM_WARPS": 4, "NUM_STAGES": 4}]


@pytest.mark.parametrize("point", RENDER_POINTS, ids=["seed", "tma-inf", "32x128", "4warps"])
def test_rendered_source_passes_static_policy(point):
    params = SPACE.validate(point)
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    assert "def attention(qkv, n_head)" in source and source.count("@triton.jit") == 7
    assert "class AttentionFunction(torch.autograd.Function)" in source
    assert "AttentionFunction.apply(qkv, n_head, {**PARAMS}, {**BWD_PARAMS})" in source
    for knob, value in params.items():
        shown = repr(str(value)) if knob == "MASK_VALUE" and math.isinf(value) else repr(value)
        assert f"{knob!r}: {shown}" in source


def test_render_is_deterministic_and_distinct():
    sources = {SPACE.render(SPACE.validate(p)) for p in RENDER_POINTS}
    assert len(sources) == len(RENDER_POINTS)
    assert SPACE.render(SPACE.validate({})) == SPACE.render({**SEED_PARAMS, **BWD_SEED_PARAMS})


def test_rendered_candidate_runs(tmp_path):
    """The rendered file works on its own, -inf mask and descriptors included."""
    params = SPACE.validate({"USE_TMA": True, "MASK_VALUE": float("-inf"), "BLOCK_M": 64})
    path = tmp_path / "cand.py"
    path.write_text(SPACE.render(params))
    spec = importlib.util.spec_from_file_location("rendered_attention_candidate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert float(module.PARAMS["MASK_VALUE"]) == float("-inf")
    assert {k: v for k, v in module.PARAMS.items() if k != "MASK_VALUE"} == {
        k: v for k, v in SPACE.forward_point(params).items() if k != "MASK_VALUE"}
    assert module.BWD_PARAMS == SPACE.backward_point(params) == BWD_SEED_PARAMS
    inputs = SPEC.make_inputs(shape(3, 17, 2), torch.float16, 12, "cpu")
    assert check(module.attention(*inputs), inputs, "float16").ok


# ----------------------------------------------------------------------------- backward template points

BWD_POINTS = {
    "seed": {},
    # FlashAttention-2's own split of the tiles: narrow query steps for dK/dV, narrow key steps for dQ
    "32x128-128x32-split": {"DKDV_BLOCK_M": 32, "DKDV_BLOCK_N": 128, "DKDV_STAGES": 3, "DKDV_SPLIT_DIAGONAL": True,
                            "DQ_BLOCK_M": 128, "DQ_BLOCK_N": 32, "DQ_WARPS": 8, "DQ_SPLIT_DIAGONAL": True},
    # tiles of the two kernels that cut T differently, with a non-seed forward
    "128x32-32x64-dkdv-split": {"DKDV_BLOCK_M": 128, "DKDV_BLOCK_N": 32, "DKDV_SPLIT_DIAGONAL": True,
                                "DQ_BLOCK_M": 32, "DQ_BLOCK_N": 64, "DQ_STAGES": 1, "BLOCK_M": 64, "USE_TMA": True},
}
# a sequence that fills no tile (several key blocks, a partial last one) and an odd batch of short ones
BWD_SHAPES = tuple(s for s in SMALL_SHAPES if s.name in ("T65", "T17-odd-B"))


def _load(source: str) -> types.ModuleType:
    module = types.ModuleType("rendered_attention_bwd_candidate")
    sys.modules[module.__name__] = module
    exec(compile(source, "<candidate>", "exec"), module.__dict__)
    return module


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, b0 = a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()
    return a0 < b0 + b.untyped_storage().nbytes() and b0 < a0 + a.untyped_storage().nbytes()


@pytest.mark.parametrize("point", list(BWD_POINTS), ids=list(BWD_POINTS))
def test_rendered_candidate_gradients_match_autograd(point):
    """The rendered file at a backward point: the static policy passes it, and its gradient of qkv matches
    float64 autograd of the reference, in a buffer of its own."""
    assert len(BWD_SHAPES) == 2
    params = SPACE.validate(BWD_POINTS[point])
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    module = _load(source)
    assert module.BWD_PARAMS == SPACE.backward_point(params)
    failures = []
    for i, s in enumerate(BWD_SHAPES):
        qkv, n_head = SPEC.make_inputs(s, torch.float32, 300 + i, "cpu")
        leaf = qkv.clone().requires_grad_()
        y = module.attention(leaf, n_head)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(i))
        (grad,) = torch.autograd.grad(y, leaf, dy)
        assert not any(_overlap(grad, t) for t in (leaf, y, dy)), "the gradient shares storage"
        ref = qkv.to(torch.float64).requires_grad_()
        (grad_ref,) = torch.autograd.grad(SPEC.reference(ref, n_head), ref, dy.to(torch.float64))
        result = compare(grad, grad_ref, 1e-4, 1e-4)
        if not result.ok:
            failures.append(f"{s.name}: {result.summary()}")
    assert not failures, "\n".join(failures)


def test_backward_split_diagonal_changes_nothing_but_speed():
    # masking the diagonal blocks alone drops selects that keep every value as it is: the same bits
    qkv, h = SPEC.make_inputs(shape(2, 70, 1), torch.float32, 21, "cpu")
    dy = torch.randn(2, 70, 64, generator=torch.Generator().manual_seed(21))
    lse = torch.empty(2, 70)
    y = _attention_fwd(qkv, h, **SEED_PARAMS, lse=lse)
    for tiles in ({}, {"DKDV_BLOCK_M": 32, "DKDV_BLOCK_N": 64, "DQ_BLOCK_M": 64, "DQ_BLOCK_N": 32}):
        base = _attention_bwd(dy, qkv, y, lse, h, **{**BWD_SEED_PARAMS, **tiles})
        split = _attention_bwd(dy, qkv, y, lse, h, **{**BWD_SEED_PARAMS, **tiles, "DKDV_SPLIT_DIAGONAL": True,
                                                      "DQ_SPLIT_DIAGONAL": True})
        assert torch.equal(base, split), tiles


# ----------------------------------------------------------------------------- GPU (bf16, TMA)

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("point", ["seed", "tma", "128x128-4warps", "largest"])
def test_gpu_forward(point, dtype):
    points = {**POINTS, "largest": {"BLOCK_M": 128, "BLOCK_N": 128, "NUM_STAGES": 4, "USE_TMA": True}}
    params = forward_params(points[point])
    for i, s in enumerate(SPEC.shapes):
        inputs = SPEC.make_inputs(s, DTYPES[dtype], i, "cuda")
        result = check(_attention_fwd(*inputs, **params), inputs, dtype)
        assert result.ok, f"{s.name}: {result.summary()}"


@pytest.mark.gpu
def test_gpu_autograd_bfloat16():
    gen = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(2, 200, 3 * 768, generator=gen, device="cuda").bfloat16()
    dy = torch.randn(2, 200, 768, generator=gen, device="cuda").bfloat16()
    y, grad, y_ref, grad_ref = _autograd_pair(qkv, 12, dy)
    assert compare(y, y_ref, 2.5e-2, 2e-2).ok
    assert compare(grad, grad_ref, 5e-2, 5e-2).ok
