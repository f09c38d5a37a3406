"""The static policy: an honest candidate and every source the project renders or ships pass; each planted cheat
and each escape through the allowed modules is caught under its own rule."""
from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest

from evaluators import static
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
    # typing offers annotation names only; its helpers are chains beyond the allow-list
    "get_type_hints": (on_top("import typing").replace("    return y\n",
                                                        "    typing.get_type_hints(layer_norm)\n    return y\n"),
                       "module-attr"),
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


# ---------------------------------------------------------------- the allow-list: escapes the deny-list let through

def autograd(*body: str, call: str = "y = _Fn.apply(y)") -> str:
    """The honest candidate with a torch.autograd.Function holding `body`, applied in the entry."""
    cls = "\n".join(["class _Fn(torch.autograd.Function):", *(f"    {line}" for line in body)])
    return in_entry(call).replace("\n\ndef layer_norm(", f"\n\n{cls}\n\n\ndef layer_norm(")


FORWARD = ("@staticmethod", "def forward(ctx, x):")

# (source, the rule that must be among the violations)
ESCAPES = {
    # 1. chains through allowed modules to the rest of the interpreter
    "typing.sys.modules": (on_top("import typing").replace(
        "    return y\n", '    typing.sys.modules["os"].system("true")\n    return y\n'), "module-attr"),
    "typing.operator.methodcaller": (on_top("import typing").replace(
        "    return y\n", '    f = typing.operator.methodcaller("mean")\n    return y\n'), "module-attr"),
    "from typing import sys": (on_top("from typing import sys"), "import"),
    "from typing import operator": (on_top("from typing import operator as op"), "import"),
    "triton.runtime.cache.os": (in_entry('triton.runtime.cache.os.system("true")'), "module-attr"),
    "triton.compiler": (in_entry("c = triton.compiler.compile"), "module-attr"),
    "triton.knobs": (in_entry("k = triton.knobs.cache.dir"), "module-attr"),
    "triton.runtime.driver": (in_entry("d = triton.runtime.driver.active"), "module-attr"),
    "tl.core.builtins": (in_kernel("b = tl.core.builtins"), "module-attr"),
    "tl.math.core": (in_kernel("b = tl.math.core"), "module-attr"),
    "tl.extra.pkgutil": (in_kernel("b = tl.extra.pkgutil"), "module-attr"),
    "tl.math as a value": (in_kernel("b = tl.math"), "module-attr"),
    "torch.ctypes": (in_entry("c = torch.ctypes.CDLL"), "torch-math"),
    "torch.os": (in_entry('torch.os.system("true")'), "torch-math"),
    "torch._C": (in_entry("torch._C._set_grad_enabled(False)"), "torch-math"),
    "torch.ops.aten": (in_entry("z = torch.ops.aten.add(x, x)"), "torch-math"),
    "math.__loader__": (in_entry("z = math.__loader__"), "dunder"),
    "math chain": (in_entry("z = math.pi.hex"), "module-attr"),
    "module bound to a name": (in_entry("m = triton", "d = m.runtime.driver"), "module-value"),
    "module passed on": (on_top("def helper(m):", "    return m").replace(
        "    return y\n", "    helper(triton)\n    return y\n"), "module-value"),
    "module in a list": (in_entry("m = [tl][0]"), "module-value"),
    "triton.language as a value": (in_entry("m = triton.language"), "module-value"),
    # 2. classes
    "Tensor subclass": (on_top("import torch", "class T(torch.Tensor):", "    pass"), "class"),
    "plain class": (on_top("class T:", "    pass"), "class"),
    "metaclass": (autograd(*FORWARD, "    return x").replace(
        "class _Fn(torch.autograd.Function):", "class _Fn(torch.autograd.Function, metaclass=type):"), "class"),
    "class attribute": (autograd("cache = {}", *FORWARD, "    return x"), "class"),
    "method without staticmethod": (autograd("def forward(ctx, x):", "    return x"), "class"),
    "other method": (autograd("@staticmethod", "def helper(x):", "    return x"), "class"),
    "class decorator": (autograd(*FORWARD, "    return x").replace(
        "class _Fn(", "@staticmethod\nclass _Fn("), "decorator"),
    "class used as a value": (autograd(*FORWARD, "    return x", call="f = _Fn"), "class"),
    "forward called directly": (autograd(*FORWARD, "    return x", call="y = _Fn.forward(None, y)"), "class"),
    "ctx internals": (autograd(*FORWARD, "    n = ctx.next_functions", "    return x"), "class"),
    "ctx hook": (autograd(*FORWARD, "    ctx.register_hook(print)", "    return x"), "class"),
    "ctx field": (autograd(*FORWARD, "    ctx.dirty_tensors = (x,)", "    return x"), "class"),
    "ctx rebound": (autograd(*FORWARD, "    ctx = x", "    return x"), "class"),
    "other decorator": (on_top("def deco(f):", "    return f").replace("def layer_norm(", "@deco\ndef layer_norm("),
                        "decorator"),
    "decorator lambda": (HONEST.replace("def layer_norm(", "@(lambda f: f)\ndef layer_norm("), "decorator"),
    "triton.jit called": (in_entry("k = triton.jit(layer_norm)"), "decorator"),
    # 3. state that outlives a call
    "module-level list": (on_top("_SEEN = []"), "state"),
    "module-level tensor": (on_top("import torch", "_BUF = torch.empty(1)"), "state"),
    "module-level code": (on_top("for _i in range(2):", "    pass"), "state"),
    "module-level walrus": (on_top("(_SEEN := [])"), "state"),
    "dict of constants mutated": (on_top("_P = {'a': 1}").replace("    return y\n", "    _P['a'] = 2\n    return y\n"),
                                  "state"),
    "dict of constants method": (on_top("_P = {'a': 1}").replace(
        "    return y\n", "    _P.update(a=2)\n    return y\n"), "state"),
    "dict of constants passed on": (on_top("_P = {'a': 1}").replace(
        "    return y\n", "    f = _P\n    return y\n"), "state"),
    "global": (in_entry("global _SEEN"), "state"),
    "nonlocal": (in_entry("def inner():", "    nonlocal y", "    y = 0"), "state"),
    "mutable default": (HONEST.replace("eps):\n", "eps, seen=[]):\n"), "state"),
    "call as default": (HONEST.replace("eps):\n", "eps, seen=torch.empty(1)):\n"), "state"),
    "dict as default": (on_top("_P = {'a': 1}").replace("eps):\n", "eps, p=_P):\n"), "state"),
    "lambda default": (in_entry("f = lambda seen=[]: seen"), "state"),
    "function attribute": (in_entry("layer_norm.cache = y"), "state"),
    "function attribute read": (in_entry("c = layer_norm.cache"), "state"),
    "kernel attribute": (in_entry("_kernel.cache = y"), "state"),
    "tensor attribute": (in_entry("y.seen = x"), "state"),
    "ctx attribute outside autograd": (in_entry("ctx = y", "ctx.seen = x"), "state"),
    # 4. torch or Python doing the op's work
    "torch in a kernel": (in_kernel("z = torch.exp(x)"), "torch-math"),
    "torch module in a kernel": (in_kernel("z = torch.nn.functional.gelu(x)"), "torch-math"),
    "tolist": (in_entry("v = x.tolist()"), "torch-math"),
    "item": (in_entry("v = x.item()"), "torch-math"),
    "to": (in_entry("v = x.to(torch.float32)"), "torch-math"),
    "bound method kept": (in_entry("f = x.max", "v = f()"), "torch-math"),
    "max called": (in_entry("v = x.max()"), "torch-math"),
    "str method": (in_entry("v = '{0}'.format(x)"), "torch-math"),
    "computed index": (in_entry("v = weight[x]"), "torch-math"),
    "subscript write": (in_entry("y[0] = 1.0"), "torch-math"),
    "torch.arange": (in_entry("i = torch.arange(N)"), "torch-math"),
    "torch.Tensor as a value": (in_entry("T = torch.Tensor"), "torch-math"),
    "torch.cuda.stream()": (in_entry("s = torch.cuda.stream(None)"), "torch-cuda"),
    "torch.cuda.Event": (in_entry("e = torch.cuda.Event()"), "torch-cuda"),
    "torch.cuda.graphs": (in_entry("g = torch.cuda.CUDAGraph()"), "torch-cuda"),
    "torch.cuda.set_stream": (in_entry("torch.cuda.set_stream(None)"), "torch-cuda"),
    "torch.cuda memory": (in_entry("m = torch.cuda.memory_allocated()"), "torch-cuda"),
    "iter": (in_entry("v = iter(x)"), "builtin"),
    "list": (in_entry("v = list(x)"), "builtin"),
    "sum": (in_entry("v = sum(x)"), "builtin"),
    "map": (in_entry("v = map(abs, x)"), "builtin"),
    "zip": (in_entry("v = zip(x, y)"), "builtin"),
    "type": (in_entry("v = type(x)"), "builtin"),
    "max over a tensor": (in_entry("v = max(x)"), "loop"),
    "tuple of a tensor": (in_entry("v = tuple(x)"), "loop"),
    "math.fsum of a tensor": (in_entry("v = math.fsum(x)"), "loop"),
    "for over a tensor": (in_entry("for row in x:", "    pass"), "loop"),
    "comprehension over a tensor": (in_entry("v = [row for row in x]"), "loop"),
    "tl outside a kernel": (in_entry("v = tl.sum(x, 0)"), "kernel-use"),
    "kernel called directly": (in_entry("_kernel(x, y, weight, bias, 0, 0, N, eps, 1)"), "kernel-use"),
    "plain function called in a kernel": (on_top("def helper(v):", "    return v").replace(
        "    tl.store(Y", "    x = helper(x)\n    tl.store(Y"), "kernel-use"),
    "constexpr attribute in a kernel": (in_kernel("v = BLOCK_N.value"), "kernel-use"),
    "constexpr called in a kernel": (in_kernel("v = BLOCK_N(x)"), "kernel-use"),
    "subscript write in a kernel": (in_kernel("x[0] = 1.0"), "kernel-use"),
    "interpreter handle in a kernel": (in_kernel("m = x.handle.data.mean()"), "kernel-use"),
    "triton outside tl in a kernel": (in_kernel("v = triton.cdiv(N, 2)"), "kernel-use"),
    "entry is a kernel": (HONEST.replace("def layer_norm(", "@triton.jit\ndef layer_norm("), "no-entry"),
    # 5. the old rules, still in force
    "undefined name": (in_entry("v = helper"), "name"),
    "__file__": (in_entry("v = __file__"), "dunder"),
    "dict": (in_entry("v = dict(a=1)"), "builtin"),
    "dunder keyword": (in_entry("print(__class__=1)"), "dunder"),
    "import triton.language.core": (on_top("import triton.language.core as core"), "import"),
    "from triton.language import core": (on_top("from triton.language import core"), "import"),
    "annotation call": (HONEST.replace("eps):\n", "eps: print('x')):\n"), "annotation"),
    "annotation local": (HONEST.replace("(x, weight, bias, eps):", "(x, weight, bias, eps: layer_norm):"),
                         "annotation"),
    "yield": (in_entry("yield y"), "construct"),
    "async def": (on_top("async def helper():", "    pass"), "construct"),
    "bare except": (in_entry("try:", "    pass", "except:", "    pass"), "construct"),
    "walrus rebinding tl": (in_entry("(tl := x)"), "monkeypatch"),
    "comprehension rebinding torch": (in_entry("v = [torch for torch in (1,)]"), "monkeypatch"),
    "def bound twice": (HONEST + "\n\ndef layer_norm(x, weight, bias, eps):\n    return x\n", "monkeypatch"),
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_through_the_allow_list_is_caught(name: str) -> None:
    source, rule = ESCAPES[name]
    found = check_candidate(source, "layer_norm")
    assert rule in {v.rule for v in found}, (name, found)


def test_realistic_autograd_function_passes() -> None:
    source = autograd(
        "@staticmethod",
        "def forward(ctx, x, w, b, eps):",
        "    y = torch.empty_like(x)",
        "    M, N = x.shape",
        "    _kernel[(M,)](x, y, w, b, x.stride(0), y.stride(0), N, eps, BLOCK_N=triton.next_power_of_2(N))",
        "    ctx.save_for_backward(x, w)",
        "    ctx.eps = eps",
        "    ctx.mark_non_differentiable(b)",
        "    return y",
        "",
        "@staticmethod",
        "def backward(ctx, dy):",
        "    x, w = ctx.saved_tensors",
        "    dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None",
        "    for i, needed in enumerate(ctx.needs_input_grad):",
        "        pass",
        "    return dx, None, None, None",
        call="y = _Fn.apply(x, weight, bias, eps)")
    assert check_candidate(source, "layer_norm") == []


def test_description_and_allocation_pass() -> None:
    source = on_top("from __future__ import annotations", "from typing import Optional",
                    "_DTYPES = (torch.float16, torch.bfloat16, torch.float32)", "BLOCK = tl.constexpr(64)",
                    "PARAMS = {'NUM_WARPS': 4, 'SHAPE': (1, 2), 'EVICTION': ''}").replace(
        "def layer_norm(x, weight, bias, eps):",
        "def layer_norm(x: torch.Tensor, weight, bias, eps: Optional[float] = 1e-5, dt=torch.float32) -> torch.Tensor:",
    ).replace("    return y\n", textwrap.indent(textwrap.dedent('''\
        assert isinstance(x, torch.Tensor) and x.dtype in _DTYPES and x.dim() == 2 and x.ndim == 2
        big = torch.finfo(x.dtype).max > 1e5 and x.device.type == "cuda" and x.device.index is None
        sms = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
        hopper = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
        z = torch.zeros((M, N), dtype=torch.float32, device=x.device)
        w = torch.empty_strided((M, N), (N, 1), dtype=x.dtype, device=x.device).view(-1).reshape(M, N)
        aligned = x.data_ptr() % 16 == 0 and all(s % 16 == 0 for s in (x.stride(0), N)) and x.is_contiguous()
        for d in range(x.dim()):
            pass
        for i, s in enumerate(x.shape):
            pass
        numel = math.prod(x.shape) + math.prod((M, N))
        grid = (min(sms * PARAMS["NUM_WARPS"], triton.cdiv(M, 2)), max(1, M // 2), abs(int(float(N))))
        if x.stride(1) != 1 or tuple(x.shape) != (M, N):
            raise ValueError(f"wants a row-major [M, N] x, got {tuple(x.shape)} {x.dtype}")
        print(f"{M}x{N} on {sms} SMs", big, hopper, aligned, grid, z.shape, w.stride())
        return y
    '''), "    "))
    assert check_candidate(source, "layer_norm") == []


def test_bom_is_no_syntax_error() -> None:
    assert check_candidate("\ufeff" + HONEST, "layer_norm") == []


def test_null_bytes_give_a_clean_syntax_violation() -> None:
    for source in ("\x00" + HONEST, HONEST.replace("return y", "return y\x00"), "\ufeff\x00"):
        found = check_candidate(source, "layer_norm")
        assert [v.rule for v in found] == ["syntax"], found


@pytest.mark.parametrize("cookie", ["# -*- coding: utf-7 -*-", "# vim: set fileencoding=latin-1 :",
                                    "#!/usr/bin/env python\n# coding=rot13", "#\x0c\n# coding: utf-7"])
def test_encoding_declaration_other_than_utf8_is_refused(cookie: str) -> None:
    # the importer decodes by the declaration (utf-7 turns "+AAo-" in a comment into a newline, i.e. live
    # code), while the judge checked the text as UTF-8
    assert [v.rule for v in check_candidate(cookie + "\n" + HONEST, "layer_norm")] == ["encoding"]
    assert check_candidate("# -*- coding: utf-8 -*-\n" + HONEST, "layer_norm") == []


def test_deep_nesting_is_a_violation_not_a_crash() -> None:
    for source in (HONEST + "z = " + "+".join(["1"] * 20000) + "\n", HONEST + "z = " + "(" * 300 + ")" * 300 + "\n",
                   in_entry("v = " + "-" * 5000 + "1")):
        found = check_candidate(source, "layer_norm")
        assert found and {v.rule for v in found} <= {"syntax"}, found[:3]


# ---------------------------------------------------------------- every source the project renders or ships

PROJECT = Path(__file__).resolve().parent.parent


def shipped_sources() -> list[tuple[str, str, str]]:
    """(label, op entry, source) for every op's seed point and 30 random points, and every promoted kernel."""
    from kernels import OPS

    out = []
    for name, spec in sorted(OPS.items()):
        space = spec.template
        points = [space.seed] + [space.sample(random.Random(k)) for k in range(30)]
        for k, point in enumerate(points):
            out.append((f"{name}-{k}", spec.entry, space.render(space.validate(space.normalize(point)))))
    for path in sorted(PROJECT.glob("memory/promoted/**/kernel.py")):
        op = path.relative_to(PROJECT / "memory" / "promoted").parts[0]
        out.append((str(path.relative_to(PROJECT)), OPS[op].entry, path.read_text()))
    return out


def test_every_rendered_and_promoted_source_passes() -> None:
    sources = shipped_sources()  # memory/promoted/**: the history/ folders too
    failed = {label: [v.detail for v in check_candidate(source, entry)][:3] for label, entry, source in sources}
    assert {label: found for label, found in failed.items() if found} == {}


CHEAT_DIR = PROJECT / "tests" / "cheats"
# cheats whose failure class is decided by the dynamic checks: the static policy must let them through
DYNAMIC_CHEATS = ("honest", "zeros", "mutates_input", "no_launch", "half_rows", "returns_input", "wrong_dtype",
                  "raises", "bad_kernel", "out_of_memory", "segfaults", "makes_nan", "late_compile_error",
                  "hangs", "kernel_spins", "prints", "gpu_illegal_address")


@pytest.mark.parametrize("name", DYNAMIC_CHEATS)
def test_cheats_for_the_dynamic_checks_pass_the_static_policy(name: str) -> None:
    assert check_candidate((CHEAT_DIR / f"{name}.py").read_text(), "layer_norm") == []


@pytest.mark.parametrize("name, rules", [("torch_layer_norm", {"torch-math"}), ("torch_math", {"torch-math"}),
                                         ("caches", {"state"}), ("flaky", {"state"}),
                                         ("gpu_replays_cache", {"state"}), ("crash_on_import", {"import"})])
def test_planted_cheat_files_are_flagged(name: str, rules: set[str]) -> None:
    # caches, flaky and gpu_replays_cache keep state in module-level containers: refused before they run
    found = {v.rule for v in check_candidate((CHEAT_DIR / f"{name}.py").read_text(), "layer_norm")}
    assert rules <= found, found


# ---------------------------------------------------------------- the tables against the installed libraries

def test_triton_language_modules_are_all_known() -> None:
    import types

    import triton.language as tl
    import triton.language.extra.cuda.libdevice as libdevice

    for namespace in (tl, tl.math, libdevice):
        modules = {n for n in dir(namespace) if isinstance(getattr(namespace, n), types.ModuleType)}
        assert modules <= static._TL_MODULES, (namespace.__name__, modules - static._TL_MODULES)


def test_kernel_attributes_are_triton_api() -> None:
    import triton.language as tl

    fields = {"shape", "dtype", "type", "numel", "element_ty", "value", "primitive_bitwidth", "itemsize",
              "int_bitwidth", "fp_mantissa_width", "strides", "name"}  # set in __init__, so not in dir()
    api = set().union(*(dir(cls) for cls in (tl.tensor, tl.dtype, tl.pointer_type, tl.block_type,
                                               tl.tensor_descriptor, tl.constexpr)))
    assert static._KERNEL_ATTRS - fields <= api, static._KERNEL_ATTRS - fields - api
    assert "handle" not in static._KERNEL_ATTRS


def test_read_only_attributes_are_no_tensor_methods() -> None:
    import inspect

    import torch

    for name in static._READ_ATTRS:
        assert not inspect.isroutine(getattr(torch.Tensor, name, None)), name
    for name in static._METHODS:
        assert inspect.isroutine(getattr(torch.Tensor, name)), name


def test_kernel_may_use_tl_math_libdevice_and_constants() -> None:
    source = on_top("SCALE = 0.5").replace(
        "    tl.store(Y + row", "    x = tl.math.exp2(x) + tl.extra.cuda.libdevice.tanh(x) * SCALE * math.pi\n"
                               "    for i in tl.static_range(2):\n        x = tl.maximum(x, 0.0)\n"
                               "    tl.store(Y + row")
    assert check_candidate(source, "layer_norm") == []


def test_baked_knobs_pass_on_only_as_a_fresh_copy() -> None:
    """A rendered differentiable candidate hands its knobs to its autograd Function as {**PARAMS}: a new dict
    each call. The module-level dict itself, passed on, could be mutated into state across calls (by a
    method call the policy would have to follow through every callee)."""
    body = ("@staticmethod", "def forward(ctx, x, params):", "    ctx.n = params['N']", "    return x")
    top = "PARAMS = {'N': 1}"
    copied = autograd(*body, call="y = _Fn.apply(y, {**PARAMS})").replace("\n\nclass _Fn(", f"\n\n{top}\n\nclass _Fn(")
    assert check_candidate(copied, "layer_norm") == []
    shared = autograd(*body, call="y = _Fn.apply(y, PARAMS)").replace("\n\nclass _Fn(", f"\n\n{top}\n\nclass _Fn(")
    assert "state" in rules(shared)
    # a copy of anything else is no exemption: a dict display still checks what it unpacks
    other = autograd(*body, call="y = _Fn.apply(y, {**typing.sys.modules})").replace(
        "\n\nclass _Fn(", f"\n\n{top}\n\nclass _Fn(")
    assert check_candidate(other, "layer_norm") != []
