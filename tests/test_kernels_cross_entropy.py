"""kernels/cross_entropy.py: the spec, the forward kernels at points of every knob (chunk widths, split
rows, both online log-sum-exp forms), ignored rows, determinism, the fused forward+backward against float64
autograd, and the template space. All on the CPU through Triton's interpreter (conftest sets
TRITON_INTERPRET=1)."""
from __future__ import annotations

import importlib.util
import inspect
import math
import sys
import types

import pytest
import torch

from evaluators.checker import compare
from evaluators.static import check_candidate
from kernels import DTYPES, get_spec
from kernels.cross_entropy import (BWD_KNOBS, BWD_SEED_PARAMS, SEED_PARAMS, _cross_entropy_fwd,
                                   _cross_entropy_fwd_kernel, _fused_fwd, _scale_grad_, cross_entropy,
                                   cross_entropy_fused)
from kernels.spec import Shape

SPEC = get_spec("cross_entropy")
SPACE = SPEC.template
# the interpreter's many-rows shape costs seconds a call: the loops over template points keep to the small
# shapes, and tests/test_spec_coverage.py runs the seed and the promoted kernels on that one too
SMALL_SHAPES = tuple(s for s in SPEC.interpreter_shapes if s.dims["M"] < 256)
EDGE_WIDTHS = {383, 385, 1023, 1025}
F = torch.nn.functional


def dims(shapes) -> set[tuple[int, int]]:
    return {(s.dims["M"], s.dims["V"]) for s in shapes}


def shape(m: int, v: int) -> Shape:
    return Shape(name=f"{m}x{v}", dims={"M": m, "V": v}, origin="edge")


def forward_params(point) -> dict:
    """The forward launcher's knobs at a template point (the rest of the point is the backward's)."""
    return SPACE.forward_point(SPACE.validate(point))


def ref64(logits, targets):
    return F.cross_entropy(logits.double(), targets, ignore_index=-1)


# ----------------------------------------------------------------------------- spec

def test_spec_names_shapes_and_dtypes():
    assert SPEC.name == SPEC.entry == "cross_entropy"
    assert SPEC.signature.startswith("cross_entropy(logits") and "targets" in SPEC.signature
    assert SPEC.has_backward and SPEC.bound == "memory"
    assert SPEC.headline_shape().dims == {"M": 8192, "V": 50304}
    assert dims(SPEC.timed_shapes()) == {(8192, 50304), (16384, 65)}
    assert (128, 50304) in dims(SPEC.shapes)
    edge = [s for s in SPEC.shapes if s.origin == "edge"]
    assert all(not s.timed for s in edge)
    assert any(s.dims["M"] == 1 for s in edge)
    assert any(s.dims["M"] % 2 == 1 and s.dims["M"] > 1 for s in edge)
    assert EDGE_WIDTHS <= {s.dims["V"] for s in edge}
    # a vocabulary that is a multiple of no chunk width of the template
    assert any(all(s.dims["V"] % b for b in SPACE.params["BLOCK_V"]) for s in edge)
    small = SPEC.interpreter_shapes
    assert all(s.dims["M"] * s.dims["V"] <= 128 * 1024 for s in SMALL_SHAPES) and not any(s.timed for s in small)
    # and one of many narrow rows, past the mean kernel's blocks of 1024 rows
    assert [(s.dims["M"], s.dims["V"]) for s in small if s not in SMALL_SHAPES] == [(2051, 65)]
    assert EDGE_WIDTHS | {65, 50304} <= {s.dims["V"] for s in small}
    assert any(s.dims["M"] == 1 for s in small)
    assert "bfloat16" in SPEC.gpu_dtypes and "bfloat16" in SPEC.cpu_dtypes  # no tl.dot: exact in the interpreter


