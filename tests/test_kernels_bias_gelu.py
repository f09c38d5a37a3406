"""kernels/bias_gelu.py: the spec, the forward kernel at points of every layout and GELU formula, the
differentiable bias_gelu() against float64 autograd, and the template space (validate, normalize, render).
All on the CPU through Triton's interpreter (conftest sets TRITON_INTERPRET=1)."""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest
import torch

from evaluators.checker import compare
from evaluators.static import check_candidate
from kernels import DTYPES, get_spec
from kernels.bias_gelu import (BWD_KNOBS, BWD_SEED_PARAMS, SEED_PARAMS, _bias_gelu_bwd, _bias_gelu_fwd,
                              _bias_gelu_fwd_kernel, bias_gelu)
from kernels.spec import Shape

SPEC = get_spec("bias_gelu")
SPACE = SPEC.template
# the interpreter's many-rows shape costs seconds a call: the loops over template points keep to the small
# shapes, and tests/test_spec_coverage.py runs the seed and the promoted kernels on that one too
SMALL_SHAPES = tuple(s for s in SPEC.interpreter_shapes if s.dims["M"] < 256)
EDGE_WIDTHS = {383, 385, 1023, 1025}


def dims(shapes) -> set[tuple[int, int]]:
    return {(s.dims["M"], s.dims["N"]) for s in shapes}


def shape(m: int, n: int) -> Shape:
    return Shape(name=f"{m}x{n}", dims={"M": m, "N": n}, origin="edge")


def gelu64(v: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(v.to(torch.float64), approximate="tanh")


# ----------------------------------------------------------------------------- spec

def test_spec_names_shapes_and_dtypes():
    assert SPEC.name == SPEC.entry == "bias_gelu"
    assert SPEC.signature.startswith("bias_gelu(x") and "bias" in SPEC.signature
    assert SPEC.has_backward and SPEC.bound == "memory"
    assert SPEC.headline_shape().dims == {"M": 8192, "N": 3072}
    assert {(8192, 3072), (16384, 1536)} == dims(SPEC.timed_shapes())
    assert (128, 3072) in dims(SPEC.shapes)
    edge = [s for s in SPEC.shapes if s.origin == "edge"]
    assert all(not s.timed for s in edge)
    assert any(s.dims["M"] == 1 for s in edge)
    assert any(s.dims["M"] % 2 == 1 and s.dims["M"] > 1 for s in edge)
    assert EDGE_WIDTHS <= {s.dims["N"] for s in edge}
    small = SPEC.interpreter_shapes
    assert all(s.dims["M"] * s.dims["N"] <= 32 * 1024 for s in SMALL_SHAPES) and not any(s.timed for s in small)
    # one shape of many narrow rows besides: the interpreter's cost is per program, not per element
    assert [(s.dims["M"], s.dims["N"]) for s in small if s not in SMALL_SHAPES] == [(1027, 96)]
    assert EDGE_WIDTHS | {3072, 1536} <= {s.dims["N"] for s in small}
    assert any(s.dims["M"] == 1 for s in small)
    assert "bfloat16" in SPEC.gpu_dtypes and "bfloat16" in SPEC.cpu_dtypes  # no tl.dot: exact in the interpreter
    assert SPEC.tolerances["float32"].atol <= SPEC.tolerances["float16"].atol <= SPEC.tolerances["bfloat16"].atol


@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.bfloat16, 2)])
def test_bytes_and_flops(dtype, size):
    assert SPEC.bytes_moved(shape(8192, 3072), dtype) == (2 * 8192 * 3072 + 3072) * size
    assert SPEC.flops(shape(32, 768)) == 2 * SPEC.flops(shape(16, 768)) > 0


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_make_inputs(dtype):
    x, b = SPEC.make_inputs(shape(13, 383), DTYPES[dtype], 1, "cpu")
    assert x.shape == (13, 383) and b.shape == (383,)
    assert x.dtype == b.dtype == DTYPES[dtype]
    assert torch.isfinite(x).all() and torch.isfinite(b).all()
    assert x.float().std() > 0.5 and b.float().std() > 0
    # both tails of the GELU are exercised
    assert x.float().max() > 6 and x.float().min() < -6
    x2, b2 = SPEC.make_inputs(shape(13, 383), DTYPES[dtype], 2, "cpu")
    assert not torch.equal(x, x2) and not torch.equal(b, b2)


