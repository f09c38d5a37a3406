"""What the specs' checks cover: input variants (large means, constant rows, wide ranges, strided rows),
scalars drawn per call, many rows and bfloat16 in the interpreter.

Every variant keeps its inputs' shapes, dtypes and device and stays inside the op's contract (the seed
kernel, every promoted kernel and PyTorch's eager op all pass it within the spec's tolerances), and it
catches the careless kernel it was made for, which plain inputs mostly let through. All on the CPU
through Triton's interpreter (conftest sets TRITON_INTERPRET=1).
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import triton

from evaluators.checker import Comparison, as_outputs, compare_outputs
from kernels import DTYPES, OPS, get_spec
from kernels.layer_norm import EPS_CHOICES, _layer_norm_fwd_kernel, layer_norm
from kernels.spec import Shape

ROOT = Path(__file__).resolve().parent.parent
PROMOTED = ROOT / "memory" / "promoted"

# what each op's contract allows, and so which variants it must have
EXPECTED_VARIANTS = {
    "layer_norm": {"large_mean", "constant_rows", "wide_range", "strided"},
    "rms_norm": {"large_mean", "constant_rows", "wide_range", "strided"},
    "add_layer_norm": {"large_mean", "constant_rows", "wide_range", "strided"},
    "bias_gelu": {"large_mean", "wide_range", "strided"},
    "cross_entropy": {"large_mean", "constant_rows", "wide_range", "strided"},
    "embedding": {"wide_range", "strided"},
    "attention": {"large_mean", "constant_rows", "wide_range"},  # qkv is contiguous by contract
}
# the 2-D inputs that the strided variant lays out with rows farther apart than their width
STRIDED_ARGS = {
    "layer_norm": (0,),
    "rms_norm": (0,),
    "add_layer_norm": (0, 1),
    "bias_gelu": (0,),
    "cross_entropy": (0,),
    "embedding": (0, 1, 2),
}
CASES = [(op, dtype, variant) for op in sorted(OPS) for dtype in get_spec(op).cpu_dtypes
         for variant in (None, *sorted(get_spec(op).variants))]


def case_id(case) -> str:
    op, dtype, variant = case
    return f"{op}-{dtype}-{variant or 'plain'}"


def rows(shape: Shape) -> int:
    dims = shape.dims
    return dims["M"] if "M" in dims else dims["B"] * dims["T"]


def small_shapes(op: str) -> tuple[Shape, ...]:
    return tuple(s for s in get_spec(op).interpreter_shapes if rows(s) < 256)


def many_rows_shape(op: str) -> Shape:
    (shape,) = [s for s in get_spec(op).interpreter_shapes if rows(s) >= 256]
    return shape


def inputs_for(op: str, shape: Shape, dtype: str, variant: str | None, seed: int) -> tuple:
    spec = get_spec(op)
    inputs = spec.make_inputs(shape, DTYPES[dtype], seed, "cpu")
    return spec.variants[variant](inputs, seed + 7919) if variant else inputs


def seed_entry(op: str):
    return getattr(importlib.import_module(f"kernels.{op}"), get_spec(op).entry)


def promoted_entries(op: str) -> list[tuple[str, object]]:
    """The entry of every promoted kernel of the op (memory/promoted/<op>/<device>/kernel.py)."""
    found = []
    for path in sorted(PROMOTED.glob(f"{op}/*/kernel.py")):
        module_spec = importlib.util.spec_from_file_location(f"promoted_{op}_{path.parent.name}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        found.append((path.parent.name, getattr(module, get_spec(op).entry)))
    return found


def check(op: str, out, inputs: tuple, dtype: str) -> Comparison:
    tol = get_spec(op).tolerances[dtype]
    return compare_outputs(out, get_spec(op).reference(*inputs), tol.atol, tol.rtol)


def error_ratio(op: str, out, inputs: tuple, dtype: str) -> float:
    """The worst element's error as a fraction of what the tolerance allows it (inf for a non-finite one)."""
    tol = get_spec(op).tolerances[dtype]
    worst = 0.0
    for o, r in zip(as_outputs(out), as_outputs(get_spec(op).reference(*inputs))):
        o, r = o.detach().double(), r.detach().double()
        if not torch.isfinite(o).all():
            return math.inf
        worst = max(worst, float(((o - r).abs() / (tol.atol + tol.rtol * r.abs())).max()))
    return worst


