"""Swap the ops of a nanoGPT-style model for the Triton kernels, in place.

A nanoGPT-style model is recognised by its modules, not its class: LayerNorms (a 1-D `weight`, an optional
`bias`), attention blocks with a packed `c_attn`, a `c_proj` and `n_head`, and MLPs with `c_fc`, `gelu` and
`c_proj`. Each matching module's `forward` is replaced on the instance, so parameters, state_dict keys,
optimizers and checkpoints are untouched; `unpatch` puts the original forwards back.

What is not swapped, and why: an MLP whose GELU is the exact (erf) form, unless `approximate_gelu=True`
(the kernel computes the tanh form, which differs by up to ~1e-3); attention while it trains with dropout
on its probabilities (the kernel has no dropout).
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from . import ops
from .linear import linear


@dataclass
class PatchReport:
    layer_norms: int = 0
    attentions: int = 0
    mlps: int = 0
    skipped: list[str] = field(default_factory=list)  # module name: why it kept its own forward

    def __str__(self) -> str:
        text = f"patched {self.layer_norms} LayerNorms, {self.attentions} attentions, {self.mlps} MLPs"
        return text + (f"; kept: {'; '.join(self.skipped)}" if self.skipped else "")


def _is_layer_norm(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return ("LayerNorm" in type(module).__name__ and isinstance(weight, torch.Tensor) and weight.dim() == 1)


def _layer_norm_forward(self, x):
    n = self.weight.shape[0]
    bias = self.bias if self.bias is not None else self.weight.new_zeros(n)
    eps = float(getattr(self, "eps", 1e-5))
    return ops.layer_norm(x.reshape(-1, n), self.weight, bias, eps).view(x.shape)


def _attention_forward(self, x):
    if self.training and getattr(self, "dropout", 0.0):
        return self._evolve_original_forward(x)
    B, T, C = x.shape
    qkv = linear(x.reshape(B * T, C), self.c_attn.weight, self.c_attn.bias).view(B, T, 3 * C)
    y = ops.attention(qkv, self.n_head)
    out = linear(y.view(B * T, C), self.c_proj.weight, self.c_proj.bias).view(B, T, C)
    dropout = getattr(self, "resid_dropout", None)
    return dropout(out) if dropout is not None else out


def _mlp_forward(self, x):
    shape = x.shape
    h = x.reshape(-1, shape[-1])
    bias = self.c_fc.bias if self.c_fc.bias is not None else self.c_fc.weight.new_zeros(self.c_fc.weight.shape[0])
    g = ops.bias_gelu(torch.nn.functional.linear(h, self.c_fc.weight), bias)
    out = linear(g, self.c_proj.weight, self.c_proj.bias).view(*shape[:-1], -1)
    dropout = getattr(self, "dropout", None)
    return dropout(out) if isinstance(dropout, nn.Module) else out


def _swap(module: nn.Module, forward) -> None:
    if not hasattr(module, "_evolve_original_forward"):
        module._evolve_original_forward = module.forward
    module.forward = types.MethodType(forward, module)


def patch(model: nn.Module, approximate_gelu: bool = False) -> PatchReport:
    """Replace the forwards of the model's LayerNorms, attentions and MLPs with the Triton kernels."""
    report = PatchReport()
    for name, module in model.named_modules():
        if _is_layer_norm(module):
            _swap(module, _layer_norm_forward)
            report.layer_norms += 1
        elif all(hasattr(module, a) for a in ("c_attn", "c_proj", "n_head")):
            if module.c_attn.weight.shape[0] != 3 * module.c_attn.weight.shape[1]:
                report.skipped.append(f"{name}: c_attn is not a packed q, k, v projection")
                continue
            _swap(module, _attention_forward)
            report.attentions += 1
        elif all(hasattr(module, a) for a in ("c_fc", "c_proj", "gelu")):
            gelu = module.gelu
            tanh = isinstance(gelu, nn.GELU) and gelu.approximate == "tanh"
            if not (tanh or approximate_gelu):
                report.skipped.append(f"{name}: exact GELU (patch with approximate_gelu=True for the tanh form)")
                continue
            _swap(module, _mlp_forward)
            report.mlps += 1
    return report


def unpatch(model: nn.Module) -> None:
    """Put back every forward `patch` replaced."""
    for module in model.modules():
        if module.__dict__.pop("_evolve_original_forward", None) is not None:
            module.__dict__.pop("forward", None)  # the class's own forward shows through again