@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_bytes_and_flops(dtype, size):
    assert SPEC.bytes_moved(shape(8192, 50304), dtype) == 8192 * 50304 * size + 8192 * 8 + 4
    assert SPEC.flops(shape(32, 65)) == 2 * SPEC.flops(shape(16, 65)) > 0


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("m,v", [(64, 383), (1, 1025), (2, 7)])
def test_make_inputs(dtype, m, v):
    logits, targets = SPEC.make_inputs(shape(m, v), DTYPES[dtype], 1, "cpu")
    assert logits.shape == (m, v) and logits.dtype == DTYPES[dtype]
    assert targets.shape == (m,) and targets.dtype == torch.int64
    assert torch.isfinite(logits).all() and logits.float().std() > 1
    assert logits.float().max() > 14, "no large logit to test the max shift"
    valid = targets != -1
    assert bool(((targets >= 0) & (targets < v) | ~valid).all())
    assert valid.any(), "never every row ignored"
    assert bool(valid.all()) == (m == 1), "some rows ignored exactly when M > 1"
    again, _ = SPEC.make_inputs(shape(m, v), DTYPES[dtype], 2, "cpu")
    assert not torch.equal(logits, again)


def test_reference_and_eager():
    logits, targets = SPEC.make_inputs(shape(9, 100), torch.float16, 3, "cpu")
    ref = SPEC.reference(logits, targets)
    assert ref.dtype == torch.float64 and ref.dim() == 0
    x = logits.double()
    valid = targets != -1
    rows = torch.logsumexp(x, dim=1) - x.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    assert torch.allclose(ref, rows[valid].mean(), atol=1e-12, rtol=1e-12)
    eager = SPEC.eager(logits, targets)
    assert eager.dtype == torch.float32 and eager.dim() == 0 and eager.stride() == ()
    tol = SPEC.tolerances["float16"]
    assert compare(eager, ref, tol.atol, tol.rtol).ok, "the baseline itself must pass the tolerance"


def test_context_facts():
    ctx = SPEC.context(shape(8192, 50304), 132)
    assert ctx == {"row_wise": True, "rows_over_2x_sms": True, "width": 50304}
    assert SPEC.context(shape(128, 50304), 132)["rows_over_2x_sms"] is False


# ----------------------------------------------------------------------------- forward kernels