def tensors_of(inputs: tuple) -> list[torch.Tensor]:
    return [a for a in inputs if isinstance(a, torch.Tensor)]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values in the same layout."""
    return torch.equal(a, b) and a.stride() == b.stride() and a.storage_offset() == b.storage_offset()


def storage_of(t: torch.Tensor) -> torch.Tensor:
    """Every element of t's storage, the ones outside its view too."""
    return torch.empty(0, dtype=t.dtype).set_(t.untyped_storage())


# ----------------------------------------------------------------------------- the interface


def test_every_op_has_the_variants_its_contract_allows():
    assert set(OPS) == set(EXPECTED_VARIANTS)
    for op, expected in EXPECTED_VARIANTS.items():
        spec = get_spec(op)
        assert set(spec.variants) == expected, op
        assert all(callable(v) for v in spec.variants.values())
        # the signature says what the strided variant relies on (or, for attention, that it may not)
        if "strided" in expected:
            assert "any distance apart" in spec.signature, op
        else:
            assert "contiguous" in spec.signature, op


@pytest.mark.parametrize("op", sorted(OPS))
def test_variants_keep_shapes_dtypes_and_devices_and_leave_their_inputs_alone(op):
    spec = get_spec(op)
    for dtype in spec.cpu_dtypes:
        for i, shape in enumerate(spec.interpreter_shapes):
            inputs = spec.make_inputs(shape, DTYPES[dtype], 30 + i, "cpu")
            before = [a.clone() if isinstance(a, torch.Tensor) else a for a in inputs]
            for name, variant in spec.variants.items():
                made = variant(inputs, 5 + i)
                where = f"{op} {name} {shape.name} {dtype}"
                assert isinstance(made, tuple) and len(made) == len(inputs), where
                for a, b in zip(inputs, made):
                    if isinstance(a, torch.Tensor):
                        assert isinstance(b, torch.Tensor), where
                        assert (b.shape, b.dtype, b.device) == (a.shape, a.dtype, a.device), where
                        # a new tensor, sharing no storage with the inputs it was made from
                        assert b.untyped_storage().data_ptr() != a.untyped_storage().data_ptr(), where
                    else:
                        assert b == a and type(b) is type(a), where  # eps, n_head: scalars stay
                # the same seed gives the same variant, another seed another one (unless the shape leaves
                # the variant nothing to change: one token's keys are trivially all the same)
                tensors = [b for b in made if isinstance(b, torch.Tensor)]
                assert all(same(b, c) for b, c in zip(tensors, tensors_of(variant(inputs, 5 + i)))), where
                if not all(same(a, b) for a, b in zip(tensors_of(inputs), tensors)):
                    others = [tensors_of(variant(inputs, s)) for s in range(6 + i, 10 + i)]
                    assert any(not all(same(b, d) for b, d in zip(tensors, o)) for o in others), where
            for a, b in zip(inputs, before):
                assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, f"{op}: inputs changed"


@pytest.mark.parametrize("op", sorted(OPS))
def test_inputs_are_finite_never_all_zeros_and_the_reference_is_finite(op):
    spec = get_spec(op)
    for dtype in spec.cpu_dtypes:
        for i, shape in enumerate(spec.interpreter_shapes):
            for variant in (None, *spec.variants):
                inputs = inputs_for(op, shape, dtype, variant, 50 + i)
                where = f"{op} {variant} {shape.name} {dtype}"
                for a in inputs:
                    if isinstance(a, torch.Tensor) and a.is_floating_point():
                        assert torch.isfinite(a).all(), where
                        assert (a != 0).any(), f"{where}: all zeros"
                for r in as_outputs(spec.reference(*inputs)):
                    assert torch.isfinite(r).all(), where


@pytest.mark.parametrize("op", sorted(STRIDED_ARGS))
def test_strided_variants_lay_rows_out_farther_apart_than_their_width(op):
    spec = get_spec(op)
    for i, shape in enumerate(spec.interpreter_shapes):
        inputs = spec.make_inputs(shape, torch.float32, 70 + i, "cpu")
        made = spec.variants["strided"](inputs, 3 + i)
        for k in STRIDED_ARGS[op]:
            t = made[k]
            assert t.dim() == 2 and t.stride(1) == 1, (op, k)
            assert t.stride(0) > t.shape[1], (op, k, shape.name, t.stride())
            assert t.shape[0] == 1 or not t.is_contiguous()
            if t.is_floating_point():
                # what lies around the view is NaN: a kernel that reads it puts NaN in its output
                assert torch.isnan(storage_of(t)).sum() == storage_of(t).numel() - t.numel()
    # the row stride and the storage offset vary with the seed, and are often odd (off 16-byte alignment)
    shape = spec.interpreter_shapes[0]
    layouts = {(t.stride(0), t.storage_offset()) for s in range(12)
               for t in [spec.variants["strided"](spec.make_inputs(shape, torch.float32, s, "cpu"), s)[0]]}
    assert len(layouts) > 6 and any(stride % 2 for stride, _ in layouts)


