"""kernels/layer_norm.py: the spec, the seed forward kernel at several template points, the differentiable
layer_norm() against float64 autograd, and the template space (validate, normalize, neighbours, render).
All on the CPU through Triton's interpreter (conftest sets TRITON_INTERPRET=1)."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from evaluators.checker import compare
from evaluators.static import check_candidate
from kernels import DTYPES, get_spec
from kernels.layer_norm import (BWD_SEED_PARAMS, EPS_CHOICES, SEED_PARAMS, _layer_norm_fwd, _layer_norm_fwd_kernel,
                                layer_norm)
from kernels.spec import Shape

SPEC = get_spec("layer_norm")
SPACE = SPEC.template
# the interpreter's many-rows shape costs seconds a call: the loops over template points keep to the small
# shapes, and tests/test_spec_coverage.py runs the seed and the promoted kernels on that one too
SMALL_SHAPES = tuple(s for s in SPEC.interpreter_shapes if s.dims["M"] < 256)
EDGE_WIDTHS = {383, 385, 1023, 1025}


def dims(shapes) -> set[tuple[int, int]]:
    return {(s.dims["M"], s.dims["N"]) for s in shapes}


def shape(m: int, n: int, origin: str = "edge") -> Shape:
    return Shape(name=f"{m}x{n}", dims={"M": m, "N": n}, origin=origin)


# ----------------------------------------------------------------------------- spec

def test_spec_names_and_entry():
    assert SPEC.name == "layer_norm"
    assert SPEC.entry == "layer_norm"
    assert SPEC.signature.startswith("layer_norm(x")
    for arg in ("weight", "bias", "eps"):
        assert arg in SPEC.signature
    assert SPEC.has_backward
    assert SPEC.bound == "memory"


def test_gpu_shapes_cover_both_nanogpt_models():
    got = dims(SPEC.shapes)
    assert (8192, 768) in got     # GPT-2 small, B8 T1024
    assert (128, 768) in got      # GPT-2 small, B1 T128
    assert (16384, 384) in got    # shakespeare-char, B64 T256
    origins = {s.origin for s in SPEC.shapes}
    assert {"gpt2", "shakespeare", "edge"} <= origins


def test_gpu_edge_shapes():
    edge = [s for s in SPEC.shapes if s.origin == "edge"]
    assert any(s.dims["M"] == 1 for s in edge), "no one-row shape"
    assert any(s.dims["M"] % 2 == 1 and s.dims["M"] > 1 for s in edge), "no odd row count"
    assert EDGE_WIDTHS <= {s.dims["N"] for s in edge}


def test_timed_shapes_are_headline_shapes_not_edges():
    timed = SPEC.timed_shapes()
    assert timed, "nothing would be timed"
    assert all(s.origin != "edge" for s in timed)
    assert all(s.timed for s in timed)
    assert (8192, 768) in dims(timed)
    assert SPEC.headline_shape() in timed
    # every timed shape is also one of the GPU shapes
    assert all(s in SPEC.shapes for s in timed)


def test_interpreter_shapes_small_and_cover_edges():
    shapes = SPEC.interpreter_shapes
    assert shapes
    assert SPEC.shapes_for("cpu") == shapes
    assert SPEC.shapes_for("cuda") == SPEC.shapes
    for s in SMALL_SHAPES:
        assert s.dims["M"] * s.dims["N"] <= 64 * 1024, f"{s} too big for the interpreter"
    assert all(not s.timed for s in shapes)
    # one shape of many narrow rows: the interpreter's cost is per program, so the rows are what costs
    many = [s for s in shapes if s not in SMALL_SHAPES]
    assert len(many) == 1 and many[0].dims["M"] >= 512 and many[0].dims["N"] <= 128
    widths = {s.dims["N"] for s in shapes}
    assert EDGE_WIDTHS <= widths
    assert {768, 384} <= widths
    assert any(s.dims["M"] == 1 for s in shapes)
    assert any(s.dims["M"] % 2 == 1 and s.dims["M"] > 1 for s in shapes)


def test_dtypes_and_tolerances():
    assert "bfloat16" in SPEC.gpu_dtypes
    assert {"float32", "float16"} <= set(SPEC.gpu_dtypes)
    # no tl.dot here, and the interpreter's elementwise bfloat16 is exact: bfloat16 runs on the CPU too
    assert set(SPEC.cpu_dtypes) == {"float32", "float16", "bfloat16"}
    assert SPEC.dtypes_for("cuda") == SPEC.gpu_dtypes
    assert SPEC.dtypes_for("cpu") == SPEC.cpu_dtypes
    for name in set(SPEC.gpu_dtypes) | set(SPEC.cpu_dtypes):
        assert name in DTYPES
        tol = SPEC.tolerances[name]
        assert 0 < tol.atol < 1 and 0 < tol.rtol < 1
    # lower precision never gets a tighter tolerance than float32
    assert SPEC.tolerances["float16"].atol >= SPEC.tolerances["float32"].atol
    assert SPEC.tolerances["bfloat16"].atol >= SPEC.tolerances["float16"].atol


@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2)])
@pytest.mark.parametrize("m,n", [(8192, 768), (16384, 384), (1, 1025)])
def test_bytes_moved(dtype, size, m, n):
    assert SPEC.bytes_moved(shape(m, n), dtype) == (2 * m * n + 2 * n) * size


def test_flops_positive_and_scale_with_size():
    assert SPEC.flops(shape(16, 768)) > 0
    assert SPEC.flops(shape(32, 768)) == 2 * SPEC.flops(shape(16, 768))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_make_inputs(dtype):
    s = shape(13, 383)
    x, w, b, eps = SPEC.make_inputs(s, DTYPES[dtype], 1, "cpu")
    assert x.shape == (13, 383) and w.shape == (383,) and b.shape == (383,)
    assert x.dtype == w.dtype == b.dtype == DTYPES[dtype]
    assert isinstance(eps, float) and eps in EPS_CHOICES
    for t in (x, w, b):
        assert torch.isfinite(t).all()
        assert t.abs().sum() > 0, "never all zeros"
    # not a constant either: rows must differ from each other and have spread
    assert x.float().std(dim=1).min() > 0
    x2, w2, b2, _ = SPEC.make_inputs(s, DTYPES[dtype], 2, "cpu")
    assert not torch.equal(x, x2)
    assert not torch.equal(w, w2)
    assert not torch.equal(b, b2)


def test_make_inputs_fresh_per_call():
    s = shape(4, 64)
    x1 = SPEC.make_inputs(s, torch.float32, 7, "cpu")[0]
    x2 = SPEC.make_inputs(s, torch.float32, 7, "cpu")[0]
    assert x1 is not x2
    x1.zero_()
    assert x2.abs().sum() > 0, "calls must not share storage"


def test_reference_is_wide_and_correct():
    x, w, b, eps = SPEC.make_inputs(shape(5, 100), torch.float32, 3, "cpu")
    ref = SPEC.reference(x, w, b, eps)
    assert ref.dtype == torch.float64
    xd = x.double()
    mean = xd.mean(dim=1, keepdim=True)
    var = ((xd - mean) ** 2).mean(dim=1, keepdim=True)
    manual = (xd - mean) / torch.sqrt(var + eps) * w.double() + b.double()
    assert torch.allclose(ref, manual, atol=1e-12, rtol=1e-12)
    xh, wh, bh, eps = SPEC.make_inputs(shape(5, 100), torch.float16, 3, "cpu")
    assert SPEC.reference(xh, wh, bh, eps).dtype == torch.float32
    eager = SPEC.eager(xh, wh, bh, eps)
    assert eager.dtype == torch.float16


def test_context_facts():
    ctx = SPEC.context(shape(8192, 768), 132)
    assert ctx["row_wise"] is True and ctx["normalization"] is True
    assert ctx["rows_over_2x_sms"] is True
    assert SPEC.context(shape(8192, 768), 4096)["rows_over_2x_sms"] is False
    assert SPEC.context(shape(264, 768), 132)["rows_over_2x_sms"] is False
    assert SPEC.context(shape(265, 768), 132)["rows_over_2x_sms"] is True


# ----------------------------------------------------------------------------- seed forward kernel

POINTS = {
    "seed": {},
    "chunked-128": {"SINGLE_TILE": False, "CHUNK_N": 128},
    "chunked-256": {"SINGLE_TILE": False, "CHUNK_N": 256},
    "persistent-2": {"PERSISTENT": True, "PROGRAMS_PER_SM": 2},
    # 2 programs per (CPU-assumed) 4 SMs: 8 programs, so each strides over two or more tiles
    "prefetch": {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "PREFETCH": True, "CONST_WIDTH": True,
                 "SCALE_EARLY": True},
    "scale-early": {"SCALE_EARLY": True, "ROWS_PER_PROGRAM": 2},
    "persistent-scale-early": {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "SCALE_EARLY": True},
    "prefetch-rows-2": {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "PREFETCH": True, "ROWS_PER_PROGRAM": 2},
    "streamed-stores": {"STORE_CACHE": ".cs", "EVICTION": "evict_first"},
    "rows-4": {"ROWS_PER_PROGRAM": 4},
    "rows-8": {"ROWS_PER_PROGRAM": 8},
}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("point", list(POINTS), ids=list(POINTS))
def test_seed_kernel_matches_reference(point, dtype):
    params = SPACE.forward_point(SPACE.validate(POINTS[point]))
    tol = SPEC.tolerances[dtype]
    failures = []
    for i, s in enumerate(SMALL_SHAPES):
        inputs = SPEC.make_inputs(s, DTYPES[dtype], 100 + i, "cpu")
        originals = [t.clone() for t in inputs[:3]]
        out = _layer_norm_fwd(*inputs, **params)
        assert out.dtype == DTYPES[dtype] and out.shape == inputs[0].shape
        for before, after in zip(originals, inputs[:3]):
            assert torch.equal(before, after), "the kernel changed its inputs"
        result = compare(out, SPEC.reference(*inputs), tol.atol, tol.rtol)
        if not result.ok:
            failures.append(f"{s.name} {s}: {result.summary()}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("point", ["seed", "chunked-128", "persistent-2", "prefetch-rows-2", "rows-4"])
def test_seed_kernel_non_contiguous_rows(point):
    params = SPACE.forward_point(SPACE.validate(POINTS[point]))
    M, N = 13, 385
    wide, w, b, eps = SPEC.make_inputs(shape(M, 2 * N + 7), torch.float32, 5, "cpu")
    w, b = w[:N].contiguous(), b[:N].contiguous()
    x = wide[:, 3:3 + N]
    assert x.stride(0) > N and x.stride(1) == 1 and not x.is_contiguous()
    out = _layer_norm_fwd(x, w, b, eps, **params)
    assert out.shape == (M, N) and out.is_contiguous()
    tol = SPEC.tolerances["float32"]
    result = compare(out, SPEC.reference(x, w, b, eps), tol.atol, tol.rtol)
    assert result.ok, result.summary()


def test_seed_kernel_rejects_bad_shapes():
    x, w, b, eps = SPEC.make_inputs(shape(4, 64), torch.float32, 0, "cpu")
    with pytest.raises(ValueError):
        _layer_norm_fwd(x, w[:32], b, eps, **SEED_PARAMS)
    with pytest.raises(ValueError):
        _layer_norm_fwd(x.reshape(2, 2, 64), w, b, eps, **SEED_PARAMS)


def test_compare_catches_a_wrong_kernel_output():
    # the check used above can fail: an output off by a little more than the tolerance is caught
    x, w, b, eps = SPEC.make_inputs(shape(3, 383), torch.float32, 0, "cpu")
    out = _layer_norm_fwd(x, w, b, eps, **SEED_PARAMS)
    out[1, 5] += 1e-2
    assert not compare(out, SPEC.reference(x, w, b, eps), 1e-4, 1e-4).ok


# ----------------------------------------------------------------------------- autograd

def _autograd_pair(m, n, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, n, generator=gen) * 2.0 + 0.5).to(dtype)
    w = (1.0 + 0.2 * torch.randn(n, generator=gen)).to(dtype)
    b = (0.2 * torch.randn(n, generator=gen)).to(dtype)
    dy = torch.randn(m, n, generator=gen).to(dtype)
    ours = [t.clone().requires_grad_() for t in (x, w, b)]
    y = layer_norm(*ours, 1e-5)
    y.backward(dy)
    ref = [t.to(torch.float64).requires_grad_() for t in (x, w, b)]
    y_ref = torch.nn.functional.layer_norm(ref[0], (n,), ref[1], ref[2], 1e-5)
    y_ref.backward(dy.to(torch.float64))
    return y, ours, y_ref, ref


# observed max-abs errors on the interpreter: fp32 <= 2e-6, fp16 <= 4e-3 (gradients up to ~16)
@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-5, 1e-5), (torch.float16, 1e-2, 1e-2)],
                         ids=["float32", "float16"])
@pytest.mark.parametrize("m,n", [(7, 383), (16, 768), (1, 1025)])
def test_layer_norm_autograd(m, n, dtype, atol, rtol):
    y, ours, y_ref, ref = _autograd_pair(m, n, dtype, seed=m * 1000 + n)
    assert y.dtype == dtype and y.shape == (m, n)
    result = compare(y, y_ref, atol, rtol)
    assert result.ok, f"forward: {result.summary()}"
    for name, a, r in zip(("x", "weight", "bias"), ours, ref):
        assert a.grad is not None, f"no gradient for {name}"
        assert a.grad.dtype == dtype and a.grad.shape == r.grad.shape
        result = compare(a.grad, r.grad, atol, rtol)
        assert result.ok, f"grad {name}: {result.summary()}"


def test_layer_norm_gradient_of_non_contiguous_input():
    gen = torch.Generator().manual_seed(3)
    wide = torch.randn(6, 300, generator=gen)
    w = 1.0 + 0.1 * torch.randn(129, generator=gen)
    b = 0.1 * torch.randn(129, generator=gen)
    dy = torch.randn(6, 129, generator=gen)
    leaf = wide.clone().requires_grad_()
    layer_norm(leaf[:, 10:139], w, b, 1e-5).backward(dy)
    ref = wide.double().requires_grad_()
    torch.nn.functional.layer_norm(ref[:, 10:139], (129,), w.double(), b.double(), 1e-5).backward(dy.double())
    result = compare(leaf.grad, ref.grad, 1e-5, 1e-5)
    assert result.ok, result.summary()


def test_layer_norm_default_eps_matches_torch():
    x, w, b, _ = SPEC.make_inputs(shape(4, 100), torch.float32, 11, "cpu")
    out = layer_norm(x, w, b)
    assert compare(out, torch.nn.functional.layer_norm(x.double(), (100,), w.double(), b.double(), 1e-5),
                   1e-5, 1e-5).ok


# ----------------------------------------------------------------------------- template space

def test_template_seed_is_valid():
    assert SPACE.validate({}) == {**SEED_PARAMS, **BWD_SEED_PARAMS}
    assert set(SPACE.params) == set(SEED_PARAMS) | set(BWD_SEED_PARAMS)
    assert SPACE.backward_knobs == set(BWD_SEED_PARAMS)
    for knob, value in {**SEED_PARAMS, **BWD_SEED_PARAMS}.items():
        assert value in SPACE.params[knob]


def test_validate_rejects_unknown_knob():
    with pytest.raises(ValueError, match="BLOCK_Q"):
        SPACE.validate({"BLOCK_Q": 64})


@pytest.mark.parametrize("knob,value", [("ROWS_PER_PROGRAM", 3), ("NUM_WARPS", 32), ("CHUNK_N", 100),
                                        ("PROGRAMS_PER_SM", 0)])
def test_validate_rejects_out_of_range(knob, value):
    with pytest.raises(ValueError, match=knob):
        SPACE.validate({knob: value})


def test_validate_fills_in_the_seed():
    point = SPACE.validate({"ROWS_PER_PROGRAM": 4})
    assert point == {**SEED_PARAMS, **BWD_SEED_PARAMS, "ROWS_PER_PROGRAM": 4}


def test_normalize_merges_switched_off_knobs():
    single = [SPACE.normalize(SPACE.validate({"SINGLE_TILE": True, "CHUNK_N": c})) for c in (128, 256, 512)]
    assert single[0] == single[1] == single[2]
    chunked = [SPACE.normalize(SPACE.validate({"SINGLE_TILE": False, "CHUNK_N": c})) for c in (128, 256, 512)]
    assert len({tuple(sorted(p.items())) for p in chunked}) == 3
    flat = [SPACE.normalize(SPACE.validate({"PERSISTENT": False, "PROGRAMS_PER_SM": p})) for p in (2, 4, 8, 16)]
    assert all(p == flat[0] for p in flat)
    grid = [SPACE.normalize(SPACE.validate({"PERSISTENT": True, "PROGRAMS_PER_SM": p})) for p in (2, 4, 8, 16)]
    assert len({tuple(sorted(p.items())) for p in grid}) == 4
    # the next tile is loaded ahead only in the persistent single-tile loop
    ahead = {"PREFETCH": True, "PERSISTENT": True}
    assert SPACE.normalize(SPACE.validate(ahead))["PREFETCH"] is True
    assert SPACE.normalize(SPACE.validate({**ahead, "PERSISTENT": False}))["PREFETCH"] is False
    assert SPACE.normalize(SPACE.validate({**ahead, "SINGLE_TILE": False}))["PREFETCH"] is False
    # the scale and shift are loaded early only in the single-tile paths
    assert SPACE.normalize(SPACE.validate({"SCALE_EARLY": True}))["SCALE_EARLY"] is True
    assert SPACE.normalize(SPACE.validate({"SCALE_EARLY": True, "SINGLE_TILE": False}))["SCALE_EARLY"] is False
    # the other knobs survive normalisation
    p = SPACE.normalize(SPACE.validate({"ROWS_PER_PROGRAM": 8, "NUM_WARPS": 2}))
    assert p["ROWS_PER_PROGRAM"] == 8 and p["NUM_WARPS"] == 2


def test_normalize_does_not_mutate_its_argument():
    point = SPACE.validate({"SINGLE_TILE": True, "CHUNK_N": 512})
    SPACE.normalize(point)
    assert point["CHUNK_N"] == 512


def test_normalize_is_a_projection():
    # the forward's space (the backward held at its seed): the whole space is too large to list
    forward = SPACE.forward_only()
    points = forward.all_points()
    assert len(points) == forward.size()
    keys = set()
    for p in points:
        n = SPACE.normalize(p)
        assert SPACE.validate(n) == n
        assert SPACE.normalize(n) == n
        keys.add(tuple(sorted(n.items())))
    # switched-off knobs are merged, the rest are kept apart
    assert len(keys) < len(points)
    assert len({(k["ROWS_PER_PROGRAM"], k["NUM_WARPS"]) for k in map(dict, keys)}) == (
        len(SPACE.params["ROWS_PER_PROGRAM"]) * len(SPACE.params["NUM_WARPS"]))


@pytest.mark.parametrize("point", [{}, {"SINGLE_TILE": False, "CHUNK_N": 512, "PERSISTENT": True}])
def test_neighbours_differ_in_exactly_one_knob(point):
    point = SPACE.validate(point)
    neighbours = SPACE.neighbours(point)
    assert len(neighbours) == sum(len(v) - 1 for v in SPACE.params.values())
    assert len({tuple(sorted(n.items())) for n in neighbours}) == len(neighbours)
    for n in neighbours:
        assert SPACE.validate(n) == n
        assert sum(n[k] != point[k] for k in point) == 1


RENDER_POINTS = [
    {},
    {"ROWS_PER_PROGRAM": 4},
    {"SINGLE_TILE": False, "CHUNK_N": 128, "NUM_WARPS": 8},
    {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "ROWS_PER_PROGRAM": 2},
]


@pytest.mark.parametrize("point", RENDER_POINTS, ids=["seed", "rows4", "chunked", "persistent"])
def test_rendered_source_passes_static_policy(point):
    params = SPACE.validate(point)
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    assert "@triton.jit" in source
    assert "def layer_norm(x, weight, bias, eps)" in source
    assert "PARAMS = {" in source
    for knob, value in params.items():
        assert f"{knob!r}: {value!r}" in source


def test_rendered_source_bakes_parameters():
    source = SPACE.render(SPACE.validate({"ROWS_PER_PROGRAM": 4}))
    assert "'ROWS_PER_PROGRAM': 4" in source
    assert "'ROWS_PER_PROGRAM': 1" not in source
    assert SPACE.render(SPACE.validate({})) != source


def test_render_is_deterministic():
    for point in RENDER_POINTS:
        params = SPACE.validate(point)
        assert SPACE.render(params) == SPACE.render(dict(params))


def test_rendered_candidate_runs(tmp_path):
    """The rendered file works on its own: imported as a module, its entry matches the reference."""
    params = SPACE.validate({"SINGLE_TILE": False, "CHUNK_N": 128, "ROWS_PER_PROGRAM": 2})
    path = tmp_path / "cand.py"
    path.write_text(SPACE.render(params))
    spec = importlib.util.spec_from_file_location("rendered_layer_norm_candidate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.PARAMS == SPACE.forward_point(params) and module.BWD_PARAMS == SPACE.backward_point(params)
    x, w, b, eps = SPEC.make_inputs(shape(5, 385), torch.float32, 9, "cpu")
    out = module.layer_norm(x, w, b, eps)
    tol = SPEC.tolerances["float32"]
    result = compare(out, SPEC.reference(x, w, b, eps), tol.atol, tol.rtol)
    assert result.ok, result.summary()
    assert not math.isnan(result.max_abs)


@pytest.mark.parametrize("single_tile, grid, prefetch, early", [(True, 4, False, True), (True, 2, False, False),
                                                                 (True, 2, True, True), (False, 2, False, False)],
                         ids=["one-tile-each", "persistent", "persistent-prefetch", "chunked"])
def test_int64_offsets_give_the_same_result(single_tile, grid, prefetch, early):
    # the launcher picks int64 offsets only past 2**31 elements, too large for a CPU test: launch the
    # kernel directly both ways on a small problem (7 rows, 2 per tile: 4 tiles)
    x, w, b, eps = SPEC.make_inputs(shape(7, 200), torch.float32, 6, "cpu")
    results = []
    for index_64 in (False, True):
        y = torch.empty_like(x)
        _layer_norm_fwd_kernel[(grid,)](x, w, b, y, 200, 200, 7, 200, eps, BLOCK_N=256 if single_tile else 64,
                                        ROWS=2, SINGLE_TILE=single_tile, PERSISTENT=grid < 4, PREFETCH=prefetch,
                                        SCALE_EARLY=early, EVICTION="", STORE_CACHE="", WIDTH=0, INDEX_64=index_64)
        results.append(y)
    assert torch.equal(results[0], results[1])
    tol = SPEC.tolerances["float32"]
    result = compare(results[1], SPEC.reference(x, w, b, eps), tol.atol, tol.rtol)
    assert result.ok, result.summary()