def test_reference_and_eager():
    x, b = SPEC.make_inputs(shape(5, 100), torch.float32, 3, "cpu")
    ref = SPEC.reference(x, b)
    assert ref.dtype == torch.float64
    v = x.double() + b.double()
    manual = 0.5 * v * (1 + torch.tanh(0.7978845608028654 * (v + 0.044715 * v ** 3)))
    assert torch.allclose(ref, manual, atol=1e-12, rtol=1e-12)
    xh, bh = SPEC.make_inputs(shape(5, 100), torch.float16, 3, "cpu")
    assert SPEC.reference(xh, bh).dtype == torch.float32
    assert SPEC.eager(xh, bh).dtype == torch.float16


def test_context_facts():
    ctx = SPEC.context(shape(8192, 3072), 132)
    assert ctx["elementwise"] is True and ctx["row_wise"] is True and ctx["width"] == 3072
    assert ctx["rows_over_2x_sms"] is True
    assert SPEC.context(shape(128, 3072), 132)["rows_over_2x_sms"] is False
    # the lessons that apply name knobs of this template
    assert SPACE.knobs_for({"SINGLE_TILE": True}) == {"SINGLE_TILE": True}
    assert SPACE.knobs_for({"PERSISTENT": True}) == {"PERSISTENT": True}


# ----------------------------------------------------------------------------- forward kernel

POINTS = {
    "seed": {},
    "single-tile": {"SINGLE_TILE": True, "BLOCK_M": 4},
    "narrow-exp2": {"BLOCK_M": 1, "BLOCK_N": 256, "TANH": "exp2", "EVICTION": "evict_first"},
    "persistent-tanh": {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "TANH": "tanh", "BLOCK_M": 8},
    "persistent-single-const": {"PERSISTENT": True, "SINGLE_TILE": True, "CONST_WIDTH": True},
    "flat": {"LAYOUT": "flat", "FLAT_BLOCK": 1024},
    "flat-persistent-const": {"LAYOUT": "flat", "PERSISTENT": True, "PROGRAMS_PER_SM": 2, "CONST_WIDTH": True},
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("point", list(POINTS), ids=list(POINTS))
def test_forward_matches_reference(point, dtype):
    params = SPACE.forward_point(SPACE.validate(POINTS[point]))
    tol = SPEC.tolerances[dtype]
    failures = []
    for i, s in enumerate(SMALL_SHAPES):
        inputs = SPEC.make_inputs(s, DTYPES[dtype], 100 + i, "cpu")
        originals = [t.clone() for t in inputs]
        out = _bias_gelu_fwd(*inputs, **params)
        assert out.dtype == DTYPES[dtype] and out.shape == inputs[0].shape and out.is_contiguous()
        for before, after in zip(originals, inputs):
            assert torch.equal(before, after), "the kernel changed its inputs"
        result = compare(out, SPEC.reference(*inputs), tol.atol, tol.rtol)
        if not result.ok:
            failures.append(f"{s.name} {s}: {result.summary()}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("tanh", ["sigmoid", "exp2", "tanh"])
def test_gelu_formulas_are_accurate_and_stable_in_the_tails(tanh):
    # |v| up to 1e4: exp overflows to inf on one side; the result must still be finite and exact
    v = torch.cat([torch.linspace(-60, 60, 2001), torch.tensor([-1e4, -100.0, -89.0, 89.0, 100.0, 1e4])])
    x = v.reshape(1, -1)
    out = _bias_gelu_fwd(x, torch.zeros(x.shape[1]), **SPACE.forward_point(SPACE.validate({"TANH": tanh})))
    assert torch.isfinite(out).all()
    result = compare(out, gelu64(x), 2e-6, 2e-6)
    assert result.ok, result.summary()


@pytest.mark.parametrize("point", ["seed", "single-tile", "flat", "persistent-tanh"])
def test_forward_non_contiguous_rows(point):
    params = SPACE.forward_point(SPACE.validate(POINTS[point]))
    M, N = 7, 385
    wide, b = SPEC.make_inputs(shape(M, 2 * N + 3), torch.float32, 5, "cpu")
    x, b = wide[:, 2:2 + N], b[:N].contiguous()
    assert not x.is_contiguous() and x.stride(1) == 1
    out = _bias_gelu_fwd(x, b, **params)
    result = compare(out, SPEC.reference(x, b), 1e-5, 1e-5)
    assert result.ok, result.summary()


@pytest.mark.parametrize("flat", [False, True], ids=["rows", "flat"])
def test_64_bit_offsets_give_the_same_result(flat):
    # the int64 path is only chosen past 2**31 elements; run it here on a small tensor
    x, b = SPEC.make_inputs(shape(6, 385), torch.float32, 8, "cpu")
    out = {}
    for index_64 in (False, True):
        y = torch.empty_like(x)
        _bias_gelu_fwd_kernel[(3,)](x, b, y, x.stride(0), y.stride(0), 6, 385, BLOCK_M=2, BLOCK_N=512, BLOCK=256,
                                    FLAT=flat, SINGLE_TILE=False, TANH="sigmoid", EVICTION="", WIDTH=0,
                                    INDEX_64=index_64)
        out[index_64] = y
    assert torch.equal(out[False], out[True])
    assert compare(out[True], SPEC.reference(x, b), 1e-5, 1e-5).ok


def test_forward_rejects_bad_shapes():
    x, b = SPEC.make_inputs(shape(4, 64), torch.float32, 0, "cpu")
    with pytest.raises(ValueError):
        _bias_gelu_fwd(x, b[:32], **SEED_PARAMS)
    with pytest.raises(ValueError):
        _bias_gelu_fwd(x.reshape(2, 2, 64), b, **SEED_PARAMS)


def test_compare_catches_a_wrong_output():
    x, b = SPEC.make_inputs(shape(3, 383), torch.float32, 0, "cpu")
    out = _bias_gelu_fwd(x, b, **SEED_PARAMS)
    out[2, 382] += 1e-3  # the last element of the last masked tile
    assert not compare(out, SPEC.reference(x, b), 1e-5, 1e-5).ok


# ----------------------------------------------------------------------------- autograd

# observed max-abs errors on the interpreter: fp32 <= 2e-6 (dbias sums up to ~1000 rows), fp16 <= 4e-3
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-5, 1e-5), (torch.float16, 1e-2, 1e-2)],
                         ids=["float32", "float16"])
