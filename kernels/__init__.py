"""Triton kernels for NanoGPT's ops, one module per op, and the registry of their specs.

This package stands alone: it imports nothing else of the project, so it can ship by itself.
"""
from __future__ import annotations

from . import layer_norm, bias_gelu, add_layer_norm, embedding, cross_entropy, attention
from .spec import DTYPES, OpSpec, Shape, TemplateSpace, Tolerance, dtype_name

# one module per op, each defining SPEC
_MODULES = (layer_norm, bias_gelu, add_layer_norm, embedding, cross_entropy, attention)

OPS: dict[str, OpSpec] = {module.SPEC.name: module.SPEC for module in _MODULES}

# what `evolve run TARGET` evolves, in the order the model's forward pass meets the ops
_NANOGPT_ORDER = ("embedding", "layer_norm", "attention", "add_layer_norm", "bias_gelu", "cross_entropy")
TARGETS: dict[str, tuple[str, ...]] = {
    "nanogpt": tuple(op for op in _NANOGPT_ORDER if op in OPS),
}


def get_spec(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}") from None


__all__ = ["DTYPES", "OPS", "TARGETS", "OpSpec", "Shape", "TemplateSpace", "Tolerance", "dtype_name", "get_spec"]