POINTS = {
    "seed": {},
    "lane": {"LSE": "lane", "EVICTION": "evict_first"},
    "small-chunks": {"BLOCK_V": 256, "NUM_WARPS": 2},
    "rows-4": {"ROWS": 4, "BLOCK_V": 512},
    "split-4": {"SPLIT_V": 4, "BLOCK_V": 256},
    "split-16-lane": {"SPLIT_V": 16, "BLOCK_V": 256, "LSE": "lane", "ROWS": 2},
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("point", list(POINTS), ids=list(POINTS))
def test_forward_matches_reference(point, dtype):
    params = forward_params(POINTS[point])
    tol = SPEC.tolerances[dtype]
    failures = []
    for i, s in enumerate(SMALL_SHAPES):
        logits, targets = SPEC.make_inputs(s, DTYPES[dtype], 100 + i, "cpu")
        originals = (logits.clone(), targets.clone())
        out = _cross_entropy_fwd(logits, targets, **params)
        assert out.dtype == torch.float32 and out.shape == () and out.stride() == ()
        assert torch.equal(originals[0], logits) and torch.equal(originals[1], targets)
        result = compare(out, SPEC.reference(logits, targets), tol.atol, tol.rtol)
        if not result.ok:
            failures.append(f"{s.name} {s}: {result.summary()}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("point", ["seed", "lane", "split-4"])
def test_ignored_rows_leave_the_sum_and_the_count(point):
    params = forward_params(POINTS[point])
    logits, targets = SPEC.make_inputs(shape(12, 700), torch.float32, 4, "cpu")
    targets[:] = torch.arange(12) * 50
    targets[[1, 5, 6]] = -1
    # a row left out must not count even with an enormous loss (its logits are all huge but one)
    logits[5] = 80.0
    out = _cross_entropy_fwd(logits, targets, **params)
    valid = targets != -1
    by_hand = (torch.logsumexp(logits.double(), 1) - logits.double()[torch.arange(12), targets.clamp(min=0)])
    assert math.isclose(float(out), float(by_hand[valid].mean()), rel_tol=1e-6, abs_tol=1e-6)
    assert compare(out, ref64(logits, targets), 1e-5, 1e-6).ok


def test_every_row_ignored_is_nan_like_pytorch():
    logits, _ = SPEC.make_inputs(shape(4, 300), torch.float32, 0, "cpu")
    targets = torch.full((4,), -1, dtype=torch.int64)
    assert math.isnan(float(cross_entropy(logits, targets)))
    assert math.isnan(float(F.cross_entropy(logits, targets, ignore_index=-1)))


def test_extreme_logits_stay_finite():
    # float16's largest values and a row far below zero: only the max shift keeps exp in range
    logits = torch.randn(4, 1000) * 2
    logits[0, 17] = 65000.0
    logits[1] -= 60000.0
    logits[2, :] = 3.0
    targets = torch.tensor([17, 3, 999, 500])
    for dtype in (torch.float32, torch.float16):
        x = logits.to(dtype)
        for point in ("seed", "lane", "split-4"):
            out = _cross_entropy_fwd(x, targets, **forward_params(POINTS[point]))
            assert torch.isfinite(out), point
            assert compare(out, ref64(x, targets), 1e-3, 1e-5).ok, point


@pytest.mark.parametrize("point", ["seed", "split-16-lane"])
def test_forward_is_deterministic_and_reads_strided_rows(point):
    params = forward_params(POINTS[point])
    wide, targets = SPEC.make_inputs(shape(9, 2 * 1025 + 5), torch.float32, 6, "cpu")
    logits = wide[:, 4:4 + 1025]
    targets = targets.clamp(max=1024)
    assert not logits.is_contiguous() and logits.stride(1) == 1
    first = _cross_entropy_fwd(logits, targets, **params)
    assert torch.equal(first, _cross_entropy_fwd(logits, targets, **params))
    assert compare(first, ref64(logits, targets), 1e-4, 1e-5).ok


def test_64_bit_offsets_give_the_same_rows():
    # the int64 path is only chosen past 2**31 elements; run it here on a small tensor
    logits, targets = SPEC.make_inputs(shape(6, 385), torch.float32, 8, "cpu")
    out = {}
    for index_64 in (False, True):
        loss = torch.empty(6)
        _cross_entropy_fwd_kernel[(6,)](logits, targets, loss, loss, loss, targets, logits.stride(0), 0, 6, 385, 1, 6,
                                        BLOCK_V=512, ROWS=1, SPLITS=1, LSE="chunk", EVICTION="", GRAD=False,
                                        INDEX_64=index_64)
        out[index_64] = loss
    assert torch.equal(out[False], out[True])
    x = logits.double()
    rows = torch.logsumexp(x, 1) - x[torch.arange(6), targets.clamp(min=0)]
    expected = torch.where(targets != -1, rows, torch.zeros_like(rows))
    assert compare(out[True], expected, 1e-5, 1e-6).ok


def test_forward_rejects_bad_arguments():
    logits, targets = SPEC.make_inputs(shape(4, 64), torch.float32, 0, "cpu")
    with pytest.raises(ValueError):
        _cross_entropy_fwd(logits, targets[:3], **SEED_PARAMS)
    with pytest.raises(ValueError):
        _cross_entropy_fwd(logits, targets.to(torch.int32), **SEED_PARAMS)
    with pytest.raises(ValueError):
        _cross_entropy_fwd(logits.reshape(2, 2, 64), targets, **SEED_PARAMS)
    with pytest.raises(ValueError):
        _cross_entropy_fwd(logits[:, :0], targets, **SEED_PARAMS)


def test_compare_catches_a_slightly_wrong_loss():
    logits, targets = SPEC.make_inputs(shape(5, 383), torch.float32, 0, "cpu")
    out = cross_entropy(logits, targets) + 1e-3
    tol = SPEC.tolerances["float32"]
    assert not compare(out, SPEC.reference(logits, targets), tol.atol, tol.rtol).ok


# ----------------------------------------------------------------------------- fused forward + backward

# observed max-abs gradient errors on the interpreter: fp32 <= 1e-6, fp16 <= 5e-4 for gradients up to ~1
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 2e-6, 1e-5), (torch.float16, 2e-3, 1e-2)],
                         ids=["float32", "float16"])
