"""kernels/rms_norm.py: the spec and its variants, the seed forward kernel at several template points, the
rendered candidate's gradients against float64 autograd (and a planted wrong backward that they catch),
and the template space. All on the CPU through Triton's interpreter (conftest sets TRITON_INTERPRET=1)."""
from __future__ import annotations

import importlib.util
import itertools

import pytest
import torch

from evaluators.checker import compare
from evaluators.static import check_candidate
from kernels import DTYPES
from kernels import layer_norm as LN
from kernels import rms_norm as R
from kernels.spec import Shape

SPEC = R.SPEC
SPACE = SPEC.template
# the interpreter's cost is per program: the loops over template points keep to the shapes of few rows
SMALL_SHAPES = tuple(s for s in SPEC.interpreter_shapes if s.dims["M"] < 256)
EDGE_WIDTHS = {383, 385, 1023, 1025}


def dims(shapes) -> set[tuple[int, int]]:
    return {(s.dims["M"], s.dims["N"]) for s in shapes}


def shape(m: int, n: int, origin: str = "edge") -> Shape:
    return Shape(name=f"{m}x{n}", dims={"M": m, "N": n}, origin=origin)


def check(out, inputs, dtype: str):
    tol = SPEC.tolerances[dtype]
    return compare(out, SPEC.reference(*inputs), tol.atol, tol.rtol)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values in the same layout."""
    return torch.equal(a, b) and a.stride() == b.stride() and a.storage_offset() == b.storage_offset()


def load_candidate(source: str, tmp_path, name: str):
    """The rendered file imported as a module of its own, as the sandbox would."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    module_spec = importlib.util.spec_from_file_location(f"rendered_rms_norm_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- spec

def test_spec_names_entry_and_kind():
    assert (SPEC.name, SPEC.entry) == ("rms_norm", "rms_norm")
    assert SPEC.signature.startswith("rms_norm(x")
    assert "weight" in SPEC.signature and "eps" in SPEC.signature and "bias" not in SPEC.signature
    assert "any distance apart" in SPEC.signature  # what the strided variant relies on
    assert SPEC.has_backward and SPEC.bound == "memory"
    assert SPEC.tags == ("row_wise", "normalization")
    assert set(SPEC.variants) == {"large_mean", "constant_rows", "wide_range", "strided"}


def test_shapes():
    timed = SPEC.timed_shapes()
    assert dims(timed) == {(4096, 256), (8192, 768)}
    assert {s.origin for s in timed} == {"microgpt", "gpt2"}
    assert SPEC.headline_shape() in timed and all(s in SPEC.shapes for s in timed)
    assert (128, 768) in dims(SPEC.shapes)
    edge = [s for s in SPEC.shapes if s.origin == "edge"]
    assert not any(s.timed for s in edge)
    assert any(s.dims["M"] == 1 for s in edge)
    assert any(s.dims["M"] % 2 == 1 and s.dims["M"] > 1 for s in edge)
    assert EDGE_WIDTHS <= {s.dims["N"] for s in edge}


def test_interpreter_shapes():
    shapes = SPEC.interpreter_shapes
    assert SPEC.shapes_for("cpu") == shapes and SPEC.shapes_for("cuda") == SPEC.shapes
    assert all(not s.timed for s in shapes)
    for s in SMALL_SHAPES:
        assert s.dims["M"] * s.dims["N"] <= 64 * 1024, f"{s} too big for the interpreter"
    many = [s for s in shapes if s not in SMALL_SHAPES]
    assert len(many) == 1 and many[0].dims["M"] >= 512 and many[0].dims["N"] <= 128
    widths = {s.dims["N"] for s in shapes}
    assert EDGE_WIDTHS | {256, 768} <= widths
    assert any(s.dims["M"] == 1 for s in shapes)


