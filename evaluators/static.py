"""Static policy: an AST check of a candidate's source before any of it runs (DESIGN.md §3, §4 "static").

A candidate is untrusted. This module never imports or executes it: it parses the text and walks the
tree. It is an allow-list: every import, name, attribute chain, builtin, decorator, class and module-level
statement must be one the tables below name, and everything else is refused. The tables hold a candidate
to its contract: torch allocates and describes, Triton computes, nothing keeps state between calls.

Known gaps, by design: the static types are unknown, so operators on values outside kernels (x + y,
x @ w, abs(x), max(a, b)) and scalar conversions (float(t), int(t), `if t:`) are allowed, because
wrappers compute grid sizes with the same syntax; and under the interpreter a tensor handed to a kernel
as a tl.constexpr arrives as itself. The sandbox's runtime guard and the dynamic checks (a Triton kernel
must launch and do the work) cover them.
"""
from __future__ import annotations

import ast

from .static_rules import COMPREHENSIONS, Resolver, Violation, base_name, dotted, is_dunder, is_main_guard, parse

# ---------------------------------------------------------------------------------------------- allow-lists

_MODULES = frozenset({"torch", "triton", "triton.language", "math", "typing"})

# Annotation names only: typing itself imports sys, operator, re, functools, collections and types, so
# typing.sys.modules or `from typing import sys` would reach the whole interpreter.
_TYPING_NAMES = frozenset({"Any", "Optional", "Tuple", "List", "Dict", "Union", "Callable", "Sequence",
                           "Mapping", "Literal"})
_FROM_IMPORTS = frozenset({("__future__", "annotations"), ("triton", "language"),
                           *(("typing", name) for name in _TYPING_NAMES)})

# torch allocates and describes, never computes (paths after "torch."). ones/full fill a constant, no part
# of any op's result; arange and tensor are out because no wrapper needs values made by torch.
_TORCH_ALLOWED = frozenset({
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "finfo", "iinfo", "device", "dtype", "Size", "is_tensor", "is_floating_point", "no_grad",
    # description only: streams, events, graphs, synchronize and the allocator belong to the evaluator
    "cuda.get_device_properties", "cuda.get_device_capability", "cuda.current_device", "cuda.device_count",
    "cuda.is_available",
})
# Only where they name a type: torch.Tensor.mean(x) would compute and a Tensor subclass could lie to every
# check, so torch.Tensor is for isinstance and annotations, torch.autograd.Function the one base class.
_TORCH_TYPES = {"Tensor": frozenset({"isinstance", "annotation"}), "autograd.Function": frozenset({"base"})}
# dtypes only describe, so attributes after them are fine (torch.bfloat16.itemsize)
_TORCH_DTYPES = frozenset({"float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8",
                           "int16", "int32", "int64", "uint8", "bool", "long", "int", "float8_e4m3fn",
                           "float8_e5m2"})
_TORCH_CUDA_HEADS = frozenset({"cuda", "Stream", "Event", "accelerator"})  # reported as torch-cuda

# triton outside kernels decorates, configures and sizes grids; triton.runtime, .compiler, .knobs and
# .testing reach os, the caches and the driver. set_allocator gives TMA descriptors their scratch memory.
_TRITON_ALLOWED = frozenset({"jit", "autotune", "heuristics", "Config", "cdiv", "next_power_of_2",
                             "set_allocator"})
_TRITON_DECORATORS = frozenset({"jit", "autotune", "heuristics"})
# Names in triton.language's namespaces that are modules (tl.core reaches builtins, tl.extra pkgutil); a
# test checks them against the installed Triton. Only the namespaces below are walked through.
_TL_MODULES = frozenset({"core", "extra", "math", "random", "standard", "target_info", "semantic", "cuda",
                         "hip", "libdevice", "module", "pkgutil"})
_TL_NAMESPACES = ((), ("math",), ("extra", "libdevice"), ("extra", "cuda", "libdevice"))