@pytest.mark.parametrize("m,v,grad_scale", [(16, 65, 1.0), (3, 5000, 2.5), (7, 1025, -0.5), (1, 383, 1.0)])
def test_fused_loss_and_gradient_match_float64_autograd(m, v, grad_scale, dtype, atol, rtol):
    logits, targets = SPEC.make_inputs(shape(m, v), dtype, m * 100 + v, "cpu")
    ours = logits.clone().requires_grad_()
    loss = cross_entropy_fused(ours, targets)
    assert loss.dtype == torch.float32 and loss.shape == ()
    (loss * grad_scale).backward()
    ref = logits.double().requires_grad_()
    loss_ref = F.cross_entropy(ref, targets, ignore_index=-1)
    (loss_ref * grad_scale).backward()
    assert compare(loss, loss_ref, 1e-4, 1e-5).ok
    assert ours.grad.dtype == dtype and ours.grad.shape == (m, v)
    result = compare(ours.grad, ref.grad, atol, rtol)
    assert result.ok, result.summary()
    ignored = targets == -1
    assert float(ours.grad[ignored].abs().sum()) == 0.0, "rows left out must get no gradient"


@pytest.mark.parametrize("variant", ["large_mean", "constant_rows"])
def test_fused_gradient_is_as_accurate_as_pytorch_far_from_zero(variant):
    # logits offset by hundreds: a gradient made from exp(x - (m + log s)) inherits the rounding of m + log s
    # at the row's magnitude and came out 75x less accurate than PyTorch's float32 (rel. L2 3e-6 against
    # 4e-8); keeping m and log s apart brings it to PyTorch's level
    logits, targets = SPEC.make_inputs(shape(257, 385), torch.float32, 385, "cpu")
    logits, targets = SPEC.variants[variant]((logits, targets), 7)
    errors = {}
    for name, fn in (("ours", cross_entropy_fused), ("eager", SPEC.eager)):
        x = logits.clone().requires_grad_()
        (-1.37 * fn(x, targets)).backward()
        ref = logits.double().requires_grad_()
        (-1.37 * F.cross_entropy(ref, targets, ignore_index=-1)).backward()
        errors[name] = compare(x.grad, ref.grad, 1.0, 0.0).rel_l2
    assert errors["ours"] <= 3 * errors["eager"], errors


def test_fused_matches_the_forward_only_entry():
    # with a gradient wanted the entry runs the fused kernel, without one the forward kernels alone
    logits, targets = SPEC.make_inputs(shape(2, 50304), torch.float32, 12, "cpu")
    fused = cross_entropy_fused(logits.clone().requires_grad_(), targets)
    plain = cross_entropy(logits, targets)
    assert fused.grad_fn is not None and plain.grad_fn is None
    assert compare(fused, plain, 1e-6, 1e-6).ok
    assert compare(cross_entropy(logits.clone().requires_grad_(), targets), plain, 1e-6, 1e-6).ok


def test_fused_rejects_bad_arguments():
    logits, targets = SPEC.make_inputs(shape(4, 64), torch.float32, 0, "cpu")
    with pytest.raises(ValueError):
        cross_entropy_fused(logits, targets.to(torch.int32))
    with pytest.raises(ValueError):
        cross_entropy_fused(logits.reshape(2, 2, 64), targets)


def test_fused_backward_refuses_a_second_pass():
    logits, targets = SPEC.make_inputs(shape(4, 100), torch.float32, 1, "cpu")
    x = logits.clone().requires_grad_()
    loss = cross_entropy_fused(x, targets) * 3.0
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()


# ----------------------------------------------------------------------------- template space