def test_dtypes_and_tolerances():
    assert set(SPEC.gpu_dtypes) == set(SPEC.cpu_dtypes) == {"float32", "float16", "bfloat16"}
    tols = SPEC.tolerances
    assert tols["float32"].atol <= tols["float16"].atol <= tols["bfloat16"].atol
    assert all(0 < t.atol < 1 and 0 < t.rtol < 1 for t in tols.values())


@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.float16, 2), (torch.bfloat16, 2)])
def test_bytes_and_flops(dtype, size):
    m, n = 4096, 256
    assert SPEC.bytes_moved(shape(m, n), dtype) == (2 * m * n + n) * size
    assert SPEC.backward_bytes(shape(m, n), dtype) == (3 * m * n + 2 * n) * size
    for flops in (SPEC.flops, SPEC.backward_flops):
        assert flops(shape(32, 768)) == 2 * flops(shape(16, 768)) > 0


def test_context_facts():
    ctx = SPEC.context(shape(4096, 256), 132)
    assert ctx == {"row_wise": True, "normalization": True, "rows_over_2x_sms": True, "width": 256}
    assert SPEC.context(shape(264, 768), 132)["rows_over_2x_sms"] is False
    assert SPEC.context(shape(265, 768), 132)["rows_over_2x_sms"] is True


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_make_inputs(dtype):
    x, w, eps = SPEC.make_inputs(shape(13, 383), DTYPES[dtype], 1, "cpu")
    assert x.shape == (13, 383) and w.shape == (383,) and x.dtype == w.dtype == DTYPES[dtype]
    assert isinstance(eps, float) and eps in R.EPS_CHOICES
    for t in (x, w):
        assert torch.isfinite(t).all() and (t != 0).any()
    assert x.float().std(dim=1).min() > 0
    x2, w2, _ = SPEC.make_inputs(shape(13, 383), DTYPES[dtype], 2, "cpu")
    assert not torch.equal(x, x2) and not torch.equal(w, w2)
    # eps is drawn per call: over a few seeds it takes more than one value
    assert len({SPEC.make_inputs(shape(2, 8), torch.float32, s, "cpu")[2] for s in range(16)}) > 1


def test_reference_is_wide_and_correct():
    x, w, eps = SPEC.make_inputs(shape(5, 100), torch.float32, 3, "cpu")
    ref = SPEC.reference(x, w, eps)
    assert ref.dtype == torch.float64
    xd = x.double()
    manual = xd / torch.sqrt((xd * xd).sum(dim=1, keepdim=True) / 100 + eps) * w.double()
    assert torch.allclose(ref, manual, atol=1e-12, rtol=1e-12)
    xh, wh, eps = SPEC.make_inputs(shape(5, 100), torch.float16, 3, "cpu")
    assert SPEC.reference(xh, wh, eps).dtype == torch.float32
    assert SPEC.eager(xh, wh, eps).dtype == torch.float16


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_eager_matches_reference_on_every_variant(dtype):
    failures = []
    for variant in (None, *SPEC.variants):
        for i, s in enumerate(SPEC.interpreter_shapes):
            inputs = SPEC.make_inputs(s, DTYPES[dtype], 40 + i, "cpu")
            if variant:
                inputs = SPEC.variants[variant](inputs, 47 + i)
            result = check(SPEC.eager(*inputs), inputs, dtype)
            if not result.ok:
                failures.append(f"{variant} {s.name}: {result.summary()}")
    assert not failures, "\n".join(failures)


def test_variants_keep_the_contract_and_their_inputs():
    inputs = SPEC.make_inputs(shape(13, 383), torch.float16, 5, "cpu")
    kept = [t.clone() for t in inputs[:2]]
    for name, variant in SPEC.variants.items():
        x, w, eps = variant(inputs, 9)
        assert (x.shape, x.dtype, w.shape, w.dtype, eps) == ((13, 383), torch.float16, (383,), torch.float16,
                                                            inputs[2]), name
        assert x.stride(1) == 1 and torch.isfinite(x).all(), name
        assert x.untyped_storage().data_ptr() != inputs[0].untyped_storage().data_ptr(), name
        # the same seed gives the same variant; other seeds other values or (strided) another layout
        assert same(variant(inputs, 9)[0], x), name
        assert not all(same(variant(inputs, s)[0], x) for s in range(10, 14)), name
    assert all(torch.equal(a, b) for a, b in zip(kept, inputs[:2]))
    strided = SPEC.variants["strided"](inputs, 9)[0]
    assert strided.stride(0) > 383 and not strided.is_contiguous()


