"""Triton kernels for NanoGPT's ops, one module per op, and the registry of their specs.

This package stands alone: it imports nothing else of the project, so it can ship by itself.
"""
from __future__ import annotations

from . import layer_norm
from .spec import DTYPES, OpSpec, Shape, TemplateSpace, Tolerance, dtype_name

OPS: dict[str, OpSpec] = {spec.name: spec for spec in (layer_norm.SPEC,)}

# what `evolve run TARGET` evolves, in order
TARGETS: dict[str, tuple[str, ...]] = {
    "nanogpt": ("layer_norm",),
}


def get_spec(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}") from None


__all__ = ["DTYPES", "OPS", "TARGETS", "OpSpec", "Shape", "TemplateSpace", "Tolerance", "dtype_name", "get_spec"]
