"""What the static policy (static.py) stands on: parsing a candidate's text the way the importer will read
it, and resolving every name in it by Python's own scoping, so that a rule can ask what a name is (an
import, a kernel, a function, a constant, a local value, the autograd ctx, a builtin) without running
anything.
"""
from __future__ import annotations

import ast
import builtins
import re
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    line: int    # 1-based source line; 0 for whole-file findings ("no-kernel-def", "no-entry")
    rule: str    # slug: syntax, encoding, import, builtin, name, dunder, module-attr, module-value,
                 #       monkeypatch, state, class, decorator, annotation, loop, construct, kernel-use,
                 #       torch-math, torch-cuda, no-kernel-def, no-entry
    detail: str  # one human line, starting "line N: " when it has a line


# __name__ in a module is the module's own, not the builtin
PY_BUILTINS = frozenset(dir(builtins)) - {"__name__"}
COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, *COMPREHENSIONS)
# PEP 263: the importer decodes a file by this declaration, while the judge read the text as UTF-8
_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")


def is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def dotted(node: ast.expr) -> list[str] | None:
    """["torch", "nn", "functional", "gelu"] for a pure Name.attr.attr chain; None if a call etc. intervenes."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def base_name(node: ast.expr) -> ast.Name | None:
    """The Name an assignment target hangs from, through attributes and subscripts (torch.x[0].y -> torch)."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node if isinstance(node, ast.Name) else None


def is_main_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")


# CPython 3.11 keeps the AST validator's recursion depth in interpreter-wide state: pool workers parsing
# candidates in threads at once failed with "AST constructor recursion depth mismatch" (a SystemError)
_PARSING = threading.Lock()


def parse(source: str | bytes) -> ast.Module | Violation:
    """The tree the importer would build from this text, or the one violation that stops the check."""
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError as e:
            return Violation(0, "syntax", f"unparseable source (not UTF-8: {e.reason} at byte {e.start})")
    source = source.removeprefix("\ufeff")  # the importer accepts a UTF-8 BOM; parsing a str does not
    # the tokenizer's lines, not str.splitlines(), which also breaks at form feeds and would shift line 2
    for number, line in enumerate(re.split(r"\r\n?|\n", source, maxsplit=2)[:2], start=1):
        match = _CODING.match(line)
        coding = match.group(1).lower().replace("_", "-") if match else "utf-8"
        if coding not in ("utf-8", "utf8") and not coding.startswith("utf-8-"):
            # the importer would decode the file as this: the code it runs is not the text checked here
            return Violation(number, "encoding", f"line {number}: the encoding declaration {coding!r} is not "
                                                 "allowed; candidates are UTF-8")
    try:
        with _PARSING:
            return ast.parse(source)
    except SyntaxError as e:
        line = e.lineno or 0
        return Violation(line, "syntax", f"line {line}: {e.msg}" if line else e.msg)
    except (ValueError, RecursionError, MemoryError) as e:
        # null bytes (ValueError on some versions), lone surrogates, or nesting that exhausts the parser
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return Violation(0, "syntax", f"unparseable source ({why})")


class Scope:
    def __init__(self, node: ast.AST, parent: Scope | None) -> None:
        self.node, self.parent = node, parent
        # name -> kernel, function, class, constant, params (a dict of constants), constexpr, value
        self.names: dict[str, str] = {}
        self.ctx: str | None = None  # the ctx parameter, in a method of an autograd Function


