"""Render a point of an op's template space into a self-contained candidate file.

The seed kernels are real functions of the op modules; a candidate is their source text plus the
template parameters baked in as constants. One source of truth for the kernel, and every candidate
(template or LLM) has the same form: it can be archived, re-evaluated, diffed and exported alike.
"""
from __future__ import annotations

import inspect
import textwrap
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Backward:
    """What makes a rendered candidate differentiable: the op's torch.autograd.Function, whose
    `forward(ctx, *entry_args, params, bwd_params)` launches the forward at `params` and whose backward
    launches `launcher` at `bwd_params`; `kernels` are the Triton kernels and helpers the backward needs
    (besides the forward's); `knobs` name the template's backward knobs."""

    function: type
    launcher: Callable
    kernels: Sequence[Callable]
    knobs: frozenset[str]


def _baked(name: str, params: Mapping[str, Any]) -> str:
    baked = "".join(f"    {k!r}: {v!r},\n" for k, v in params.items())
    return f"{name} = {{\n{baked}}}\n"


def render_candidate(
    op: str,
    entry: str,
    entry_args: Sequence[str],
    launcher: Callable,
    kernels: Sequence[Callable],
    params: Mapping[str, Any],
    title: str | None = None,
    backward: Backward | None = None,
) -> str:
    """Source text of a candidate: imports, the kernels, the launcher, the baked parameters, the entry; with
    `backward`, also the backward's kernels and launcher and the autograd Function the entry applies."""
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    parts = [HEADER.format(title=title or f"{op} candidate", op=op, params=shown)]
    seen: set[str] = set()
    for fn in [*kernels, launcher, *(backward.kernels if backward else ()), *([backward.launcher] if backward else [])]:
        if fn.__name__ not in seen:  # a helper shared by the forward and the backward appears once
            seen.add(fn.__name__)
            parts.append(_source(fn))
    args = ", ".join(entry_args)
    if backward is None:
        parts.append(_baked("PARAMS", params))
        parts.append(f"def {entry}({args}):\n    return {launcher.__name__}({args}, **PARAMS)\n")
    else:
        parts.append(_baked("PARAMS", {k: v for k, v in params.items() if k not in backward.knobs}))
        parts.append(_baked("BWD_PARAMS", {k: v for k, v in params.items() if k in backward.knobs}))
        parts.append(textwrap.dedent(inspect.getsource(backward.function)))
        # fresh copies each call: a dict passed on could be mutated, and module state must not change
        parts.append(f"def {entry}({args}):\n    return {backward.function.__name__}.apply({args}, {{**PARAMS}}, "
                     f"{{**BWD_PARAMS}})\n")
    return "\n\n".join(p.rstrip() + "\n" for p in parts)