def test_variants_catch_the_careless_kernels_they_are_for():
    def squares_in_float16(x, w, eps):
        return (x.float() * torch.rsqrt((x * x).float().mean(-1, keepdim=True) + eps) * w.float()).half()

    def default_eps(x, w, eps):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()).to(x.dtype)

    def subtracts_the_mean(x, w, eps):
        xf = x.float()
        return (xf * torch.rsqrt(xf.var(-1, unbiased=False, keepdim=True) + eps) * w.float()).to(x.dtype)

    s = shape(16, 256)
    x, w, eps = SPEC.make_inputs(s, torch.float16, 3, "cpu")
    assert check(squares_in_float16(x, w, eps), (x, w, eps), "float16").ok
    big = SPEC.variants["large_mean"]((x, w, eps), 4)
    assert not check(squares_in_float16(*big), big, "float16").ok
    assert not check(subtracts_the_mean(*big), big, "float16").ok
    # constant and tiny rows: eps = 1e-3 is where the default of 1e-6 is wrong by far
    x, w, _ = SPEC.make_inputs(s, torch.float32, 3, "cpu")
    flat = SPEC.variants["constant_rows"]((x, w, 1e-3), 4)
    assert not check(default_eps(*flat), flat, "float32").ok


# ----------------------------------------------------------------------------- seed forward kernel

POINTS = {
    "seed": {},
    "chunked-128-rows-2": {"SINGLE_TILE": False, "CHUNK_N": 128, "ROWS_PER_PROGRAM": 2, "EVICTION": "evict_first"},
    # 2 programs per (CPU-assumed) 4 SMs: 8 programs, so each strides over two or more tiles
    "persistent-prefetch": {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "PREFETCH": True, "SCALE_EARLY": True,
                            "CONST_WIDTH": True},
    "rows-4-streamed": {"ROWS_PER_PROGRAM": 4, "SCALE_EARLY": True, "STORE_CACHE": ".cs"},
}


def forward_failures(params, dtype: str, seed: int) -> list[str]:
    failures = []
    for i, s in enumerate(SMALL_SHAPES):
        inputs = SPEC.make_inputs(s, DTYPES[dtype], seed + i, "cpu")
        kept = [t.clone() for t in inputs[:2]]
        out = R._rms_norm_fwd(*inputs, **params)
        assert out.dtype == DTYPES[dtype] and out.shape == inputs[0].shape and out.is_contiguous()
        assert all(torch.equal(a, b) for a, b in zip(kept, inputs[:2])), "the kernel changed its inputs"
        result = check(out, inputs, dtype)
        if not result.ok:
            failures.append(f"{s.name} {s}: {result.summary()}")
    return failures


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("point", list(POINTS), ids=list(POINTS))
def test_forward_matches_reference(point, dtype):
    failures = forward_failures(SPACE.forward_point(SPACE.validate(POINTS[point])), dtype, 100)
    assert not failures, "\n".join(failures)


def test_forward_bfloat16_at_the_seed():
    # no tl.dot, so the interpreter's elementwise bfloat16 is right
    failures = forward_failures(R.SEED_PARAMS, "bfloat16", 200)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("variant", sorted(SPEC.variants))