class Resolver:
    """Names and scopes of one tree; the policy subclasses it and fills `aliases` from the imports."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.found: set[Violation] = set()
        self.aliases: dict[str, str] = {}  # local name -> dotted path it was imported as
        self.scopes: dict[int, Scope] = {}
        self.scope: Scope | None = None    # where the walk is

    def flag(self, node: ast.AST | None, rule: str, text: str) -> None:
        line = getattr(node, "lineno", 0) if node is not None else 0
        self.found.add(Violation(line, rule, f"line {line}: {text}" if line else text))

    def read_imports(self, modules: frozenset[str], from_imports: frozenset[tuple[str, str]]) -> None:
        """Bind every import in the file, wherever it is, and flag those outside the allowed modules."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name not in modules:
                        text = f"import {a.name}" + (f" as {a.asname}" if a.asname else "")
                        self.flag(node, "import", f"{text} is not allowed; a candidate imports only "
                                                  f"{', '.join(sorted(modules))}")
                    # still bound, so that F.layer_norm after `import torch.nn.functional as F` resolves
                    head = a.name.split(".")[0]
                    self._bind(node, a.asname or head, a.name if a.asname else head)
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node, from_imports)

    def _import_from(self, node: ast.ImportFrom, allowed: frozenset[tuple[str, str]]) -> None:
        mod = node.module or ""
        for a in node.names:
            text = f"from {'.' * node.level}{mod} import {a.name}" + (f" as {a.asname}" if a.asname else "")
            if node.level or (mod, a.name) not in allowed:
                heads = sorted({m for m, _ in allowed if m == mod and not node.level} or {m for m, _ in allowed})
                why = "star imports hide what they bind" if a.name == "*" else "allowed: " + "; ".join(
                    f"from {m} import {', '.join(sorted(n for k, n in allowed if k == m))}" for m in heads)
                self.flag(node, "import", f"{text} is not allowed; {why}")
            if node.level == 0 and a.name != "*" and mod != "__future__":
                self._bind(node, a.asname or a.name, f"{mod}.{a.name}")

    def _bind(self, node: ast.AST, name: str, path: str) -> None:
        # one name, one meaning: `import math` then `import torch as math` would disguise torch calls
        if self.aliases.get(name, path) != path:
            self.flag(node, "import", f"{name} is imported twice, as {self.aliases[name]} and as {path}")
        if is_dunder(name):
            self.flag(node, "dunder", f"importing as {name} shadows an interpreter internal")
        self.aliases[name] = path

    def path(self, node: ast.expr) -> str | None:
        """The dotted path a Name.attr chain names through an import (tl.sum -> triton.language.sum)."""
        parts = dotted(node)
        if not parts or parts[0] not in self.aliases:
            return None
        return ".".join([self.aliases[parts[0]], *parts[1:]])

    def is_jit(self, fn: ast.AST) -> bool:
        return isinstance(fn, ast.FunctionDef) and any(
            self.path(d.func if isinstance(d, ast.Call) else d) == "triton.jit" for d in fn.decorator_list)

    def build_scopes(self) -> None:
        # iterative: a deep source costs no recursion here
        root = self.scope = self.scopes[id(self.tree)] = Scope(self.tree, None)
        stack: list[tuple[ast.AST, Scope]] = [(self.tree, root)]
        while stack:
            node, scope = stack.pop()
            for child in ast.iter_child_nodes(node):
                inner = scope
                if isinstance(child, _SCOPES):
                    if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        scope.names[child.name] = ("class" if isinstance(child, ast.ClassDef) else
                                                   "kernel" if self.is_jit(child) else "function")
                    inner = self.scopes[id(child)] = Scope(child, scope)
                    if isinstance(child, ast.FunctionDef) and isinstance(scope.node, ast.ClassDef):
                        first = [*child.args.posonlyargs, *child.args.args][:1]
                        inner.ctx = first[0].arg if first else None
                elif isinstance(child, ast.arg):
                    constexpr = child.annotation is not None and "constexpr" in ast.unparse(child.annotation)
                    scope.names[child.arg] = "constexpr" if constexpr and self.is_jit(scope.node) else "value"
                elif isinstance(child, ast.Name) and not isinstance(child.ctx, ast.Load):
                    scope.names.setdefault(child.id, "value")
                elif isinstance(child, ast.ExceptHandler) and child.name:
                    scope.names[child.name] = "value"
                stack.append((child, inner))
        seen: set[str] = set()
        for stmt in self.tree.body:
            kind, names = self._module_binding(stmt)
            for name in names:
                if kind:
                    root.names[name] = kind
                if name in seen:
                    # one module-level name, one meaning: a second binding would swap a kernel or a
                    # constant for something the checks judged under the first meaning
                    self.flag(stmt, "monkeypatch", f"{name} is bound twice at module level")
                seen.add(name)

    def _module_binding(self, stmt: ast.stmt) -> tuple[str | None, list[str]]:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return None, [stmt.name]
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            return self.constant_kind(stmt.value), [
                n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
        return None, []

    def lookup(self, name: str) -> str:
        """What a loaded name is here: alias, ctx, builtin, unknown, or its scope's kind for it."""
        if name in self.aliases:
            return "alias"
        scope, first = self.scope, True
        while scope is not None:
            # a class body's names are not visible inside its methods
            if (first or not isinstance(scope.node, ast.ClassDef)) and name in scope.names:
                return "ctx" if name == scope.ctx else scope.names[name]
            scope, first = scope.parent, False
        return "builtin" if name in PY_BUILTINS else "unknown"

    def constant_kind(self, node: ast.expr | None) -> str:
        """constant, params (a dict literal of constants) or value, for a module-level assignment."""
        if node is None or self.is_constant(node):
            return "constant"
        if isinstance(node, ast.Dict) and all(k is not None and self.is_constant(k) for k in node.keys) \
                and all(self.is_constant(v) for v in node.values):
            return "params"
        return "value"

    def is_constant(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.Tuple):
            return all(self.is_constant(e) for e in node.elts)
        if isinstance(node, ast.UnaryOp):
            return self.is_constant(node.operand)
        if isinstance(node, ast.BinOp):
            return self.is_constant(node.left) and self.is_constant(node.right)
        if isinstance(node, ast.Name):
            root = self.scopes.get(id(self.tree))
            return root is not None and root.names.get(node.id) == "constant"
        if isinstance(node, ast.Attribute) and self.path(node) is not None:
            return True  # a module's function, type or dtype (torch.float32); the policy judges the chain
        # Triton's global constexpr: BLOCK = tl.constexpr(64)
        return (isinstance(node, ast.Call) and self.path(node.func) == "triton.language.constexpr"
                and len(node.args) == 1 and not node.keywords and self.is_constant(node.args[0]))

    def static_index(self, node: ast.expr) -> bool:
        """An index that cannot gather: constants, slices (which only view) and tuples of them."""
        if isinstance(node, ast.Tuple):
            return all(self.static_index(e) for e in node.elts)
        return isinstance(node, ast.Slice) or self.is_constant(node)

    def at_module_level(self) -> bool:
        scope = self.scope  # a comprehension binds := targets in the scope around it
        while scope is not None and isinstance(scope.node, COMPREHENSIONS):
            scope = scope.parent
        return scope is not None and scope.node is self.tree
