"""The static policy: an honest candidate passes; each planted cheat is caught under its own rule."""
from __future__ import annotations

import textwrap

import pytest

from evaluators.static import Violation, check_candidate

HONEST = textwrap.dedent('''\
    import math

    import torch
    import triton
    import triton.language as tl


    @triton.jit
    def _kernel(X, Y, W, B, stride_x, stride_y, N, eps, BLOCK_N: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK_N)
        mask = cols < N
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / N
        xc = tl.where(mask, x - mean, 0.0)
        var = tl.sum(xc * xc, axis=0) / N
        rstd = tl.rsqrt(var + eps)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
        y = xc * rstd * w + b
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


    def layer_norm(x, weight, bias, eps):
        M, N = x.shape
        y = torch.empty_like(x)
        BLOCK_N = triton.next_power_of_2(N)
        _kernel[(M,)](x, y, weight, bias, x.stride(0), y.stride(0), N, eps, BLOCK_N=BLOCK_N)
        return y
''')


def rules(source: str, entry: str = "layer_norm") -> set[str]:
    return {v.rule for v in check_candidate(source, entry)}


def in_entry(*lines: str) -> str:
    """The honest candidate with lines planted just before the entry's `return y`."""
    planted = "".join(f"    {line}\n" for line in lines)
    assert "    return y\n" in HONEST
    return HONEST.replace("    return y\n", planted + "    return y\n")


def in_kernel(*lines: str) -> str:
    """The honest candidate with lines planted at the end of the kernel body."""
    anchor = "    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)\n"
    assert anchor in HONEST
    return HONEST.replace(anchor, anchor + "".join(f"    {line}\n" for line in lines))


def on_top(*lines: str) -> str:
    return "".join(f"{line}\n" for line in lines) + HONEST


def test_honest_candidate_passes() -> None:
    assert check_candidate(HONEST, "layer_norm") == []


