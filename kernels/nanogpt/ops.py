"""The model's ops as torch.library custom ops: the Triton kernels chosen in `choice`, their Triton backwards,
and fake (meta) implementations, so the model runs eagerly, under torch.compile and inside a CUDA graph.

Every op here is opaque to torch.compile (it sees the fake implementation's shapes and dtypes) and
launches only Triton kernels and allocations: no host syncs, so a whole training step can be captured.
Weights may be float32 (master weights) while activations are 16-bit: each kernel reads its weights in
their own dtype and writes activations in the activations' dtype; gradients come back in each input's dtype.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.library import custom_op

from .. import add_layer_norm as _aln
from .. import attention as _attn
from .. import bias_gelu as _bg
from .. import cross_entropy as _ce
from .. import embedding as _emb
from .. import layer_norm as _ln
from .choice import backward_of, forward_of, has_params

# the package's own name as the namespace, so a renamed copy of this package (an export) registers its own ops
NAMESPACE = __name__.split(".")[0]


def _name(op: str) -> str:
    return f"{NAMESPACE}::{op}"


def _contiguous_rows(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


# ----------------------------------------------------------------------------- embedding

@custom_op(_name("embedding"), mutates_args=())
def _embedding(idx: Tensor, wte: Tensor, wpe: Tensor) -> Tensor:
    return forward_of("embedding")(idx, wte, wpe)


@_embedding.register_fake
def _(idx, wte, wpe):
    return wte.new_empty((idx.shape[0], idx.shape[1], wte.shape[1]))


@custom_op(_name("embedding_backward"), mutates_args=())
def _embedding_backward(dy: Tensor, idx: Tensor, vocab: int, positions: int, dtype: torch.dtype
                        ) -> tuple[Tensor, Tensor]:
    return _emb._embedding_bwd(dy, idx, vocab, positions, dtype, **backward_of("embedding"))


@_embedding_backward.register_fake
def _(dy, idx, vocab, positions, dtype):
    return dy.new_empty((vocab, dy.shape[2]), dtype=dtype), dy.new_empty((positions, dy.shape[2]), dtype=dtype)


def _embedding_setup(ctx, inputs, output):
    idx, wte, wpe = inputs
    ctx.save_for_backward(idx)
    ctx.tables = (wte.shape[0], wpe.shape[0], wte.dtype)


def _embedding_grad(ctx, dy):
    (idx,) = ctx.saved_tensors
    dwte, dwpe = _embedding_backward(dy, idx, *ctx.tables)
    return None, dwte, dwpe


_embedding.register_autograd(_embedding_grad, setup_context=_embedding_setup)


# ----------------------------------------------------------------------------- layer_norm

@custom_op(_name("layer_norm"), mutates_args=())
def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    return forward_of("layer_norm")(x, weight, bias, eps)


@_layer_norm.register_fake
def _(x, weight, bias, eps):
    return x.new_empty(x.shape)


@custom_op(_name("layer_norm_backward"), mutates_args=())
def _layer_norm_backward(dy: Tensor, x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return _ln._layer_norm_bwd(dy, x, weight, eps, **backward_of("layer_norm"))


@_layer_norm_backward.register_fake
def _(dy, x, weight, eps):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _layer_norm_setup(ctx, inputs, output):
    x, weight, _, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _layer_norm_grad(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dw, db = _layer_norm_backward(dy, x, weight, ctx.eps)
    return dx, dw, db, None


_layer_norm.register_autograd(_layer_norm_grad, setup_context=_layer_norm_setup)


# ----------------------------------------------------------------------------- add_layer_norm

@custom_op(_name("add_layer_norm"), mutates_args=())
def _add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float
                    ) -> tuple[Tensor, Tensor]:
    return forward_of("add_layer_norm")(x, residual, weight, bias, eps)


@_add_layer_norm.register_fake
def _(x, residual, weight, bias, eps):
    return residual.new_empty(x.shape), x.new_empty(x.shape)


@custom_op(_name("add_layer_norm_backward"), mutates_args=())
def _add_layer_norm_backward(ds: Optional[Tensor], dy: Tensor, s: Tensor, weight: Tensor, eps: float,
                             x_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dx_lo, dw, db = _aln._add_layer_norm_bwd(ds, dy, s, weight, eps, x_dtype, **backward_of("add_layer_norm"))
    # outputs may not alias each other: with one dtype the second gradient is an empty placeholder
    return dx, (dx_lo if dx_lo is not dx else dx.new_empty((0,))), dw, db


@_add_layer_norm_backward.register_fake
def _(ds, dy, s, weight, eps, x_dtype):
    lo = s.new_empty(s.shape, dtype=x_dtype) if x_dtype != s.dtype else s.new_empty((0,))
    return s.new_empty(s.shape), lo, weight.new_empty(weight.shape), weight.new_empty(weight.shape)


def _add_layer_norm_setup(ctx, inputs, output):
    x, _, weight, _, eps = inputs
    # an output that feeds nothing gets None, not a tensor of zeros to write and read back
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[0], weight)
    ctx.eps = eps
    ctx.x_dtype = x.dtype


def _add_layer_norm_grad(ctx, ds, dy):
    s, weight = ctx.saved_tensors
    if dy is None:
        # the norm feeds nothing: the sum's gradient passes straight to both summands
        return ds.to(ctx.x_dtype), ds, None, None, None
    dx, dx_lo, dw, db = _add_layer_norm_backward(ds, dy, s, weight, ctx.eps, ctx.x_dtype)
    return (dx_lo if ctx.x_dtype != s.dtype else dx), dx, dw, db, None


_add_layer_norm.register_autograd(_add_layer_norm_grad, setup_context=_add_layer_norm_setup)


# ----------------------------------------------------------------------------- bias_gelu

@custom_op(_name("bias_gelu"), mutates_args=())
def _bias_gelu(x: Tensor, bias: Tensor) -> Tensor:
    return forward_of("bias_gelu")(x, bias)


@_bias_gelu.register_fake
def _(x, bias):
    return x.new_empty(x.shape)


@custom_op(_name("bias_gelu_backward"), mutates_args=())
def _bias_gelu_backward(dy: Tensor, x: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    return _bg._bias_gelu_bwd(dy, _contiguous_rows(x), bias, **backward_of("bias_gelu"))


@_bias_gelu_backward.register_fake
def _(dy, x, bias):
    return x.new_empty(x.shape), bias.new_empty(bias.shape)


def _bias_gelu_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _bias_gelu_grad(ctx, dy):
    x, bias = ctx.saved_tensors
    return _bias_gelu_backward(dy, x, bias)


_bias_gelu.register_autograd(_bias_gelu_grad, setup_context=_bias_gelu_setup)


# ----------------------------------------------------------------------------- attention

@custom_op(_name("attention"), mutates_args=())
def _attention(qkv: Tensor, n_head: int) -> Tensor:
    return forward_of("attention")(qkv, n_head)


@_attention.register_fake
def _(qkv, n_head):
    return qkv.new_empty((qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3))


@custom_op(_name("attention_train"), mutates_args=())
def _attention_train(qkv: Tensor, n_head: int) -> tuple[Tensor, Tensor]:
    """The forward that also saves the log2-sum-exp its backward needs: the chosen point's launcher, or the
    seed's when the chosen kernel is a forward-only file."""
    qkv = qkv.contiguous()
    lse = torch.empty((qkv.shape[0] * n_head, qkv.shape[1]), dtype=torch.float32, device=qkv.device)
    if has_params("attention"):
        y = forward_of("attention")(qkv, n_head, lse=lse)
    else:
        y = _attn._attention_fwd(qkv, n_head, **_attn.SEED_PARAMS, lse=lse)
    return y, lse