def test_seed_passes_every_variant(variant, dtype):
    failures = []
    for i, s in enumerate(SMALL_SHAPES):
        inputs = SPEC.variants[variant](SPEC.make_inputs(s, DTYPES[dtype], 300 + i, "cpu"), 307 + i)
        result = check(R.rms_norm(*inputs), inputs, dtype)
        if not result.ok:
            failures.append(f"{s.name} {s}: {result.summary()}")
    assert not failures, "\n".join(failures)


def test_persistent_grid_over_many_strided_rows():
    # the many-rows shape, once: 4-row tiles on 8 programs, each looping over many tiles of strided rows
    (many,) = [s for s in SPEC.interpreter_shapes if s not in SMALL_SHAPES]
    params = SPACE.forward_point(SPACE.validate({"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "ROWS_PER_PROGRAM": 4,
                                                 "PREFETCH": True}))
    inputs = SPEC.variants["strided"](SPEC.make_inputs(many, torch.float32, 11, "cpu"), 12)
    result = check(R._rms_norm_fwd(*inputs, **params), inputs, "float32")
    assert result.ok, result.summary()


@pytest.mark.parametrize("single_tile, grid, prefetch", [(True, 4, False), (True, 2, True), (False, 2, False)],
                         ids=["one-tile-each", "persistent-prefetch", "chunked"])
def test_int64_offsets_give_the_same_result(single_tile, grid, prefetch):
    # the launcher picks int64 offsets only past 2**31 elements: launch both ways on 7 rows, 2 a tile
    x, w, eps = SPEC.make_inputs(shape(7, 200), torch.float32, 6, "cpu")
    results = []
    for index_64 in (False, True):
        y = torch.empty_like(x)
        R._rms_norm_fwd_kernel[(grid,)](x, w, y, 200, 200, 7, 200, eps, BLOCK_N=256 if single_tile else 64,
                                        ROWS=2, SINGLE_TILE=single_tile, PERSISTENT=grid < 4, PREFETCH=prefetch,
                                        SCALE_EARLY=single_tile, EVICTION="", STORE_CACHE="", WIDTH=0,
                                        INDEX_64=index_64)
        results.append(y)
    assert torch.equal(results[0], results[1])
    assert check(results[1], (x, w, eps), "float32").ok


def test_forward_rejects_bad_shapes():
    x, w, eps = SPEC.make_inputs(shape(4, 64), torch.float32, 0, "cpu")
    with pytest.raises(ValueError):
        R._rms_norm_fwd(x, w[:32], eps, **R.SEED_PARAMS)
    with pytest.raises(ValueError):
        R._rms_norm_fwd(x.reshape(2, 2, 64), w, eps, **R.SEED_PARAMS)


def test_check_catches_a_wrong_output():
    x, w, eps = SPEC.make_inputs(shape(3, 383), torch.float32, 0, "cpu")
    out = R.rms_norm(x, w, eps)
    assert check(out, (x, w, eps), "float32").ok
    out[1, 5] += 1e-2
    assert not check(out, (x, w, eps), "float32").ok


# ----------------------------------------------------------------------------- gradients of the candidate

BWD_POINTS = {
    "seed": {},
    # 1024-element tiles (2 rows of 383), one program a (CPU-assumed) SM: each program loops over tiles
    "small-tiles": {"BWD_TILE": 1024, "BWD_PROGRAMS_PER_SM": 1, "BWD_WARPS": 2, "SUM_BLOCK_G": 16,
                    "SUM_BLOCK_N": 16},
    "wide-tiles": {"BWD_TILE": 8192, "BWD_PROGRAMS_PER_SM": 8, "BWD_WARPS": 8, "SUM_BLOCK_G": 128,
                   "SUM_BLOCK_N": 128, "ROWS_PER_PROGRAM": 2},
}
GRAD_SHAPES = [(13, 383), (16, 256)]