# Builtins for sizes, grid arithmetic, checks and their errors. Not list/sum/map/zip/iter/sorted (Python
# loops over tensor values), not the getattr family, type, exec, open, vars or super.
_BUILTINS = frozenset({"len", "range", "min", "max", "abs", "int", "float", "bool", "isinstance", "tuple",
                       "enumerate", "all", "any", "print", "ValueError", "TypeError", "RuntimeError",
                       "NotImplementedError", "AssertionError"})
_KERNEL_BUILTINS = frozenset({"range", "min", "max", "len", "abs", "int", "float", "bool", "isinstance", "print"})
_ANNOTATION_BUILTINS = frozenset({"int", "float", "bool", "str", "tuple", "list", "dict"})
# Functions that iterate their arguments (builtins: a lone argument): max(x) or math.fsum(x) over a tensor
# would reduce it in Python
_ITERATING = frozenset({"all", "any", "tuple", "min", "max", "enumerate", "math.fsum", "math.prod", "math.dist",
                        "math.sumprod"})

# Tensor methods that describe or re-view a tensor without computing its values. data_ptr is here because
# TMA candidates check alignment with it; caching by address needs module state, which is refused anyway.
_METHODS = frozenset({
    "size", "stride", "dim", "numel", "element_size", "is_contiguous", "is_floating_point", "storage_offset",
    "data_ptr", "get_device", "contiguous", "view", "reshape", "flatten", "unsqueeze", "squeeze", "permute",
    "transpose", "t", "view_as", "new_empty", "new_zeros", "new_ones", "new_full",
})
# Read, never called: tensor properties, finfo fields, device properties. None is a method of
# torch.Tensor, so reading one never yields a bound method that computes (a test checks).
_READ_ATTRS = frozenset({
    "shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "itemsize", "nbytes",
    "eps", "tiny", "bits", "resolution", "smallest_normal",
    "multi_processor_count", "name", "major", "minor", "total_memory", "L2_cache_size", "warp_size",
    "max_threads_per_multi_processor", "shared_memory_per_block", "shared_memory_per_block_optin",
    "shared_memory_per_multiprocessor", "regs_per_multiprocessor",
})
# Also tensor methods (x.max() computes): read only off a receiver that is plainly no tensor,
# torch.finfo(dt).max or x.device.type
_RECEIVER_ATTRS = {"max": "finfo", "min": "finfo", "type": "device", "index": "device"}

# What a kernel body may use on its values: the public API of Triton's tensors, descriptors and dtypes
# (is_* dtype predicates too). Not `handle`: under the interpreter it is the numpy array behind a tensor,
# through which numpy would do the op.
_KERNEL_ATTRS = frozenset({
    "to", "cast", "reshape", "view", "permute", "trans", "T", "ravel", "split", "broadcast_to", "expand_dims",
    "flip", "sum", "max", "min", "argmax", "argmin", "reduce", "reduce_or", "xor_sum", "cumsum", "cumprod",
    "associative_scan", "histogram", "sort", "softmax", "gather", "scatter", "item", "abs", "exp", "exp2", "log",
    "log2", "sqrt", "sqrt_rn", "rsqrt", "sigmoid", "sin", "cos", "erf", "floor", "ceil", "cdiv", "logical_and",
    "logical_or", "load", "store", "advance", "atomic_add", "atomic_and", "atomic_cas", "atomic_max", "atomic_min",
    "atomic_or", "atomic_xchg", "atomic_xor", "shape", "dtype", "type", "numel", "element_ty", "scalar", "value",
    "primitive_bitwidth", "itemsize", "int_bitwidth", "fp_mantissa_width", "block_shape", "strides", "name",
    "get_int_max_value", "get_int_min_value", "with_element_ty",
})

# The autograd context of a torch.autograd.Function: what a differentiable candidate needs and no more.
_AUTOGRAD_METHODS = frozenset({"forward", "backward", "setup_context"})
_CTX_CALLS = frozenset({"save_for_backward", "mark_non_differentiable", "set_materialize_grads"})
_CTX_READS = frozenset({"saved_tensors", "needs_input_grad"})
# fields the calls above (and mark_dirty) fill in: assigning them directly would go around the calls
_CTX_FIELDS = frozenset({"to_save", "dirty_tensors", "non_differentiable", "materialize_grads"})