@_attention_train.register_fake
def _(qkv, n_head):
    B, T, C3 = qkv.shape
    return qkv.new_empty((B, T, C3 // 3)), qkv.new_empty((B * n_head, T), dtype=torch.float32)


@custom_op(_name("attention_backward"), mutates_args=())
def _attention_backward(dy: Tensor, qkv: Tensor, y: Tensor, lse: Tensor, n_head: int) -> Tensor:
    return _attn._attention_bwd(dy, qkv.contiguous(), y, lse, n_head, **backward_of("attention"))


@_attention_backward.register_fake
def _(dy, qkv, y, lse, n_head):
    return qkv.new_empty(qkv.shape)


def _attention_setup(ctx, inputs, output):
    qkv, n_head = inputs
    ctx.save_for_backward(qkv, *output)
    ctx.n_head = n_head


def _attention_grad(ctx, dy, dlse):
    qkv, y, lse = ctx.saved_tensors
    return _attention_backward(dy, qkv, y, lse, ctx.n_head), None


_attention_train.register_autograd(_attention_grad, setup_context=_attention_setup)


# ----------------------------------------------------------------------------- cross_entropy

@custom_op(_name("cross_entropy"), mutates_args=())
def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return forward_of("cross_entropy")(logits, targets)


@_cross_entropy.register_fake
def _(logits, targets):
    return logits.new_empty((), dtype=torch.float32)


@custom_op(_name("cross_entropy_train"), mutates_args=())
def _cross_entropy_train(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The mean loss and, written in the same pass over the logits, its gradient for an incoming gradient of 1."""
    return _ce._fused_fwd(logits, targets, **backward_of("cross_entropy"))


@_cross_entropy_train.register_fake
def _(logits, targets):
    return logits.new_empty((), dtype=torch.float32), logits.new_empty(logits.shape)


@custom_op(_name("scale_"), mutates_args=("grad",))
def _scale_(grad: Tensor, scale: Tensor) -> None:
    """grad *= scale, in place (a no-op launch when scale is 1, as it is for loss.backward())."""
    _ce._scale_grad_(grad, scale, **backward_of("cross_entropy"))


@_scale_.register_fake
def _(grad, scale):
    return None


def _cross_entropy_setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _cross_entropy_grad(ctx, grad_loss, grad_dlogits):
    (dlogits,) = ctx.saved_tensors
    _scale_(dlogits, grad_loss)
    return dlogits, None


_cross_entropy_train.register_autograd(_cross_entropy_grad, setup_context=_cross_entropy_setup)


# ----------------------------------------------------------------------------- what the model calls

def _training(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def embedding(idx: Tensor, wte: Tensor, wpe: Tensor) -> Tensor:
    """wte[idx] + wpe[:T]: [B, T] token ids -> [B, T, C] in the tables' dtype."""
    return _embedding(idx, wte, wpe)


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """LayerNorm of x [M, N] over N."""
    return _layer_norm(x, weight, bias, eps)


def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5
                   ) -> tuple[Tensor, Tensor]:
    """(x + residual, LayerNorm(x + residual)) of [M, N] tensors."""
    return _add_layer_norm(x, residual, weight, bias, eps)


def bias_gelu(x: Tensor, bias: Tensor) -> Tensor:
    """gelu_tanh(x + bias) for x [M, N], bias [N]."""
    return _bias_gelu(x, bias)


def attention(qkv: Tensor, n_head: int) -> Tensor:
    """Causal self-attention of packed qkv [B, T, 3C] into merged heads [B, T, C]."""
    if _training(qkv):
        return _attention_train(qkv, n_head)[0]
    return _attention(qkv, n_head)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits [M, V] against int64 targets [M] (-1 ignored), a 0-d float32 tensor."""
    if _training(logits):
        return _cross_entropy_train(logits, targets)[0]
    return _cross_entropy(logits, targets)