def gradient_pair(entry, m: int, n: int, seed: int, strided: bool = False):
    """Gradients of x and weight by `entry` and by float64 autograd of the reference, for one dy."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(m, n + 9, generator=gen) * 1.5 + 0.3
    w = 1.0 + 0.2 * torch.randn(n, generator=gen)
    dy = torch.randn(m, n, generator=gen)
    eps = 1e-5
    ours = [base.clone().requires_grad_(), w.clone().requires_grad_()]
    x = ours[0][:, 4:4 + n] if strided else ours[0][:, :n].contiguous()
    y = entry(x, ours[1], eps)
    y.backward(dy)
    ref = [base.double().requires_grad_(), w.double().requires_grad_()]
    xr = ref[0][:, 4:4 + n] if strided else ref[0][:, :n].contiguous()
    SPEC.reference(xr, ref[1], eps).backward(dy.double())
    return y, [t.grad for t in ours], [t.grad for t in ref], SPEC.reference(xr.detach(), ref[1].detach(), eps)


@pytest.mark.parametrize("point", list(BWD_POINTS), ids=list(BWD_POINTS))
def test_rendered_candidate_gradients_match_float64_autograd(point, tmp_path):
    params = SPACE.validate(BWD_POINTS[point])
    module = load_candidate(SPACE.render(params), tmp_path, point)
    assert module.BWD_PARAMS == SPACE.backward_point(params)
    for k, (m, n) in enumerate(GRAD_SHAPES):
        y, grads, refs, y_ref = gradient_pair(module.rms_norm, m, n, seed=m * 1000 + n, strided=k == 0)
        assert compare(y, y_ref, 1e-5, 1e-5).ok
        for name, g, r in zip(("x", "weight"), grads, refs):
            assert g is not None and g.dtype == torch.float32 and g.shape == r.shape, name
            result = compare(g, r, 1e-4, 1e-4)
            assert result.ok, f"{point} {m}x{n} grad {name}: {result.summary()}"


def test_planted_wrong_backward_is_caught(tmp_path):
    # the rendered source with the mean term of dx dropped: the forward and dweight stay right, dx must not
    source = SPACE.render(SPACE.seed)
    right = "dx = (wdy - xhat * c[:, None]) * rstd[:, None]"
    assert source.count(right) == 1
    module = load_candidate(source.replace(right, "dx = wdy * rstd[:, None]"), tmp_path, "planted")
    for m, n in GRAD_SHAPES:
        y, (gx, gw), (rx, rw), y_ref = gradient_pair(module.rms_norm, m, n, seed=m * 1000 + n)
        assert compare(y, y_ref, 1e-5, 1e-5).ok
        assert compare(gw, rw, 1e-4, 1e-4).ok
        wrong = compare(gx, rx, 1e-4, 1e-4)
        assert not wrong.ok and wrong.max_abs > 1e-2, wrong.summary()


def test_seed_entry_is_differentiable_in_float16():
    x, w, _ = SPEC.make_inputs(shape(9, 385), torch.float16, 4, "cpu")
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    dy = torch.randn(9, 385, generator=torch.Generator().manual_seed(1)).half()
    R.rms_norm(*leaves, 1e-5).backward(dy)
    ref = [x.double().requires_grad_(), w.double().requires_grad_()]
    SPEC.reference(*ref, 1e-5).backward(dy.double())
    for g, r in zip((t.grad for t in leaves), (t.grad for t in ref)):
        assert g.dtype == torch.float16
        result = compare(g, r, 1e-2 * float(r.pow(2).mean().sqrt()), 1e-2)
        assert result.ok, result.summary()


# ----------------------------------------------------------------------------- template space

def test_template_seed_and_knobs():
    assert SPACE.validate({}) == {**R.SEED_PARAMS, **R.BWD_SEED_PARAMS}
    assert set(SPACE.params) == set(R.SEED_PARAMS) | set(R.BWD_SEED_PARAMS)
    assert SPACE.backward_knobs == set(R.BWD_KNOBS) == set(R.BWD_SEED_PARAMS)
    assert SPACE.normalize(SPACE.validate({})) == SPACE.seed
    # the same backward knobs and seed as layer_norm's, in dicts of its own
    assert R.BWD_SEED_PARAMS == LN.BWD_SEED_PARAMS and R.BWD_SEED_PARAMS is not LN.BWD_SEED_PARAMS
    assert R.BWD_KNOBS == LN.BWD_KNOBS and R.BWD_KNOBS is not LN.BWD_KNOBS


def test_validate_rejects_unknown_and_out_of_range_knobs():
    with pytest.raises(ValueError, match="BLOCK_Q"):
        SPACE.validate({"BLOCK_Q": 64})
    for knob, value in [("ROWS_PER_PROGRAM", 3), ("CHUNK_N", 100), ("BWD_TILE", 512), ("EVICTION", "evict_last")]:
        with pytest.raises(ValueError, match=knob):
            SPACE.validate({knob: value})


def test_normalize_merges_switched_off_knobs():
    single = {tuple(sorted(SPACE.normalize(SPACE.validate({"CHUNK_N": c, "NUM_STAGES": st})).items()))
              for c, st in itertools.product((128, 256, 512), (1, 2, 3))}
    assert len(single) == 1
    chunked = {tuple(sorted(SPACE.normalize(SPACE.validate({"SINGLE_TILE": False, "CHUNK_N": c})).items()))
               for c in (128, 256, 512)}
    assert len(chunked) == 3
    assert SPACE.normalize(SPACE.validate({"PREFETCH": True}))["PREFETCH"] is False
    assert SPACE.normalize(SPACE.validate({"PREFETCH": True, "PERSISTENT": True}))["PREFETCH"] is True
    # backward knobs are never merged away
    assert SPACE.normalize(SPACE.validate({"BWD_TILE": 8192}))["BWD_TILE"] == 8192


RENDER_POINTS = [{}, {"SINGLE_TILE": False, "CHUNK_N": 128, "NUM_WARPS": 8},
                 {"PERSISTENT": True, "PROGRAMS_PER_SM": 2, "PREFETCH": True, "BWD_TILE": 1024}]


@pytest.mark.parametrize("point", RENDER_POINTS, ids=["seed", "chunked", "persistent"])
def test_rendered_source_passes_static_policy(point):
    params = SPACE.validate(point)
    source = SPACE.render(params)
    violations = check_candidate(source, SPEC.entry)
    assert violations == [], [v.detail for v in violations]
    assert "def rms_norm(x, weight, eps)" in source
    assert "PARAMS = {" in source and "BWD_PARAMS = {" in source and "torch.autograd.Function" in source
    # self-contained: every kernel and helper it launches is in it, and nothing of the package is imported
    for name in ("_row_tile", "_row_rstd", "_row_scale", "_rms_load_tile", "_rms_finish_tile",
                 "_rms_norm_fwd_kernel", "_rms_norm_bwd_kernel", "_column_sum_kernel", "bwd_layout"):
        assert f"def {name}(" in source, name
    assert "kernels" not in source.split('"""', 2)[2].split("def ", 1)[0]
    for knob, value in params.items():
        assert f"{knob!r}: {value!r}" in source
    assert SPACE.render(dict(params)) == source


def test_rendered_candidate_runs_forward(tmp_path):
    params = SPACE.validate({"SINGLE_TILE": False, "CHUNK_N": 128, "ROWS_PER_PROGRAM": 2})
    module = load_candidate(SPACE.render(params), tmp_path, "chunked")
    assert module.PARAMS == SPACE.forward_point(params)
    inputs = SPEC.make_inputs(shape(5, 385), torch.float32, 9, "cpu")
    result = check(module.rms_norm(*inputs), inputs, "float32")
    assert result.ok, result.summary()


def test_default_eps():
    x, w, _ = SPEC.make_inputs(shape(4, 100), torch.float32, 11, "cpu")
    assert compare(R.rms_norm(x, w), SPEC.reference(x, w, 1e-6), 1e-5, 1e-5).ok