@pytest.mark.parametrize("m,n", [(13, 383), (64, 1536), (1, 1025), (300, 130)])
def test_bias_gelu_autograd(m, n, dtype, atol, rtol):
    x, b = SPEC.make_inputs(shape(m, n), dtype, m * 1000 + n, "cpu")
    dy = torch.randn(m, n, generator=torch.Generator().manual_seed(n)).to(dtype)
    ours = [t.clone().requires_grad_() for t in (x, b)]
    y = bias_gelu(*ours)
    y.backward(dy)
    ref = [t.to(torch.float64).requires_grad_() for t in (x, b)]
    gelu64(ref[0] + ref[1]).backward(dy.to(torch.float64))
    assert y.dtype == dtype
    assert compare(y, gelu64(x.double() + b.double()), atol, rtol).ok
    for name, a, r in zip(("x", "bias"), ours, ref):
        assert a.grad is not None and a.grad.dtype == dtype and a.grad.shape == r.grad.shape
        # dbias sums m rows: its tolerance grows with the sum's magnitude, not per element
        scale = max(1.0, float(r.grad.abs().max())) if name == "bias" else 1.0
        result = compare(a.grad, r.grad, atol * scale, rtol)
        assert result.ok, f"grad {name}: {result.summary()}"


def test_bias_gelu_gradient_is_deterministic_and_handles_non_contiguous_input():
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(40, 300, generator=gen) * 2
    b = 0.3 * torch.randn(129, generator=gen)
    dy = torch.randn(40, 129, generator=gen)
    grads = []
    for _ in range(2):
        leaf, bias = wide.clone().requires_grad_(), b.clone().requires_grad_()
        bias_gelu(leaf[:, 10:139], bias).backward(dy)
        grads.append((leaf.grad, bias.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    ref, rb = wide.double().requires_grad_(), b.double().requires_grad_()
    gelu64(ref[:, 10:139] + rb).backward(dy.double())
    assert compare(grads[0][0], ref.grad, 1e-5, 1e-5).ok
    assert compare(grads[0][1], rb.grad, 1e-4, 1e-5).ok
    assert float(grads[0][0][:, :10].abs().max()) == 0.0  # columns outside the view get no gradient


def test_bias_gradient_of_no_rows_is_zero():
    x = torch.empty(0, 77, requires_grad=True)
    b = torch.randn(77, requires_grad=True)
    y = bias_gelu(x, b)
    assert y.shape == (0, 77)
    y.sum().backward()
    assert b.grad is not None and torch.equal(b.grad, torch.zeros(77))


# ----------------------------------------------------------------------------- template space

def test_template_seed_is_valid_and_rejects_bad_points():
    assert SPACE.validate({}) == {**SEED_PARAMS, **BWD_SEED_PARAMS}
    assert set(SPACE.params) == set(SEED_PARAMS) | set(BWD_SEED_PARAMS)
    assert SPACE.backward_knobs == set(BWD_KNOBS) == set(BWD_SEED_PARAMS)
    assert not set(SEED_PARAMS) & set(BWD_SEED_PARAMS)
    assert SPACE.normalize(SPACE.validate({})) == SPACE.seed
    for knob, values in BWD_KNOBS.items():
        assert BWD_SEED_PARAMS[knob] in values and 2 <= len(values) <= 5, knob
    with pytest.raises(ValueError, match="BLOCK_Q"):
        SPACE.validate({"BLOCK_Q": 64})
    for knob, value in (("BLOCK_M", 3), ("TANH", "erf"), ("LAYOUT", "cols"), ("FLAT_BLOCK", 1000)):
        with pytest.raises(ValueError, match=knob):
            SPACE.validate({knob: value})


def test_normalize_merges_switched_off_knobs():
    def norm(**point):
        return SPACE.normalize(SPACE.validate(point))

    flat = {tuple(sorted(norm(LAYOUT="flat", BLOCK_M=m, BLOCK_N=n, SINGLE_TILE=t).items()))
            for m in (1, 8) for n in (256, 2048) for t in (False, True)}
    assert len(flat) == 1
    assert len({norm(LAYOUT="flat", FLAT_BLOCK=f)["FLAT_BLOCK"] for f in (1024, 8192)}) == 2
    assert norm(FLAT_BLOCK=1024) == norm(FLAT_BLOCK=8192)
    assert norm(SINGLE_TILE=True, BLOCK_N=256) == norm(SINGLE_TILE=True, BLOCK_N=2048)
    assert norm(BLOCK_N=256) != norm(BLOCK_N=2048)
    assert norm(PROGRAMS_PER_SM=2) == norm(PROGRAMS_PER_SM=16)
    assert norm(PERSISTENT=True, PROGRAMS_PER_SM=2) != norm(PERSISTENT=True, PROGRAMS_PER_SM=16)
    # every backward knob changes the launch: none is merged
    for knob, values in BWD_KNOBS.items():
        assert len({norm(**{knob: v})[knob] for v in values}) == len(values), knob
    point = SPACE.validate({"LAYOUT": "flat", "BLOCK_M": 16})
    SPACE.normalize(point)
    assert point["BLOCK_M"] == 16, "normalize must not mutate its argument"


def test_normalize_is_a_projection():
    keys = set()
    # the forward knobs' whole space, the backward's held at the seed (with them the space is too big to list)
    for p in SPACE.forward_only().all_points():
        n = SPACE.normalize(p)
        assert SPACE.validate(n) == n and SPACE.normalize(n) == n
        keys.add(tuple(sorted(n.items())))
    assert len(keys) < SPACE.size()


RENDER_POINTS = [{}, POINTS["single-tile"], POINTS["flat-persistent-const"], POINTS["persistent-tanh"],
                 POINTS["narrow-exp2"]]


@pytest.mark.parametrize("point", RENDER_POINTS, ids=["seed", "single", "flat", "persistent", "exp2"])
def test_rendered_source_passes_static_policy(point):
    params = SPACE.validate(point)
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    assert "def bias_gelu(x, bias)" in source and "def _gelu_tanh(" in source
    # the candidate is differentiable: the backward's kernels and launcher travel with it
    for name in ("def _bias_gelu_bwd(", "def _bias_gelu_bwd_kernel(", "def _bias_grad_sum_kernel(",
                 "class BiasGeluFunction(", "BWD_PARAMS = {"):
        assert name in source, name
    assert "BiasGeluFunction.apply(x, bias, {**PARAMS}, {**BWD_PARAMS})" in source
    for knob, value in params.items():
        assert f"{knob!r}: {value!r}" in source
    assert SPACE.render(dict(params)) == source


def test_rendered_candidate_runs(tmp_path):
    """The rendered file works on its own: imported as a module, its entry matches the reference."""
    params = SPACE.validate(POINTS["persistent-tanh"])
    path = tmp_path / "cand.py"
    path.write_text(SPACE.render(params))
    spec = importlib.util.spec_from_file_location("rendered_bias_gelu_candidate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PARAMS == SPACE.forward_point(params)
    assert module.BWD_PARAMS == SPACE.backward_point(params) == BWD_SEED_PARAMS
    x, b = SPEC.make_inputs(shape(5, 1025), torch.float16, 9, "cpu")
    tol = SPEC.tolerances["float16"]
    result = compare(module.bias_gelu(x, b), SPEC.reference(x, b), tol.atol, tol.rtol)
    assert result.ok, result.summary()


# ----------------------------------------------------------------------------- backward template

def _load_source(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def _gradients(entry, inputs, out_grad):
    """Gradients of every floating-point input, backpropagating `out_grad` through `entry`'s output."""
    leaves = [t.clone().requires_grad_() for t in inputs]
    out = entry(*leaves)
    out.backward(out_grad.to(out.dtype))
    return [leaf.grad for leaf in leaves]


# two small interpreter shapes: an odd width with odd rows (more row tiles than groups, a masked last strip),
# and shakespeare's width 1536 (two or more column strips at every BWD_BLOCK_N)
BACKWARD_SHAPES = tuple(s for s in SMALL_SHAPES if s.name in ("odd-rows-383", "shakespeare-width"))


def _backward_problems(entry) -> list[str]:
    """Where the float32 gradients of x and bias through `entry` differ from float64 autograd of the
    reference, on BACKWARD_SHAPES."""
    problems = []
    for i, s in enumerate(BACKWARD_SHAPES):
        inputs = SPEC.make_inputs(s, torch.float32, 40 + i, "cpu")
        out_grad = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(i))
        ours = _gradients(entry, inputs, out_grad)
        ref = _gradients(SPEC.reference, inputs, out_grad)
        for name, a, r in zip(("x", "bias"), ours, ref):
            assert a is not None and a.dtype == torch.float32 and a.shape == r.shape, name
            # dbias sums the rows: its tolerance grows with the sum's magnitude
            result = compare(a, r, 1e-4 * max(1.0, float(r.abs().max())), 1e-4)
            if not result.ok:
                problems.append(f"{s.name} grad {name}: {result.summary()}")
    return problems


# the seed and two backward points away from it (forward knobs at the seed): narrow 1-row tiles on many
# programs (more partial rows than one step of the column sum holds), and tall wide tiles on few programs
BACKWARD_POINTS = {
    "seed": {},
    "narrow-many": {"BWD_BLOCK_M": 1, "BWD_BLOCK_N": 128, "BWD_PROGRAMS_PER_SM": 8, "BWD_WARPS": 2,
                    "SUM_BLOCK_G": 8, "SUM_BLOCK_N": 256},
    "wide-few": {"BWD_BLOCK_M": 16, "BWD_BLOCK_N": 1024, "BWD_PROGRAMS_PER_SM": 1, "BWD_WARPS": 8,
                 "SUM_BLOCK_G": 64, "SUM_BLOCK_N": 64},
}


@pytest.mark.parametrize("point", BACKWARD_POINTS, ids=list(BACKWARD_POINTS))
def test_rendered_backward_matches_autograd(point):
    """The rendered candidate at a backward point passes the static policy and its gradients match autograd."""
    params = SPACE.validate(BACKWARD_POINTS[point])
    assert SPACE.forward_point(params) == SEED_PARAMS
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    module = _load_source(source, f"rendered_bias_gelu_backward_{point.replace('-', '_')}")
    assert module.BWD_PARAMS == SPACE.backward_point(params)
    problems = _backward_problems(module.bias_gelu)
    assert not problems, problems


def test_rendered_backward_check_catches_a_wrong_gradient():
    # the check above can fail: the same candidate with dbias summed over one partial row too few
    source = SPACE.render(SPACE.validate({}))
    right = "(part, db, groups, N,"
    assert source.count(right) == 1
    module = _load_source(source.replace(right, "(part, db, groups - 1, N,"), "rendered_bias_gelu_backward_short")
    problems = _backward_problems(module.bias_gelu)
    assert problems and all("grad bias" in p for p in problems), problems


def test_backward_knobs_change_only_the_order_of_the_bias_sum():
    # d x is elementwise: the same bits at every backward point; d bias adds the same rows in another grouping
    x, b = SPEC.make_inputs(shape(40, 130), torch.float32, 11, "cpu")
    dy = torch.randn(40, 130, generator=torch.Generator().manual_seed(1))
    dx, db = _bias_gelu_bwd(dy, x, b, **BWD_SEED_PARAMS)
    for point in ("narrow-many", "wide-few"):
        dx_p, db_p = _bias_gelu_bwd(dy, x, b, **{**BWD_SEED_PARAMS, **BACKWARD_POINTS[point]})
        assert torch.equal(dx_p, dx), point
        assert compare(db_p, db.double(), 1e-5, 1e-5).ok, point
