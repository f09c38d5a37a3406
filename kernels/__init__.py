"""Triton kernels for NanoGPT's ops, one module per op, and the registry of their specs.

This package stands alone: it imports nothing else of the project, so it can ship by itself.
"""
from __future__ import annotations

from . import layer_norm, bias_gelu, add_layer_norm, embedding, cross_entropy, attention, rms_norm
from .spec import DTYPES, OpSpec, Shape, TemplateSpace, Tolerance, dtype_name
from .targets import Target, TargetError, load_target, shipped_targets

# one module per op, each defining SPEC
_MODULES = (layer_norm, bias_gelu, add_layer_norm, embedding, cross_entropy, attention, rms_norm)

OPS: dict[str, OpSpec] = {module.SPEC.name: module.SPEC for module in _MODULES}

# what `evolve run TARGET` evolves (kernels/targets/*.toml), by name; TARGETS gives each one's ops in the
# order the model's forward pass meets them
TARGET_FILES: dict[str, Target] = shipped_targets(OPS)
TARGETS: dict[str, tuple[str, ...]] = {name: target.ops for name, target in TARGET_FILES.items()}


def get_spec(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}") from None


__all__ = ["DTYPES", "OPS", "TARGETS", "TARGET_FILES", "OpSpec", "Shape", "Target", "TargetError", "TemplateSpace",
           "Tolerance", "dtype_name", "get_spec", "load_target"]