# Attributes that walk from any object to frames, code and globals without a dunder name
# (a generator's gi_frame.f_back.f_globals reaches the builtins dict, for one).
_INTERNAL_ATTRS = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
    "f_globals", "f_locals", "f_builtins", "f_back", "f_code", "f_trace", "tb_frame", "tb_next",
    "co_code", "co_consts",
})
# Generators and coroutines carry frames, match binds names through patterns, except* and async change
# the control flow the sandbox relies on; no candidate needs them.
_CONSTRUCTS = (ast.AsyncFunctionDef, ast.AsyncFor, ast.AsyncWith, ast.Await, ast.Yield, ast.YieldFrom,
               ast.Match, ast.TryStar)
_ANNOTATION_NODES = (ast.Name, ast.Attribute, ast.Subscript, ast.Tuple, ast.List, ast.Constant, ast.BinOp,
                     ast.operator, ast.expr_context)
_MODULE_CODE = ("code at module level runs on import and what it makes outlives every call; only definitions, "
                "imports and constants belong there")


class _Checker(Resolver):
    def __init__(self, tree: ast.Module, entry: str) -> None:
        super().__init__(tree)
        self.entry = entry
        self.kernel = False  # inside a @triton.jit body
        self.ctx_attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                          and isinstance(n.ctx, ast.Store)}  # ctx.<name> fields the file sets

    def run(self) -> list[Violation]:
        self.read_imports(_MODULES, _FROM_IMPORTS)  # first: every later rule resolves names through them
        self.build_scopes()
        for stmt in self.tree.body:
            self._module_stmt(stmt)
        if not any(self.is_jit(n) for n in ast.walk(self.tree)):
            self.flag(None, "no-kernel-def", "no function decorated with @triton.jit; the op's work must happen "
                                             "in a Triton kernel")
        entries = [s for s in self.tree.body if isinstance(s, ast.FunctionDef) and s.name == self.entry]
        if not entries:
            self.flag(None, "no-entry", f"no top-level def {self.entry}(...), the op's entry function")
        elif any(self.is_jit(s) for s in entries):
            self.flag(entries[0], "no-entry", f"{self.entry} is a @triton.jit kernel; the entry is a plain "
                                              "function that launches kernels")
        return sorted(self.found, key=lambda v: (v.line, v.rule, v.detail))

    # ---------------------------------------------------------------- statements

    def _module_stmt(self, s: ast.stmt) -> None:
        if isinstance(s, (ast.Assign, ast.AnnAssign)):
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            if self.constant_kind(s.value) == "value" or not all(
                    isinstance(n, (ast.Name, ast.Tuple, ast.Store)) for t in targets for n in ast.walk(t)):
                self.flag(s, "state", "module-level assignments bind only constants (numbers, strings, tuples "
                                      "and dicts of them); anything else is state kept between calls")
        elif isinstance(s, ast.If) and is_main_guard(s.test):
            for stmt in s.body:  # never run by the evaluator, but checked like a wrapper all the same
                self._visit(stmt)
            if s.orelse:
                self.flag(s.orelse[0], "state", _MODULE_CODE)
            return
        elif not isinstance(s, (ast.Import, ast.ImportFrom, ast.Expr, ast.FunctionDef, ast.ClassDef, ast.Pass,
                                *_CONSTRUCTS)):
            self.flag(s, "state", _MODULE_CODE)
        self._visit(s)

    def _visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.expr):
            return self._expr(node)
        if isinstance(node, ast.FunctionDef):
            return self._function(node)
        if isinstance(node, ast.ClassDef):
            return self._class(node)
        if isinstance(node, _CONSTRUCTS):
            self.flag(node, "construct", f"{type(node).__name__} is not allowed in a candidate")
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            self.flag(node, "state", f"{type(node).__name__.lower()} {', '.join(node.names)}: a function may "
                                     "not rebind names outside itself")
        elif isinstance(node, ast.AnnAssign):
            self._annotation(node.annotation)
            for part in (node.target, node.value):
                if part is not None:
                    self._expr(part)
            return
        elif isinstance(node, ast.For) and not self.kernel and not self._iter_ok(node.iter):
            self._loop_flag(node.iter)
        elif isinstance(node, ast.ExceptHandler) and node.type is None:
            self.flag(node, "construct", "a bare except also catches the sandbox's interrupts; name the exception")
        elif isinstance(node, ast.ExceptHandler) and node.name:
            self._store_name(node, node.name)
        elif isinstance(node, ast.keyword) and node.arg and is_dunder(node.arg):
            self.flag(node, "dunder", f"the keyword {node.arg} names an interpreter internal")
        for child in ast.iter_child_nodes(node):
            self._visit(child)

    def _function(self, node: ast.FunctionDef | ast.Lambda, autograd: bool = False) -> None:
        args = node.args
        every = [a for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg) if a]
        if isinstance(node, ast.FunctionDef):
            # def __torch_function__ / __eq__ / __del__ would let an output object lie to the checks
            if is_dunder(node.name):
                self.flag(node, "dunder", f"defining {node.name} is forbidden (special methods can intercept "
                                          "the evaluator's own operations)")
            self._store_name(node, node.name)
            self._decorators(node, autograd)
            for annotation in (*(a.annotation for a in every), node.returns):
                self._annotation(annotation)
        for default in (*args.defaults, *(d for d in args.kw_defaults if d is not None)):
            if not self.is_constant(default):
                self.flag(default, "state", "a default argument is made once and shared by every call; "
                                            "defaults must be constants")
            self._expr(default)
        saved = self.scope, self.kernel
        self.scope, self.kernel = self.scopes[id(node)], self.kernel or self.is_jit(node)
        for a in every:
            self._store_name(a, a.arg)
        for stmt in (node.body if isinstance(node.body, list) else [node.body]):
            self._visit(stmt)
        self.scope, self.kernel = saved

    def _decorators(self, node: ast.FunctionDef, autograd: bool) -> None:
        paths = []
        for d in node.decorator_list:
            call = d if isinstance(d, ast.Call) else None
            paths.append(path := self.path(call.func if call else d))
            if path in ("triton.autotune", "triton.heuristics") and call is None:
                self.flag(d, "decorator", f"@{path} takes its configuration as arguments")
            if path in ("triton.jit", "triton.autotune", "triton.heuristics"):
                for child in (*(call.args if call else ()), *(call.keywords if call else ())):
                    self._visit(child)
            elif not (autograd and isinstance(d, ast.Name) and d.id == "staticmethod"
                      and self.lookup(d.id) == "builtin"):
                self.flag(d, "decorator", f"@{ast.unparse(d)} is not allowed; a candidate decorates only with "
                                          "triton.jit, triton.autotune, triton.heuristics (and staticmethod in "
                                          "an autograd Function)")
                self._expr(d)
        if "triton.jit" not in paths and {"triton.autotune", "triton.heuristics"} & set(paths):
            self.flag(node, "decorator", f"{node.name}: triton.autotune and triton.heuristics wrap only a "
                                         "@triton.jit kernel")

    def _class(self, node: ast.ClassDef) -> None:
        self._store_name(node, node.name)
        if len(node.bases) != 1 or self.path(node.bases[0]) != "torch.autograd.Function" or node.keywords:
            self.flag(node, "class", f"class {node.name}: the only class a candidate may define is "
                                     "class X(torch.autograd.Function) without keywords (no Tensor subclasses, "
                                     "no metaclasses)")
        for d in node.decorator_list:
            self.flag(d, "decorator", f"class {node.name}: classes take no decorators")
            self._expr(d)
        for base in node.bases:
            self._expr(base, "base")
        for k in node.keywords:
            self._visit(k)
        saved, self.scope = self.scope, self.scopes[id(node)]
        for i, stmt in enumerate(node.body):
            if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
                continue  # the docstring
            if isinstance(stmt, ast.FunctionDef) and stmt.name in _AUTOGRAD_METHODS and len(stmt.decorator_list) == 1:
                self._function(stmt, autograd=True)
                continue
            self.flag(stmt, "class", f"class {node.name} may hold only @staticmethod "
                                     f"{'/'.join(sorted(_AUTOGRAD_METHODS))} (class attributes are state "
                                     "shared by every call)")
            self._visit(stmt)
        self.scope = saved

    def _iter_ok(self, it: ast.expr) -> bool:
        """Iterables a wrapper may loop over: none of them yields a tensor's values."""
        if isinstance(it, (ast.Tuple, ast.List, ast.ListComp, ast.GeneratorExp)):
            return True  # a comprehension's own loops are checked where it stands
        if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and self.lookup(it.func.id) == "builtin":
            return it.func.id == "range" or (it.func.id == "enumerate" and len(it.args) == 1
                                              and self._iter_ok(it.args[0]))
        if isinstance(it, ast.Name):
            return self.lookup(it.id) == "constant"
        return self._is_description(it)

    def _is_description(self, node: ast.expr) -> bool:
        """x.shape, x.size(), x.stride(), ctx.saved_tensors: values that describe, never tensor data."""
        if isinstance(node, ast.Attribute):
            return node.attr == "shape" or (node.attr in _CTX_READS and isinstance(node.value, ast.Name)
                                            and self.lookup(node.value.id) == "ctx")
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("size", "stride") and not node.args and not node.keywords)

    def _loop_flag(self, it: ast.expr) -> None:
        self.flag(it, "loop", f"looping over {ast.unparse(it)} iterates values in Python; outside kernels loop only "
                              "over range(...), tuple or list literals, shapes and strides")

    # ---------------------------------------------------------------- names

    def _store_name(self, node: ast.AST, name: str) -> None:
        # rebinding an import (math = x, def tl(...), for torch in ...) would make later calls through
        # that name look like module functions and slip past the method and monkeypatch rules
        if name in self.aliases:
            self.flag(node, "monkeypatch", f"rebinding the imported name {name} is forbidden")
        elif not isinstance(node, ast.arg) and self.lookup(name) == "ctx":
            self.flag(node, "class", f"rebinding the autograd context {name} is forbidden")
        if name == "__builtins__":
            self.flag(node, "builtin", "__builtins__ is forbidden (it reaches every builtin)")
        elif is_dunder(name):
            self.flag(node, "dunder", f"the name {name} is forbidden (interpreter internals)")

    def _name(self, node: ast.Name, role: str) -> None:
        name, kind = node.id, self.lookup(node.id)
        if not isinstance(node.ctx, ast.Load):
            self._store_name(node, name)
        elif name == "__builtins__" or (kind == "unknown" and is_dunder(name)):
            self._store_name(node, name)  # the same findings as binding it
        elif kind == "builtin":
            allowed = (_ANNOTATION_BUILTINS if role == "annotation" else
                       _KERNEL_BUILTINS if self.kernel else _BUILTINS)
            if name not in allowed:
                self.flag(node, "builtin", f"{name} is not an allowed builtin here ({', '.join(sorted(allowed))})")
        elif kind == "unknown":
            self.flag(node, "name", f"{name} is not defined in the file")
        elif kind == "alias":
            if not self.aliases[name].startswith("typing."):  # Optional, Any, ...: names, not modules
                self.flag(node, "module-value", f"the module {name} used as a value; use it only as {name}.name")
        elif role == "annotation":
            if kind != "class":
                self.flag(node, "annotation", f"{name} in an annotation is not a type")
        elif self.kernel:
            if role == "call" and kind != "kernel":
                self.flag(node, "kernel-use", f"a kernel calls only tl.*, math.* and @triton.jit functions, not {name}")
        elif kind == "kernel" and role != "launch":
            self.flag(node, "kernel-use", f"the kernel {name} is used other than as {name}[grid](...)")
        elif kind == "class" and role != "apply":
            self.flag(node, "class", f"{name} (an autograd Function) may be used only as {name}.apply(...)")
        elif kind == "params" and role != "params":
            self.flag(node, "state", f"{name} (a module-level dict) may be read only as **{name} or "
                                     f"{name}[constant]; passed on, it could be mutated")

    def _attribute(self, node: ast.Attribute, role: str) -> None:
        if is_dunder(node.attr) or node.attr in _INTERNAL_ATTRS:
            self.flag(node, "dunder", f"attribute {node.attr} is forbidden (it reaches interpreter internals, "
                                      "frames or code)")
        if not isinstance(node.ctx, ast.Load):
            return self._store_target(node)
        parts = dotted(node)
        if parts and parts[0] in self.aliases:
            return self._chain(node, parts, role)
        base = node.value
        kind = self.lookup(base.id) if isinstance(base, ast.Name) else "value"
        if kind == "kernel":
            self.flag(node, "kernel-use", f"{base.id}.{node.attr}: a kernel is used only as {base.id}[grid](...)")
        elif kind == "constexpr":
            self._constexpr_flag(node, base.id)
        elif kind == "class":
            self._expr(base, "apply" if node.attr == "apply" else "load")
        elif kind == "function":
            self.flag(node, "state", f"{base.id}.{node.attr}: functions carry no attributes in a candidate")
        elif kind == "ctx":
            allowed = _CTX_CALLS if role == "call" else _CTX_READS | _CTX_CALLS
            if node.attr not in allowed and not (node.attr in self.ctx_attrs and self._ctx_field_ok(node.attr)):
                self.flag(node, "class", f"ctx.{node.attr} is not part of the autograd context a candidate may "
                                         f"use ({', '.join(sorted(_CTX_CALLS | _CTX_READS))} and its own fields)")
        else:
            if not self.kernel:
                self._value_attr(node, role)
            elif node.attr not in _KERNEL_ATTRS and not node.attr.startswith("is_") and not is_dunder(node.attr):
                self.flag(node, "kernel-use", f".{node.attr} is not part of Triton's tensor, descriptor or dtype API")
            self._expr(base)

    def _value_attr(self, node: ast.Attribute, role: str) -> None:
        a, receiver = node.attr, node.value
        if is_dunder(a) or a in _INTERNAL_ATTRS or a in _METHODS or (role != "call" and a in _READ_ATTRS):
            return
        if role != "call" and _RECEIVER_ATTRS.get(a) == "finfo" and isinstance(receiver, ast.Call) \
                and self.path(receiver.func) in ("torch.finfo", "torch.iinfo"):
            return
        if role != "call" and _RECEIVER_ATTRS.get(a) == "device" and (
                (isinstance(receiver, ast.Attribute) and receiver.attr == "device")
                or (isinstance(receiver, ast.Call) and self.path(receiver.func) == "torch.device")):
            return
        self.flag(node, "torch-math", f".{a}{'()' if role == 'call' else ''} is not on the allow-list of tensor "
                                      "methods and attributes (describe and re-view only); the op's work must "
                                      "happen in Triton")

    @staticmethod
    def _ctx_field_ok(name: str) -> bool:
        return not name.startswith("_") and name not in _CTX_CALLS | _CTX_READS | _CTX_FIELDS

    def _constexpr_flag(self, node: ast.expr, name: str) -> None:
        # the interpreter hands a constexpr parameter over as the very object the wrapper passed, so a
        # tensor passed as one would compute in torch inside the kernel
        self.flag(node, "kernel-use", f"{ast.unparse(node)}: a tl.constexpr parameter ({name}) is a "
                                      "compile-time scalar; its attributes and items are not used")

    def _store_target(self, target: ast.Attribute | ast.Subscript) -> None:
        base, shown = base_name(target), ast.unparse(target)
        verb = "deleting" if isinstance(target.ctx, ast.Del) else "assigning to"
        if base is not None and base.id in self.aliases:
            # a write through an imported name changes the module for everyone in the process, the
            # evaluator and the reference included
            self.flag(target, "monkeypatch", f"{verb} {'.'.join(dotted(target) or [shown])} changes the "
                                             f"imported module {self.aliases[base.id]} (monkeypatching)")
            return
        kind = self.lookup(base.id) if base is not None else "value"
        if isinstance(target, ast.Attribute):
            if kind == "ctx" and isinstance(target.value, ast.Name) and verb == "assigning to":
                if not self._ctx_field_ok(target.attr):
                    self.flag(target, "class", f"ctx.{target.attr} may not be assigned (use the ctx methods)")
                return
            self.flag(target, "state", f"{verb} {shown}: an attribute outlives the call (function, kernel, "
                                       "module or object state); only ctx.<name> in an autograd Function may be "
                                       "assigned")
        elif kind in ("params", "constant"):
            self.flag(target, "state", f"{verb} {shown} mutates module-level state")
        elif self.kernel:
            self.flag(target, "kernel-use", f"{verb} {shown}: a kernel writes memory with tl.store")
        else:
            self.flag(target, "torch-math", f"{verb} {shown} writes a tensor in torch; the op's work must "
                                            "happen in Triton")
        self._expr(target.value)
        if isinstance(target, ast.Subscript):
            self._expr(target.slice)

    # ---------------------------------------------------------------- chains from the allowed modules

    def _chain(self, node: ast.expr, parts: list[str], role: str) -> None:
        """Judge a whole Name.attr... chain once, at its outermost node, by the module it starts at."""
        path = ".".join([self.aliases[parts[0]], *parts[1:]])
        written = ".".join(parts)
        shown = written if written == path else f"{written} ({path})"
        top, _, rest = path.partition(".")
        if self.kernel and role != "annotation" and top not in ("math", "triton"):
            if top == "torch":
                self.flag(node, "torch-math", f"{shown} inside a @triton.jit body: a kernel computes with "
                                              "tl.* only (under the interpreter torch there would do the op)")
        elif path.startswith("triton.language."):
            *namespace, name = path.split(".")[2:]
            if tuple(namespace) not in _TL_NAMESPACES or name.startswith("_") or name in _TL_MODULES:
                self.flag(node, "module-attr", f"{shown} is not a function, type or constant of "
                                               "triton.language (only tl.*, tl.math.* and libdevice functions)")
            elif role == "call" and not self.kernel and name != "constexpr":
                self.flag(node, "kernel-use", f"{shown}(...) outside a @triton.jit body")
        elif top == "torch":
            head = rest.split(".")[0]
            if rest in _TORCH_ALLOWED or head in _TORCH_DTYPES or role in _TORCH_TYPES.get(rest, ()):
                return
            if head in _TORCH_CUDA_HEADS:
                self.flag(node, "torch-cuda", f"{shown} reaches CUDA streams, events, graphs or the allocator; "
                                              "the evaluator owns them")
            else:
                self.flag(node, "torch-math", f"{shown} is not on torch's allowlist (allocate and describe "
                                              "only); the op's work must happen in Triton")
        elif path == "triton.language":
            self.flag(node, "module-value", f"the module {shown} used as a value; use it only as {written}.name")
        elif top == "triton" and self.kernel:
            self.flag(node, "kernel-use", f"{shown} inside a @triton.jit body; a kernel uses tl.* and math.*")
        elif top == "triton" and rest not in _TRITON_ALLOWED:
            self.flag(node, "module-attr", f"{shown} is not on triton's allow-list "
                                           f"({', '.join(sorted(_TRITON_ALLOWED))}, triton.language)")
        elif top == "triton" and rest in _TRITON_DECORATORS:
            self.flag(node, "decorator", f"{shown} is used only as a decorator")
        elif top == "math" and ("." in rest or rest.startswith("_")):
            self.flag(node, "module-attr", f"{shown}: only math's public functions and constants")
        elif top == "typing" and rest not in _TYPING_NAMES:
            self.flag(node, "module-attr", f"{shown}: typing offers a candidate only the annotation names "
                                           f"{', '.join(sorted(_TYPING_NAMES))}")
        # any other root is an import that is already reported

    # ---------------------------------------------------------------- expressions

    def _expr(self, node: ast.expr, role: str = "load") -> None:
        if isinstance(node, ast.Name):
            return self._name(node, role)
        if isinstance(node, ast.Attribute):
            return self._attribute(node, role)
        if isinstance(node, ast.Subscript):
            return self._subscript(node, role)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Lambda):
            return self._function(node)
        if isinstance(node, COMPREHENSIONS):
            return self._comprehension(node)
        if isinstance(node, ast.Dict):
            return self._dict(node)
        # d["__builtins__"] reaches what the name rule forbids; "__main__" is the one dunder string needed
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and is_dunder(node.value) \
                and node.value != "__main__":
            self.flag(node, "dunder", f"the string {node.value!r} names an interpreter internal")
        if isinstance(node, _CONSTRUCTS):
            self.flag(node, "construct", f"{type(node).__name__} is not allowed in a candidate")
        if isinstance(node, ast.NamedExpr) and self.at_module_level():
            self.flag(node, "state", f"{ast.unparse(node)} binds a module-level name to a value made on import")
        inner = role if role in ("annotation", "isinstance") else "load"
        for child in ast.iter_child_nodes(node):
            self._expr(child, inner) if isinstance(child, ast.expr) else self._visit(child)

    def _annotation(self, node: ast.expr | None) -> None:
        # evaluated at def time unless `from __future__ import annotations`: type names and chains only
        if node is None:
            return
        if any(not isinstance(n, _ANNOTATION_NODES) for n in ast.walk(node)):
            self.flag(node, "annotation", f"the annotation {ast.unparse(node)} may hold only type names")
        self._expr(node, "annotation")

    def _subscript(self, node: ast.Subscript, role: str) -> None:
        if not isinstance(node.ctx, ast.Load):
            return self._store_target(node)
        value, inner = node.value, "annotation" if role == "annotation" else "load"
        kind = self.lookup(value.id) if isinstance(value, ast.Name) else None
        static = self.static_index(node.slice)
        if kind == "constexpr":
            self._constexpr_flag(node, value.id)
        if kind == "kernel" and not self.kernel:
            self._expr(value, "launch")
        elif kind == "params" and static:
            self._expr(value, "params")
        else:
            self._expr(value, inner)
            if not (self.kernel or static or role == "annotation" or kind == "alias"
                    or (self.path(value) or "").startswith("typing.") or self._is_description(value)):
                self.flag(node, "torch-math", f"indexing with a computed index ({ast.unparse(node)}) can gather "
                                              "in torch; index tensors in Triton")
        self._expr(node.slice, inner)

    def _call(self, node: ast.Call) -> None:
        func = node.func
        builtin = func.id if isinstance(func, ast.Name) and self.lookup(func.id) == "builtin" else None
        if self.kernel and not isinstance(func, (ast.Name, ast.Attribute)):
            self.flag(node, "kernel-use", f"a kernel calls only tl.*, math.* and @triton.jit functions, not "
                                          f"{ast.unparse(func)}")
        if not self.kernel and ((builtin in _ITERATING and len(node.args) == 1) or self.path(func) in _ITERATING):
            for arg in node.args:
                if not isinstance(arg, ast.Starred) and not self._iter_ok(arg):
                    self._loop_flag(arg)
        self._expr(func, "call")
        for i, arg in enumerate(node.args):
            self._expr(arg, "isinstance" if builtin == "isinstance" and i == 1 else "load")
        for k in node.keywords:
            if k.arg is None and isinstance(k.value, ast.Name) and self.lookup(k.value.id) == "params":
                continue  # **PARAMS: the rendered candidates' baked knobs, unpacked into a fresh dict
            self._visit(k)

    def _dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values):
            if key is None and isinstance(value, ast.Name) and self.lookup(value.id) == "params":
                continue  # {**PARAMS}: a fresh copy of the baked knobs (constants), which may be passed on
            if key is not None:
                self._expr(key)
            self._expr(value)

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp) -> None:
        saved = self.scope
        for gen in node.generators:
            self._expr(gen.iter)  # the first iterable is evaluated in the enclosing scope, the rest inside
            self.scope = self.scopes[id(node)]
            if not self.kernel and not self._iter_ok(gen.iter):
                self._loop_flag(gen.iter)
            if gen.is_async:
                self.flag(node, "construct", "async comprehensions are not allowed in a candidate")
            self._expr(gen.target)
            for cond in gen.ifs:
                self._expr(cond)
        for part in ((node.key, node.value) if isinstance(node, ast.DictComp) else (node.elt,)):
            self._expr(part)
        self.scope = saved


def check_candidate(source: str, entry: str) -> list[Violation]:
    """All policy violations of a candidate's source, sorted by line; an empty list means it passes."""
    tree = parse(source)
    if isinstance(tree, Violation):
        return [tree]
    try:
        return _Checker(tree, entry).run()
    except RecursionError:
        return [Violation(0, "syntax", "unparseable source (nested too deeply to check)")]

