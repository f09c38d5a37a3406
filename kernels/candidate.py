"""Render a point of an op's template space into a self-contained candidate file.

The seed kernels are real functions of the op modules; a candidate is their source text plus the
template parameters baked in as constants. One source of truth for the kernel, and every candidate
(template or LLM) has the same form: it can be archived, re-evaluated, diffed and exported alike.
"""
from __future__ import annotations

import inspect
import textwrap
from typing import Any, Callable, Mapping, Sequence

HEADER = '''"""{title}

Generated from the {op} template. Parameters: {params}
"""
import math
import typing

import torch
import triton
import triton.language as tl
'''


def _source(obj: Callable) -> str:
    # a @triton.jit kernel wraps the Python function; its source is the decorated function's
    fn = getattr(obj, "fn", obj)
    return textwrap.dedent(inspect.getsource(fn))


def render_candidate(
    op: str,
    entry: str,
    entry_args: Sequence[str],
    launcher: Callable,
    kernels: Sequence[Callable],
    params: Mapping[str, Any],
    title: str | None = None,
) -> str:
    """Source text of a candidate: imports, the kernels, the launcher, the baked parameters, the entry."""
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    parts = [HEADER.format(title=title or f"{op} candidate", op=op, params=shown)]
    parts += [_source(kernel) for kernel in kernels]
    parts.append(_source(launcher))
    baked = ",\n".join(f"    {k!r}: {v!r}" for k, v in params.items())
    parts.append(f"PARAMS = {{\n{baked},\n}}\n")
    args = ", ".join(entry_args)
    parts.append(f"def {entry}({args}):\n    return {launcher.__name__}({args}, **PARAMS)\n")
    return "\n\n".join(p.rstrip() + "\n" for p in parts)