def test_template_seed_is_valid_and_rejects_bad_points():
    assert SPACE.validate({}) == {**SEED_PARAMS, **BWD_SEED_PARAMS}
    assert set(SPACE.params) == set(SEED_PARAMS) | set(BWD_SEED_PARAMS)
    assert not set(SEED_PARAMS) & set(BWD_SEED_PARAMS)
    assert SPACE.backward_knobs == set(BWD_KNOBS) == set(BWD_SEED_PARAMS)
    for knob, values in BWD_KNOBS.items():
        assert BWD_SEED_PARAMS[knob] in values and SPACE.params[knob] == values, knob
    with pytest.raises(ValueError, match="BLOCK_Q"):
        SPACE.validate({"BLOCK_Q": 64})
    for knob, value in (("BLOCK_V", 100), ("SPLIT_V", 3), ("LSE", "two-pass"), ("ROWS", 8)):
        with pytest.raises(ValueError, match=knob):
            SPACE.validate({knob: value})
    # the pow2-masking lesson names no knob here: V = 50304 never fits one tile
    assert SPACE.knobs_for({"SINGLE_TILE": True}) == {}


def test_neighbours_differ_in_exactly_one_knob():
    point = SPACE.validate({})
    neighbours = SPACE.neighbours(point)
    assert len(neighbours) == sum(len(v) - 1 for v in SPACE.params.values())
    for n in neighbours:
        assert SPACE.validate(n) == n and sum(n[k] != point[k] for k in point) == 1


RENDER_POINTS = [{}, POINTS["lane"], POINTS["split-16-lane"], POINTS["rows-4"]]


@pytest.mark.parametrize("point", RENDER_POINTS, ids=["seed", "lane", "split", "rows"])
def test_rendered_source_passes_static_policy(point):
    params = SPACE.validate(point)
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    assert "def cross_entropy(logits, targets)" in source and "def _cross_entropy_mean_kernel(" in source
    assert "CrossEntropyFunction.apply(logits, targets, {**PARAMS}, {**BWD_PARAMS})" in source
    for fn in ("_fused_fwd", "_scale_grad_", "_count_valid_kernel", "_scale_in_place_kernel"):
        assert source.count(f"def {fn}(") == 1, fn
    for knob, value in params.items():
        assert f"{knob!r}: {value!r}" in source
    assert SPACE.render(dict(params)) == source