# (source, the rule that must be among the violations)
CHEATS = {
    "import os": (on_top("import os"), "import"),
    "import subprocess": (on_top("import subprocess"), "import"),
    "from torch.nn import functional": (on_top("from torch.nn import functional as F"), "import"),
    "from torch import": (on_top("from torch import exp"), "import"),
    "relative import": (on_top("from . import helpers"), "import"),
    "import numpy": (on_top("import numpy as np"), "import"),
    "import inside a function": (in_entry("import ctypes"), "import"),
    "F.layer_norm import": (on_top("import torch.nn.functional as F").replace(
        "    return y\n", "    return F.layer_norm(x, (N,), weight, bias, eps)\n"), "import"),
    "F.layer_norm call": (on_top("import torch.nn.functional as F").replace(
        "    return y\n", "    return F.layer_norm(x, (N,), weight, bias, eps)\n"), "torch-math"),
    "torch.nn.functional.layer_norm": (in_entry("y = torch.nn.functional.layer_norm(x, (N,), weight, bias, eps)"),
                                       "torch-math"),
    "x.mean": (in_entry("mu = x.mean(-1)"), "torch-math"),
    "torch.exp": (in_entry("z = torch.exp(x)"), "torch-math"),
    "torch.matmul": (in_entry("z = torch.matmul(x, weight)"), "torch-math"),
    "copy_": (in_entry("ref = x", "y.copy_(ref)"), "torch-math"),
    "zero_": (in_entry("y.zero_()"), "torch-math"),
    "method on a fresh tensor": (in_entry("y = torch.empty_like(x).copy_(x)"), "torch-math"),
    "torch.Tensor.mean unbound": (in_entry("z = torch.Tensor.mean(x)"), "torch-math"),
    "torch aliased": (in_entry("t = torch", "z = t.exp(x)"), "torch-math"),
    "torch.compile": (in_entry("f = torch.compile(layer_norm)"), "torch-math"),
    "torch.ops": (in_entry("z = torch.ops.aten.layer_norm(x, (N,))"), "torch-math"),
    "exec": (in_entry('exec("y = x")'), "builtin"),
    "eval": (in_entry('z = eval("1 + 1")'), "builtin"),
    "__import__": (in_entry('z = __import__("os")'), "builtin"),
    "open": (in_entry('z = open("/etc/passwd").read()'), "builtin"),
    "getattr": (in_entry('f = getattr(torch, "exp")'), "builtin"),
    "__builtins__": (in_entry('z = __builtins__'), "builtin"),
    "get_type_hints": (on_top("import typing").replace("    return y\n",
                                                        "    typing.get_type_hints(layer_norm)\n    return y\n"),
                       "builtin"),
    "x.__class__": (in_entry("cls = x.__class__"), "dunder"),
    "frame walk": (in_entry("g = (i for i in [0])", "f = g.gi_frame.f_back"), "dunder"),
    "dunder string key": (in_entry('b = f["__builtins__"]'), "dunder"),
    "dunder method def": (on_top("class T(torch.Tensor):",
                                 "    def __torch_function__(cls, func, types, args=(), kwargs=None):",
                                 "        return 0"), "dunder"),
    "torch.cuda.Stream": (in_entry("s = torch.cuda.Stream()"), "torch-cuda"),
    "torch.cuda.synchronize": (in_entry("torch.cuda.synchronize()"), "torch-cuda"),
    "torch.cuda.empty_cache": (in_entry("torch.cuda.empty_cache()"), "torch-cuda"),
    "patch F.layer_norm": (on_top("def my_fn(*a):", "    return 0").replace(
        "    return y\n", "    torch.nn.functional.layer_norm = my_fn\n    return y\n"), "monkeypatch"),
    "patch tl.sum": (in_entry("tl.sum = max"), "monkeypatch"),
    "del torch.exp": (in_entry("del torch.exp"), "monkeypatch"),
    "augmented patch": (in_entry("math.pi += 1"), "monkeypatch"),
    "for-target patch": (in_entry("for triton.knobs.x in [0]:", "    pass"), "monkeypatch"),
    "rebinding math": (in_entry("math = x", "z = math.mean()"), "monkeypatch"),
    "module as a value": (in_entry("m = triton", "m.x = 1"), "module-value"),
    "kernel.fn": (in_entry("y = _kernel.fn(x, y, weight, bias, 0, 0, N, eps, BLOCK_N)"), "kernel-use"),
    "missing kernel": (HONEST.replace("@triton.jit\n", ""), "no-kernel-def"),
    "autotune without jit": (HONEST.replace("@triton.jit\n", "@triton.autotune(configs=[], key=['N'])\n"),
                             "no-kernel-def"),
    "missing entry": (HONEST.replace("def layer_norm(", "def layer_norm_impl("), "no-entry"),
    "entry only nested": (HONEST.replace("def layer_norm(", "def outer():\n    pass\n\n\ndef layer_norm_impl(")
                          + "\n\ndef wrap():\n    def layer_norm(x, weight, bias, eps):\n        return x\n",
                          "no-entry"),
}


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_planted_cheat_is_caught(name: str) -> None:
    source, rule = CHEATS[name]
    found = check_candidate(source, "layer_norm")
    assert rule in {v.rule for v in found}, (name, found)


def test_syntax_error_is_the_only_violation() -> None:
    source = HONEST.replace("def layer_norm(x, weight, bias, eps):", "def layer_norm(x, weight, bias, eps)")
    found = check_candidate(source + "\nimport os\nexec('1')\n", "layer_norm")
    assert len(found) == 1 and found[0].rule == "syntax"
    assert found[0].line == source.splitlines().index("def layer_norm(x, weight, bias, eps)") + 1
    assert found[0].detail.startswith(f"line {found[0].line}: ")


def test_null_bytes_are_a_syntax_violation() -> None:
    assert rules(HONEST + "\x00") == {"syntax"}


def test_violation_lines_and_details() -> None:
    source = in_entry("z = torch.nn.functional.layer_norm(x, (N,), weight, bias, eps)")
    line = source.splitlines().index("    z = torch.nn.functional.layer_norm(x, (N,), weight, bias, eps)") + 1
    assert check_candidate(source, "layer_norm") == [Violation(
        line, "torch-math", f"line {line}: torch.nn.functional.layer_norm is not on torch's allowlist "
                            "(allocate and describe only); the op's work must happen in Triton")]