# ----------------------------------------------------------------------------- honest kernels pass


def run_cases(op: str, dtype: str, variant: str | None, entry, shapes) -> list[str]:
    failures = []
    for i, shape in enumerate(shapes):
        inputs = inputs_for(op, shape, dtype, variant, 100 + i)
        kept = [a.clone() if isinstance(a, torch.Tensor) else a for a in inputs]
        result = check(op, entry(*inputs), inputs, dtype)
        if not result.ok:
            failures.append(f"{shape.name} {shape}: {result.summary()}")
        for a, b in zip(inputs, kept):
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b), f"{shape.name}: the kernel changed its inputs"
    return failures


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_seed_kernel_passes_every_variant(case):
    op, dtype, variant = case
    failures = run_cases(op, dtype, variant, seed_entry(op), small_shapes(op))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("op", sorted(OPS))
def test_seed_kernel_passes_every_variant_on_many_rows(op):
    # seconds a call under the interpreter: each variant once, the dtypes taking turns
    spec = get_spec(op)
    shape = many_rows_shape(op)
    failures = []
    for i, variant in enumerate((None, *sorted(spec.variants))):
        dtype = spec.cpu_dtypes[i % len(spec.cpu_dtypes)]
        failures += [f"{variant} {dtype}: {f}" for f in run_cases(op, dtype, variant, seed_entry(op), (shape,))]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_eager_passes_every_variant(case):
    # PyTorch's own op, which rounds where it likes (eager add_layer_norm normalises the rounded sum):
    # within the tolerance on every variant, so the variants ask nothing of a kernel that honest code
    # does not give
    op, dtype, variant = case
    spec = get_spec(op)
    failures = run_cases(op, dtype, variant, spec.eager, spec.interpreter_shapes)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("op", sorted(OPS))
def test_promoted_kernels_pass_every_variant(op):
    entries = promoted_entries(op)
    if not entries:
        pytest.skip(f"no promoted {op} kernel")
    spec = get_spec(op)
    failures = []
    for device, entry in entries:
        for dtype in spec.cpu_dtypes:
            for variant in (None, *sorted(spec.variants)):
                failures += [f"{device} {dtype} {variant}: {f}"
                             for f in run_cases(op, dtype, variant, entry, small_shapes(op))]
        # and once on many rows, where a persistent grid loops: with strided rows where the contract has
        # them, since the row arithmetic across waves is what many rows exercise
        variant = "strided" if "strided" in spec.variants else "large_mean"
        failures += [f"{device} many rows {variant}: {f}"
                     for f in run_cases(op, spec.cpu_dtypes[0], variant, entry, (many_rows_shape(op),))]
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------- careless kernels fail


def one_pass_layer_norm(x, weight, bias, eps):
    """LayerNorm with the variance as E[x^2] - E[x]^2, in float32: right on moderate rows."""
    xf = x.float()
    mean = xf.mean(dim=1, keepdim=True)
    var = ((xf * xf).mean(dim=1, keepdim=True) - mean * mean).clamp_min(0.0)
    return ((xf - mean) * torch.rsqrt(var + eps) * weight.float() + bias.float()).to(x.dtype)


@pytest.mark.parametrize("op", ["layer_norm", "add_layer_norm"])
# ten times float32's tolerance and more; float16's is a hundred times looser, and still missed
@pytest.mark.parametrize("dtype,margin", [("float32", 10.0), ("float16", 1.0)])
def test_one_pass_variance_fails_large_means_by_a_wide_margin(op, dtype, margin):
    if op == "layer_norm":
        careless = one_pass_layer_norm
    else:
        def careless(x, residual, weight, bias, eps):
            s = x.float() + residual.float()
            return (x + residual), one_pass_layer_norm(s, weight, bias, eps).to(x.dtype)
    shape = Shape("gpt2-width", {"M": 64, "N": 768}, "gpt2")
    plain = [inputs_for(op, shape, dtype, None, s) for s in range(3)]
    large = [inputs_for(op, shape, dtype, "large_mean", s) for s in range(3)]
    # plain inputs let it through; large means do not, by far, while the seed keeps a wide margin
    assert all(error_ratio(op, careless(*i), i, dtype) < 1.0 for i in plain)
    assert min(error_ratio(op, careless(*i), i, dtype) for i in large) > margin
    assert max(error_ratio(op, seed_entry(op)(*i), i, dtype) for i in large) < 0.5