def test_rendered_candidate_runs(tmp_path):
    """The rendered file works on its own: imported as a module, its entry matches the reference."""
    params = SPACE.validate(POINTS["split-4"])
    path = tmp_path / "cand.py"
    path.write_text(SPACE.render(params))
    spec = importlib.util.spec_from_file_location("rendered_cross_entropy_candidate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PARAMS == SPACE.forward_point(params) and module.BWD_PARAMS == BWD_SEED_PARAMS
    logits, targets = SPEC.make_inputs(shape(5, 1023), torch.float16, 9, "cpu")
    tol = SPEC.tolerances["float16"]
    result = compare(module.cross_entropy(logits, targets), SPEC.reference(logits, targets), tol.atol, tol.rtol)
    assert result.ok, result.summary()


# ----------------------------------------------------------------------------- backward template points

BWD_POINTS = {
    "seed": {},
    "lane-small-chunks": {"FUSED_BLOCK_V": 256, "FUSED_LSE": "lane", "FUSED_ROWS": 2, "FUSED_WARPS": 2,
                          "SCALE_BLOCK": 1024},
    "rows-4-evict": {"FUSED_BLOCK_V": 512, "FUSED_ROWS": 4, "FUSED_EVICTION": "evict_first", "FUSED_STAGES": 4,
                     "SCALE_BLOCK": 8192, "SPLIT_V": 4, "BLOCK_V": 256},
    # a grid of two programs an SM (8 on the interpreter's 4), each taking row blocks in turn
    "grid-stride": {"FUSED_PROGRAMS_PER_SM": 2, "FUSED_BLOCK_V": 512},
}
# narrow rows packed many to a program, and rows over several chunks with a partial last one
BWD_SHAPES = tuple(s for s in SMALL_SHAPES if s.name in ("shakespeare-vocab", "width-1025"))


def _load(source: str) -> types.ModuleType:
    module = types.ModuleType("rendered_cross_entropy_bwd_candidate")
    sys.modules[module.__name__] = module
    exec(compile(source, "<candidate>", "exec"), module.__dict__)
    return module


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, b0 = a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()
    return a0 < b0 + b.untyped_storage().nbytes() and b0 < a0 + a.untyped_storage().nbytes()


@pytest.mark.parametrize("point", list(BWD_POINTS), ids=list(BWD_POINTS))
def test_rendered_candidate_gradients_match_autograd(point):
    """The rendered file at a backward point: the static policy passes it, its loss and its gradient for a
    random incoming gradient match float64 autograd of the reference, the gradient in a buffer of its own
    and the logits left as they were; without a gradient wanted it still gives the loss."""
    assert len(BWD_SHAPES) == 2
    params = SPACE.validate(BWD_POINTS[point])
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    module = _load(source)
    assert module.BWD_PARAMS == SPACE.backward_point(params)
    failures = []
    for i, s in enumerate(BWD_SHAPES):
        logits, targets = SPEC.make_inputs(s, torch.float32, 400 + i, "cpu")
        leaf = logits.clone().requires_grad_()
        loss = module.cross_entropy(leaf, targets)
        dy = torch.randn((), generator=torch.Generator().manual_seed(i)) * 3.0
        (grad,) = torch.autograd.grad(loss, leaf, dy)
        assert torch.equal(leaf.detach(), logits), "the logits changed"
        assert not any(_overlap(grad, t) for t in (leaf, loss, dy, targets)), "the gradient shares storage"
        ref = logits.to(torch.float64).requires_grad_()
        loss_ref = SPEC.reference(ref, targets)
        (grad_ref,) = torch.autograd.grad(loss_ref, ref, dy.to(torch.float64))
        for what, ours, theirs, atol in (("loss", loss, loss_ref, 1e-4), ("grad", grad, grad_ref, 1e-6),
                                         ("no-grad loss", module.cross_entropy(logits, targets), loss_ref, 1e-4)):
            result = compare(ours, theirs, atol, 1e-4)
            if not result.ok:
                failures.append(f"{s.name} {what}: {result.summary()}")
    assert not failures, "\n".join(failures)


def test_fused_launchers_take_the_backward_point_without_defaults():
    # one backward point goes to both: the Function passes **bwd_params to each
    for fn, lead in ((_fused_fwd, ["logits", "targets"]), (_scale_grad_, ["dlogits", "grad_loss"])):
        params = list(inspect.signature(fn).parameters.values())
        assert [p.name for p in params[:2]] == lead
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])
        assert {p.name for p in params[2:]} == set(BWD_KNOBS)
        assert all(p.default is inspect.Parameter.empty for p in params)


@pytest.mark.parametrize("block", BWD_KNOBS["SCALE_BLOCK"])
def test_scale_grad_scales_every_element_in_place(block):
    # more elements than one step of the largest block and fewer than the grid covers: partial steps too
    g = torch.randn(5, 3001, generator=torch.Generator().manual_seed(block))
    expected = g * -0.75
    _scale_grad_(g, torch.tensor(-0.75), **{**BWD_SEED_PARAMS, "SCALE_BLOCK": block})
    assert torch.allclose(g, expected, rtol=1e-6, atol=0)
    before = g.clone()
    _scale_grad_(g, torch.tensor(1.0), **{**BWD_SEED_PARAMS, "SCALE_BLOCK": block})
    assert torch.equal(g, before)


@pytest.mark.parametrize("m,v", [(130, 383), (2051, 65), (37, 1025)])
def test_a_grid_stride_fused_kernel_gives_the_same_bits(m, v):
    """Fewer programs than row blocks (the interpreter counts 4 SMs): every row is still computed once, by the
    same arithmetic, so the loss and the gradient are bitwise those of one program per block."""
    logits, targets = SPEC.make_inputs(shape(m, v), torch.float32, m + v, "cpu")
    one_each = _fused_fwd(logits, targets, **BWD_SEED_PARAMS)
    for per_sm in (1, 3):
        loss, grad = _fused_fwd(logits, targets, **{**BWD_SEED_PARAMS, "FUSED_PROGRAMS_PER_SM": per_sm})
        assert torch.equal(loss, one_each[0]) and torch.equal(grad, one_each[1])