def test_alias_resolves_in_detail() -> None:
    source = on_top("import torch.nn.functional as F").replace(
        "    return y\n", "    return F.gelu(x)\n")
    details = [v.detail for v in check_candidate(source, "layer_norm") if v.rule == "torch-math"]
    assert len(details) == 1 and "F.gelu (torch.nn.functional.gelu)" in details[0]


def test_every_violation_reported_sorted_and_deduplicated() -> None:
    source = on_top("import os").replace(
        "    return y\n", "    a = x.mean(); b = x.mean()\n    exec('1')\n    return y\n")
    found = check_candidate(source, "layer_norm")
    assert [v.rule for v in found] == ["import", "torch-math", "builtin"]
    assert [v.line for v in found] == sorted(v.line for v in found)
    assert found[0].line == 1


def test_no_kernel_and_no_entry_together() -> None:
    assert rules("import torch\n\ndef helper(x):\n    return x\n") == {"no-kernel-def", "no-entry"}


def test_entry_name_is_the_one_asked_for() -> None:
    assert rules(HONEST, entry="cross_entropy") == {"no-entry"}


# ---------------------------------------------------------------- what an honest candidate may do

def test_triton_and_math_work_inside_the_kernel_passes() -> None:
    source = in_kernel("e = tl.exp(x) + tl.max(x, axis=0)", "s = tl.sum(e, axis=0) * math.sqrt(2.0)",
                       "t = e.sum(axis=0) + e.max() + xc.to(tl.float16).exp()")
    assert check_candidate(source, "layer_norm") == []


def test_kernel_methods_only_pass_inside_a_kernel() -> None:
    # the same method call outside a kernel is torch math: the exemption is the kernel's, not the name's
    assert "torch-math" in rules(in_entry("s = y.sum()"))


def test_realistic_wrapper_with_autograd_autotune_and_main_passes() -> None:
    source = textwrap.dedent('''\
        from __future__ import annotations

        import typing
        from typing import Optional

        import torch
        import triton
        from triton import language as tl


        @triton.autotune(configs=[triton.Config({"BLOCK": 128}, num_warps=4)], key=["N"])
        @triton.jit(do_not_specialize=["eps"])
        def _fwd(X, Y, N, eps, BLOCK: tl.constexpr):
            cols = tl.arange(0, BLOCK)
            x = tl.load(X + cols, mask=cols < N, other=0.0)
            tl.store(Y + cols, x * tl.rsqrt(tl.sum(x * x, axis=0) / N + eps), mask=cols < N)


        @triton.jit
        def _bwd(DY, DX, N, BLOCK: tl.constexpr):
            cols = tl.arange(0, BLOCK)
            tl.store(DX + cols, tl.load(DY + cols, mask=cols < N), mask=cols < N)


        class _Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
                x = x.contiguous().view(-1, x.shape[-1])
                y = torch.empty((x.shape[0], x.shape[1]), dtype=x.dtype, device=x.device)
                ctx.save_for_backward(x)
                ctx.eps = eps
                ctx.small = torch.finfo(x.dtype).max > 1e5 and x.device.type == "cuda"
                sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
                _fwd[lambda meta: (min(sms, triton.cdiv(x.shape[1], meta["BLOCK"])),)](x, y, x.shape[1], eps)
                return y

            @staticmethod
            def backward(ctx, dy):
                (x,) = ctx.saved_tensors
                dx = torch.empty_like(x)
                _bwd[(1,)](dy, dx, x.shape[1], BLOCK=triton.next_power_of_2(x.shape[1]))
                return dx, None


        def layer_norm(x, weight, bias, eps: Optional[float] = None) -> typing.Any:
            with torch.no_grad():
                pass
            return _Fn.apply(x, 1e-5 if eps is None else eps)


        if __name__ == "__main__":
            print(layer_norm(torch.ones(2, 4, dtype=torch.float32), None, None, 1e-5))
    ''')
    assert check_candidate(source, "layer_norm") == []
