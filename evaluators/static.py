"""Static policy: an AST check of a candidate's source before any of it runs (DESIGN.md §3, §4 "static").

A candidate is untrusted. This module never imports or executes it: it parses the text and walks the
tree. The policy keeps a candidate to its contract (imports only torch, triton, triton.language, math,
typing; at least one @triton.jit kernel; the entry function) and closes the cheap escapes: builtins that
run unseen code or reach the interpreter, dunder and frame attributes, rebinding or patching imported
modules, and doing the op's work in torch instead of Triton (torch may allocate and describe, never compute).

Known gap, by design: operators on tensors outside kernels (x + y, x @ w, abs(x), sum(rows)) are allowed,
because the static types are unknown and wrappers compute grid sizes with the same operators. The dynamic
checks cover it: a Triton kernel must launch and the output must match, so a wrapper that computes the op
with operators must still launch a kernel that does nothing useful; a later issue may tighten this.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    line: int    # 1-based source line; 0 for whole-file findings ("no-kernel-def", "no-entry")
    rule: str    # slug: syntax, import, builtin, dunder, monkeypatch, module-value, kernel-use,
                 #       torch-math, torch-cuda, no-kernel-def, no-entry
    detail: str  # one human line, starting "line N: " when it has a line


# Names that run code the check never saw, reach frames/globals, or end the worker. `type` is here
# because type("T", (torch.Tensor,), {...}) builds a class from a string-keyed dict, around the dunder rule;
# the exception classes because raising or catching them fights the sandbox's own control flow.
_BUILTINS = frozenset({
    "exec", "eval", "compile", "__import__", "open", "globals", "locals", "vars", "getattr", "setattr",
    "delattr", "breakpoint", "input", "memoryview", "help", "exit", "quit", "__builtins__",
    "type", "SystemExit", "KeyboardInterrupt", "BaseException",
})

# Attributes that walk from any object to frames, code and globals without a dunder name
# (a generator's gi_frame.f_back.f_globals reaches the builtins dict, for one).
_INTERNAL_ATTRS = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
    "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "f_trace", "tb_frame", "tb_next",
    "co_code", "co_consts",
})

# torch may allocate and describe tensors; these chains (after "torch.") are all it may touch.
_TORCH_ALLOWED = frozenset({
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full",
    "full_like", "arange", "tensor", "Tensor", "Size", "device", "dtype", "finfo", "iinfo", "is_tensor",
    "is_floating_point", "autograd.Function", "no_grad", "cuda.get_device_properties",
    "cuda.current_device", "cuda.device_count", "cuda.is_available",
})
# dtypes only describe, so attributes after them are fine (torch.bfloat16.itemsize); torch.Tensor is
# not treated so, since torch.Tensor.mean(x) would compute.
_TORCH_DTYPES = frozenset({
    "float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8", "int16", "int32",
    "int64", "uint8", "bool", "long", "int",
})
# heads under torch that reach streams, events, graphs or the allocator: reported as torch-cuda
_TORCH_CUDA_HEADS = frozenset({"cuda", "Stream", "Event", "accelerator"})

# Tensor methods that compute. Called on anything that is not a module (torch chains go through the
# allowlist; tl/triton/math functions are the kernel's own work) and outside kernels, they are torch math.
# The list cannot be complete (torch has hundreds of methods): it holds the ones a cheat reaches for.
_MATH_METHODS = frozenset({
    "sum", "mean", "var", "std", "exp", "exp2", "log", "log1p", "log_softmax", "softmax", "sqrt", "rsqrt",
    "pow", "matmul", "mm", "bmm", "addmm", "einsum", "dot", "mul", "mul_", "add", "add_", "sub", "sub_",
    "div", "div_", "clamp", "max", "min", "amax", "amin", "argmax", "norm", "layer_norm", "gelu", "tanh",
    "sigmoid", "relu", "cumsum", "logsumexp", "copy_", "fill_", "zero_", "normal_", "uniform_", "float",
    "half", "bfloat16", "double", "to", "type", "masked_fill", "where", "gather", "scatter",
    "index_select", "sort", "topk", "abs", "neg", "erf", "square", "outer", "baddbmm", "cross_entropy",
    "nll_loss", "clone", "item", "tolist", "numpy", "cpu", "cuda",
    # beyond the brief's list: in-place twins and near neighbours of the above, and set_ (re-points storage)
    "set_", "exp_", "sqrt_", "clamp_", "masked_fill_", "scatter_", "scatter_add", "scatter_add_",
    "index_add", "index_add_", "index_copy", "index_copy_", "index_put", "index_put_", "masked_scatter",
    "masked_scatter_", "put_", "addcmul", "addcdiv", "lerp", "prod", "cumprod", "reciprocal", "var_mean",
    "std_mean", "nansum", "nanmean", "median", "maximum", "minimum", "linear", "silu", "softplus",
    "argmin", "mv", "addmv", "tensordot", "rsub", "expm1", "log2", "logaddexp", "apply_", "map_",
})
# read as data, not called, these names describe: torch.finfo(dt).max, x.device.type
_DESCRIPTIVE_ATTRS = frozenset({"max", "min", "type"})

# typing helpers that evaluate strings as code (annotations are text under `from __future__ import
# annotations`); private typing names likewise.
_TYPING_EVAL = frozenset({"get_type_hints", "ForwardRef", "evaluate_forward_ref"})

_STORE = (ast.Store, ast.Del)


def _is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _dotted(node: ast.expr) -> list[str] | None:
    """["torch", "nn", "functional", "gelu"] for a pure Name.attr.attr chain; None if a call etc. intervenes."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _base_name(node: ast.expr) -> ast.Name | None:
    """The Name an assignment target hangs from, through attributes and subscripts (torch.x[0].y -> torch)."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node if isinstance(node, ast.Name) else None


class _Checker:
    def __init__(self, tree: ast.Module, entry: str) -> None:
        self.tree = tree
        self.entry = entry
        self.nodes: list[ast.AST] = list(ast.walk(tree))  # iterative: no recursion on deep sources
        self.found: set[Violation] = set()
        self.aliases: dict[str, str] = {}   # local name -> dotted path it was imported as
        self.modules: set[str] = set()      # local names bound to a module (not to a from-imported object)
        self.kernels: set[str] = set()      # names of @triton.jit functions
        self.in_kernel: set[int] = set()    # ids of nodes inside @triton.jit bodies
        self.chain_inner: set[int] = set()  # ids of nodes that are the .value of an Attribute
        self.called: set[int] = set()       # ids of nodes that are a Call's func
        self.launched: set[int] = set()     # ids of nodes that are a Subscript's value (kernel[grid])

    def flag(self, node: ast.AST | None, rule: str, text: str) -> None:
        line = getattr(node, "lineno", 0) if node is not None else 0
        self.found.add(Violation(line, rule, f"line {line}: {text}" if line else text))

    def run(self) -> list[Violation]:
        # imports first, anywhere in the file: every later rule resolves names through the aliases
        for node in self.nodes:
            if isinstance(node, ast.Import):
                self._import(node)
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node)
        for node in self.nodes:
            if isinstance(node, ast.Attribute):
                self.chain_inner.add(id(node.value))
            elif isinstance(node, ast.Call):
                self.called.add(id(node.func))
            elif isinstance(node, ast.Subscript):
                self.launched.add(id(node.value))
        self._find_kernels()
        for node in self.nodes:
            self._visit(node)
        if not self.kernels:
            self.flag(None, "no-kernel-def", "no function decorated with @triton.jit; the op's work must "
                                             "happen in a Triton kernel")
        if not any(isinstance(s, ast.FunctionDef) and s.name == self.entry for s in self.tree.body):
            self.flag(None, "no-entry", f"no top-level def {self.entry}(...), the op's entry function")
        return sorted(self.found, key=lambda v: (v.line, v.rule, v.detail))

    # ---------------------------------------------------------------- imports

    def _bind(self, node: ast.AST, name: str, path: str, module: bool) -> None:
        # one name, one meaning: `import math` then `import torch as math` would disguise torch calls
        if self.aliases.get(name, path) != path:
            self.flag(node, "import", f"{name} is imported twice, as {self.aliases[name]} and as {path}")
        self.aliases[name] = path
        if module:
            self.modules.add(name)

    def _import(self, node: ast.Import) -> None:
        for a in node.names:
            text = f"import {a.name}" + (f" as {a.asname}" if a.asname else "")
            if a.name not in ("torch", "triton", "triton.language", "math", "typing"):
                self.flag(node, "import", f"{text} is not allowed; a candidate imports only torch, triton, "
                                          "triton.language, math and typing")
            # still bind it, so that F.layer_norm after `import torch.nn.functional as F` resolves
            if a.asname:
                self._bind(node, a.asname, a.name, True)
            else:
                head = a.name.split(".")[0]
                self._bind(node, head, head, True)

    def _import_from(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        for a in node.names:
            local = a.asname or a.name
            text = f"from {'.' * node.level}{mod} import {a.name}" + (f" as {a.asname}" if a.asname else "")
            ok = node.level == 0 and a.name != "*" and (
                mod == "typing"
                or (mod == "__future__" and a.name == "annotations")
                or (mod == "triton" and a.name == "language"))
            if not ok:
                why = "star imports hide what they bind" if a.name == "*" else \
                      "a candidate imports only torch, triton, triton.language, math and typing"
                self.flag(node, "import", f"{text} is not allowed; {why}")
            if node.level == 0 and a.name != "*" and mod != "__future__":
                self._bind(node, local, f"{mod}.{a.name}", mod == "triton" and a.name == "language")

    # ---------------------------------------------------------------- kernels

    def _is_jit(self, dec: ast.expr) -> bool:
        """@triton.jit, @triton.jit(...), @tr.jit with `import triton as tr`."""
        parts = _dotted(dec.func if isinstance(dec, ast.Call) else dec)
        path = self._resolve(parts) if parts else None
        return path is not None and path.split(".")[0] == "triton" and parts[-1] == "jit"

    def _find_kernels(self) -> None:
        # Only a function that is really jitted gets the kernel exemption; a bare @triton.autotune or
        # @triton.heuristics on a plain function never compiles, so its body is checked like the wrapper's.
        for node in self.nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                    self._is_jit(d) for d in node.decorator_list):
                self.kernels.add(node.name)
                for stmt in node.body:
                    self.in_kernel.update(id(n) for n in ast.walk(stmt))

    # ---------------------------------------------------------------- per node

    def _resolve(self, parts: list[str]) -> str | None:
        if parts[0] not in self.aliases:
            return None
        return ".".join([self.aliases[parts[0]], *parts[1:]])

    def _visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name):
            self._name(node)
        elif isinstance(node, ast.Attribute):
            self._attribute(node)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, _STORE):
            self._monkeypatch(node)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            # def __torch_function__ / __eq__ / __del__ would let an output object lie to the checks
            if _is_dunder(node.name):
                self.flag(node, "dunder", f"defining {node.name} is forbidden (special methods can intercept "
                                          "the evaluator's own operations)")
            self._rebinding(node, node.name)
        elif isinstance(node, ast.arg):
            self._rebinding(node, node.arg)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            self._rebinding(node, node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            self._rebinding(node, node.rest)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # d["__builtins__"] reaches what the name rule forbids; "__main__" is the one dunder string needed
            if _is_dunder(node.value) and node.value != "__main__":
                self.flag(node, "dunder", f"the string {node.value!r} names an interpreter internal")

    def _rebinding(self, node: ast.AST, name: str) -> None:
        # rebinding an import (math = x, def tl(...), for torch in ...) would make later calls through
        # that name look like module functions and slip past the method and monkeypatch rules
        if name in self.aliases:
            self.flag(node, "monkeypatch", f"rebinding the imported name {name} is forbidden")

    def _name(self, node: ast.Name) -> None:
        if node.id == "__builtins__" or (node.id in _BUILTINS and not isinstance(node.ctx, ast.Store)):
            self.flag(node, "builtin", f"{node.id} is forbidden (it can run unseen code, reach interpreter "
                                       "internals or end the worker)")
        elif _is_dunder(node.id) and node.id != "__name__":
            self.flag(node, "dunder", f"the name {node.id} is forbidden (interpreter internals)")
        if isinstance(node.ctx, _STORE):
            self._rebinding(node, node.id)
            return
        if id(node) not in self.chain_inner:
            self._chain(node, [node.id])
        # a kernel may only be launched (kernel[grid](...)); kernel.fn(...) would run its body as plain
        # Python, where the kernel exemption lets it compute in torch
        if node.id in self.kernels and id(node) not in self.in_kernel and id(node) not in self.launched:
            self.flag(node, "kernel-use", f"the kernel {node.id} is used other than as {node.id}[grid](...)")

    def _attribute(self, node: ast.Attribute) -> None:
        if _is_dunder(node.attr):
            self.flag(node, "dunder", f"attribute {node.attr} is forbidden (dunder access reaches interpreter "
                                      "internals)")
        elif node.attr in _INTERNAL_ATTRS:
            self.flag(node, "dunder", f"attribute {node.attr} is forbidden (it reaches frames or code)")
        if isinstance(node.ctx, _STORE):
            self._monkeypatch(node)
            return
        parts = _dotted(node)
        if parts and id(node) not in self.chain_inner:
            self._chain(node, parts)
        if node.attr in _MATH_METHODS and id(node) not in self.in_kernel:
            receiver = _dotted(node.value)
            if receiver and receiver[0] in self.aliases:
                return  # a module function: torch via the allowlist, tl/triton/math are the kernel's work
            if id(node) in self.called:
                self.flag(node, "torch-math", f".{node.attr}() computes in torch; the op's work must happen "
                                              "in Triton")
            elif node.attr not in _DESCRIPTIVE_ATTRS:
                self.flag(node, "torch-math", f".{node.attr} (a computing method, taken as a value) is "
                                              "forbidden outside kernels")

    def _monkeypatch(self, target: ast.Attribute | ast.Subscript) -> None:
        # Writes to local objects (ctx.eps = eps, y[0] = ...) are fine; writes that hang from an imported
        # name change the module for everyone in the process, the evaluator and the reference included.
        base = _base_name(target)
        if base is None or base.id not in self.aliases:
            return
        parts = _dotted(target)
        shown = ".".join(parts) if parts else f"{base.id}[...]"
        verb = "deleting" if isinstance(target.ctx, ast.Del) else "assigning to"
        self.flag(target, "monkeypatch", f"{verb} {shown} changes the imported module "
                                         f"{self.aliases[base.id]} (monkeypatching)")

    def _chain(self, node: ast.expr, parts: list[str]) -> None:
        """Judge a whole Name.attr... chain once, at its outermost node, by the module it starts at."""
        path = self._resolve(parts)
        if path is None:
            return
        written = ".".join(parts)
        shown = written if written == path else f"{written} ({path})"
        top, _, rest = path.partition(".")
        if top == "torch":
            if path == "torch":
                self.flag(node, "torch-math", f"the torch module used as a value ({written}) escapes the "
                                              "allowlist check")
                return
            head = rest.split(".")[0]
            if rest in _TORCH_ALLOWED or head in _TORCH_DTYPES:
                return
            if head in _TORCH_CUDA_HEADS:
                self.flag(node, "torch-cuda", f"{shown} reaches CUDA streams, events, graphs or the allocator; "
                                              "the evaluator owns them")
            else:
                self.flag(node, "torch-math", f"{shown} is not on torch's allowlist (allocate and describe "
                                              "only); the op's work must happen in Triton")
        elif top == "typing":
            last = path.split(".")[-1]
            if last in _TYPING_EVAL or last.startswith("_"):
                self.flag(node, "builtin", f"{shown} evaluates strings as code")
        elif len(parts) == 1 and parts[0] in self.modules:
            # passing or binding a module (m = triton) would let m.x = ... escape the monkeypatch rule
            self.flag(node, "module-value", f"the module {shown} used as a value; use it only as {written}.name")


def check_candidate(source: str, entry: str) -> list[Violation]:
    """All policy violations of a candidate's source, sorted by line; an empty list means it passes."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        line = e.lineno or 0
        return [Violation(line, "syntax", f"line {line}: {e.msg}")]
    except (ValueError, RecursionError, MemoryError) as e:
        # null bytes (ValueError on 3.11) or nesting deep enough to exhaust the parser
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return [Violation(0, "syntax", f"unparseable source ({why})")]
    return _Checker(tree, entry).run()