def test_layer_norm_eps_varies_per_call():
    for op in ("layer_norm", "add_layer_norm"):
        spec = get_spec(op)
        shape = Shape("small", {"M": 4, "N": 64}, "edge")
        drawn = [spec.make_inputs(shape, torch.float32, seed, "cpu")[-1] for seed in range(20)]
        assert set(drawn) <= set(EPS_CHOICES) and len(set(drawn)) >= 3, (op, drawn)
        # the dtype does not change the draw: a seed names one eps whatever the dtype checked
        assert drawn[3] == spec.make_inputs(shape, torch.float16, 3, "cpu")[-1]


@pytest.mark.parametrize("op", ["layer_norm", "add_layer_norm"])
def test_kernel_that_ignores_eps_fails_for_some_seeds(op):
    spec = get_spec(op)
    seed_kernel = seed_entry(op)
    shape = Shape("odd-rows-383", {"M": 13, "N": 383}, "edge")

    def default_eps(*inputs):
        return seed_kernel(*inputs[:-1], 1e-5)

    verdicts = {}
    for seed in range(12):
        inputs = spec.make_inputs(shape, torch.float32, seed, "cpu")
        verdicts.setdefault(inputs[-1], set()).add(check(op, default_eps(*inputs), inputs, "float32").ok)
        assert check(op, seed_kernel(*inputs), inputs, "float32").ok
    assert verdicts.get(1e-5, {True}) == {True}
    assert any(ok == {False} for eps, ok in verdicts.items() if eps != 1e-5)

    # and on constant rows a kernel that drops eps altogether divides 0 by 0
    def no_eps(*inputs):
        return seed_kernel(*inputs[:-1], 0.0)

    inputs = inputs_for(op, shape, "float32", "constant_rows", 4)
    assert not check(op, no_eps(*inputs), inputs, "float32").ok
    assert check(op, seed_kernel(*inputs), inputs, "float32").ok


def test_log_sum_exp_without_the_max_fails_large_means():
    def careless(logits, targets):
        x = logits.float()
        lse = torch.log(torch.exp(x).sum(dim=1))
        valid = targets != -1
        picked = x.gather(1, targets.clamp_min(0)[:, None])[:, 0]
        return ((lse - picked) * valid).sum() / valid.sum()

    shape = Shape("odd-rows-385", {"M": 9, "V": 385}, "edge")
    for dtype in ("float32", "float16"):
        plain = inputs_for("cross_entropy", shape, dtype, None, 1)
        large = inputs_for("cross_entropy", shape, dtype, "large_mean", 1)
        assert check("cross_entropy", careless(*plain), plain, dtype).ok
        assert not check("cross_entropy", careless(*large), large, dtype).ok
        assert check("cross_entropy", seed_entry("cross_entropy")(*large), large, dtype).ok


def test_softmax_without_the_running_max_fails_large_scores():
    def careless(qkv, n_head):
        B, T, C3 = qkv.shape
        q, k, v = (t.view(B, T, n_head, -1).transpose(1, 2).float() for t in qkv.split(C3 // 3, dim=2))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        p = torch.exp(scores).tril()
        y = (p / p.sum(dim=-1, keepdim=True)) @ v
        return y.transpose(1, 2).reshape(B, T, C3 // 3).to(qkv.dtype)

    shape = Shape("T65", {"B": 1, "T": 65, "H": 2, "D": 64}, "edge")
    for dtype in ("float32", "float16"):
        plain = inputs_for("attention", shape, dtype, None, 2)
        large = inputs_for("attention", shape, dtype, "large_mean", 2)
        assert check("attention", careless(*plain), plain, dtype).ok
        assert not check("attention", careless(*large), large, dtype).ok


def test_tanh_from_exp_fails_large_means():
    def careless(x, bias):
        v = x.float() + bias.float()
        e = torch.exp(2.0 * math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3))
        return (0.5 * v * (1.0 + (e - 1.0) / (e + 1.0))).to(x.dtype)

    # make_inputs' own tails (1% of x eight times wider) catch it already; every large-mean row does
    shape = Shape("odd-rows-383", {"M": 13, "N": 383}, "edge")
    for dtype in ("float32", "float16"):
        large = inputs_for("bias_gelu", shape, dtype, "large_mean", 3)
        out = careless(*large)
        assert not check("bias_gelu", out, large, dtype).ok
        assert torch.isnan(out.float()).any(), "inf / inf where the offset is positive"
        assert check("bias_gelu", seed_entry("bias_gelu")(*large), large, dtype).ok


def test_float16_arithmetic_fails_wide_ranges():
    # bfloat16 tables added in float16: exact on moderate values, inf past float16's range
    def careless(idx, wte, wpe):
        return (wte.half()[idx] + wpe.half()[: idx.shape[1]]).to(wte.dtype)

    shape = Shape("odd-T-7", {"B": 3, "T": 7, "V": 65, "C": 383, "P": 16}, "edge")
    plain = inputs_for("embedding", shape, "bfloat16", None, 4)
    wide = inputs_for("embedding", shape, "bfloat16", "wide_range", 4)
    assert check("embedding", careless(*plain), plain, "bfloat16").ok
    assert not check("embedding", careless(*wide), wide, "bfloat16").ok


def test_kernel_that_steps_rows_by_the_width_fails_strided_rows():
    def careless(x, weight, bias, eps):
        M, N = x.shape
        y = torch.empty((M, N), dtype=x.dtype)
        # the row stride taken as N: right for a packed x only
        _layer_norm_fwd_kernel[(M,)](x, weight, bias, y, N, N, M, N, eps, BLOCK_N=triton.next_power_of_2(N),
                                     ROWS=1, SINGLE_TILE=True, PERSISTENT=False, PREFETCH=False,
                                     SCALE_EARLY=False, EVICTION="", STORE_CACHE="", WIDTH=0, INDEX_64=False)
        return y

    shape = Shape("odd-rows-385", {"M": 9, "N": 385}, "edge")
    plain = inputs_for("layer_norm", shape, "float32", None, 5)
    strided = inputs_for("layer_norm", shape, "float32", "strided", 5)
    assert check("layer_norm", careless(*plain), plain, "float32").ok
    assert not check("layer_norm", careless(*strided), strided, "float32").ok
    assert check("layer_norm", layer_norm(*strided), strided, "float32").ok


# ----------------------------------------------------------------------------- shapes, dtypes, imports


def test_every_op_has_a_shape_of_many_rows_in_the_interpreter():
    for op in OPS:
        shape = many_rows_shape(op)
        assert rows(shape) >= 512 and not shape.timed, op
    # where the interpreter's cost allows it (it is per program, and these seeds pack rows), thousands
    assert rows(many_rows_shape("cross_entropy")) >= 2048
    assert rows(many_rows_shape("attention")) >= 2048


def test_bfloat16_is_checked_on_the_cpu_except_where_tl_dot_is():
    for op in OPS:
        spec = get_spec(op)
        # the interpreter's tl.dot on bfloat16 returns garbage; its elementwise bfloat16 is right, though it
        # rounds float32 to bfloat16 toward zero (a whole ulp off where a GPU is half an ulp), which the
        # bfloat16 tolerances absorb with room: the seeds stay within half of them
        assert ("bfloat16" in spec.cpu_dtypes) == (op != "attention"), op
        assert set(spec.cpu_dtypes) <= set(spec.gpu_dtypes) and set(spec.cpu_dtypes) <= set(spec.tolerances)


def test_kernels_import_nothing_of_the_project_outside_kernels():
    # the standard library's modules the package uses, torch, triton and numpy (the data loader's memmaps)
    allowed = {"__future__", "contextlib", "dataclasses", "importlib", "inspect", "itertools", "math", "pathlib",
               "pickle", "random", "re", "json", "statistics", "sys", "textwrap", "time", "tomllib", "types", "typing", "numpy",
               "torch", "triton"}
    for path in sorted((ROOT / "kernels").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            assert all(name.split(".")[0] in allowed for name in names), (path.name, names)


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_backward_is_declared_searchable_and_measurable(op):
    """Each op's backward: its knobs are in the template space, the seed renders a differentiable candidate
    the static policy passes, and the backward's bytes are declared for the forward+backward GB/s."""
    from evaluators.static import check_candidate

    spec = get_spec(op)
    assert spec.has_backward
    space = spec.template
    assert space.backward_knobs and space.backward_knobs <= set(space.params)
    assert all(space.seed[k] in space.params[k] for k in space.backward_knobs)
    source = space.render(space.seed)
    assert "BWD_PARAMS" in source and "torch.autograd.Function" in source
    assert check_candidate(source, spec.entry) == []
    shape = spec.headline_shape()
    assert spec.backward_bytes is not None and spec.backward_bytes(shape, torch.bfloat16) > 0
    # an inference search holds every backward knob at its seed, and only those
    held = space.forward_only()
    assert all(held.params[k] == (space.seed[k],) for k in space.backward_knobs)
    assert all(held.params[k] == space.params[k] for k in space.params if k not in space.backward_knobs)
