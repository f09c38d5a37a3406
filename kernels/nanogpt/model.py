"""NanoGPT (GPT-2 small and the shakespeare-char model), with a PyTorch backend and a Triton backend.

The modules, their names and the state_dict keys are nanoGPT's, so its checkpoints load either way:
transformer.wte / wpe / h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj} / ln_f, lm_head.
GELU is the tanh approximation (GPT-2's own, and the one the bias_gelu kernel computes) in both backends.

backend="torch" is nanoGPT's forward: PyTorch ops, scaled_dot_product_attention.
backend="triton" runs the same parameters through the Triton kernels (see ops.py): the token+position
embedding gather, LayerNorm, causal attention straight from the packed qkv, the residual add fused with
the LayerNorm that follows it, c_fc's bias fused with GELU, and cross-entropy with its gradient written in
the forward pass. The matmuls stay cuBLAS; the Linears' bias gradients are summed by a Triton kernel.
As in nanoGPT under autocast, the residual stream and its gradient stay in the weights' dtype (float32)
while the branches run in bf16: a bf16 stream trained measurably slower (its loss ~2-3% above PyTorch's
from step 100 on, in 200 steps of shakespeare-char on an H200).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .linear import linear

BACKENDS = ("torch", "triton")


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # biases in the Linears and LayerNorms, like GPT-2


CONFIGS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
    "shakespeare-char": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65),
}


def config_named(name: str, **overrides) -> GPTConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}")
    return GPTConfig(**{**CONFIGS[name], **overrides})


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has none to switch off before 2.1)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        # what the Triton kernels read when there is no bias; not a parameter, not in the state_dict
        self.register_buffer("zero_bias", None if bias else torch.zeros(ndim), persistent=False)

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)

    def shift(self) -> torch.Tensor:
        return self.bias if self.bias is not None else self.zero_bias


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def forward_triton(self, h, B: int, T: int):
        """h [B*T, C] (the normalised stream) -> the projected attention output [B*T, C]."""
        qkv = linear(h, self.c_attn.weight, self.c_attn.bias).view(B, T, 3 * self.n_embd)
        y = ops.attention(qkv, self.n_head)  # [B, T, C], heads merged
        return linear(y.view(B * T, self.n_embd), self.c_proj.weight, self.c_proj.bias)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.register_buffer("zero_bias", None if config.bias else torch.zeros(4 * config.n_embd),
                             persistent=False)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

    def forward_triton(self, h):
        """h [M, C] -> [M, C]; c_fc's bias is added inside the GELU kernel, not by the matmul."""
        bias = self.c_fc.bias if self.c_fc.bias is not None else self.zero_bias
        return linear(ops.bias_gelu(F.linear(h, self.c_fc.weight), bias), self.c_proj.weight, self.c_proj.bias)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, backend: str = "torch"):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if config.vocab_size < 1 or config.block_size < 1 or config.n_embd % config.n_head:
            raise ValueError(f"invalid config: vocab {config.vocab_size}, block {config.block_size}, "
                             f"{config.n_embd} wide in {config.n_head} heads")
        self.config = config
        self.backend = backend
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the token embedding is the classifier (https://paperswithcode.com/method/weight-tying)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections into the residual stream
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameters; the position table left out by default (the token table counts: it is the classifier)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        """idx [B, T] token ids -> (logits, loss). With targets, logits [B, T, V] and the mean loss (targets
        of -1 ignored); without, the last position's logits [B, 1, V] and None."""
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {t}: the block size is {self.config.block_size}")
        if self.backend == "triton":
            return self._forward_triton(idx, targets)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (b, t, n_embd)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, -1:, :])  # inference: only the last position
            loss = None
        return logits, loss

    def _forward_triton(self, idx, targets):
        if self.training and self.config.dropout > 0:
            raise ValueError("the triton backend trains without dropout: set dropout = 0.0")
        B, T = idx.shape
        C = self.config.n_embd
        wte, wpe = self.transformer.wte.weight, self.transformer.wpe.weight
        x = ops.embedding(idx, wte, wpe).view(B * T, C)  # the residual stream [B*T, C], in the weights' dtype
        branch = None  # a block's output not yet added into the stream: added by the next norm's kernel
        for block in self.transformer.h:
            x, h = _add_norm(x, branch, block.ln_1)
            x, h = _add_norm(x, block.attn.forward_triton(h, B, T), block.ln_2)
            branch = block.mlp.forward_triton(h)
        _, h = _add_norm(x, branch, self.transformer.ln_f)
        if targets is not None:
            logits = F.linear(h, self.lm_head.weight)
            loss = ops.cross_entropy(logits, targets.reshape(-1))
            return logits.view(B, T, -1), loss
        # a slice, not nanoGPT's [-1] list: a list index is a host tensor, which a CUDA graph cannot copy
        return F.linear(h.view(B, T, C)[:, -1:, :], self.lm_head.weight), None

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, capturable: bool = False):
        """AdamW with weight decay on the matrices only (fused on a GPU); capturable for a CUDA graph."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        extra = {}
        if device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
            extra["fused"] = True
        if capturable:
            extra["capturable"] = True
            # a tensor learning rate lets a schedule change it without capturing the step again
            learning_rate = torch.tensor(learning_rate, dtype=torch.float32, device=device_type)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None):
        """Continue idx [B, T] by max_new_tokens sampled tokens, feeding each prediction back in."""
        for _ in range(max_new_tokens):
            cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(cond)
            logits = logits[:, -1, :].float() / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            probs = F.softmax(logits, dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
        return idx


def _add_norm(x, branch, ln: LayerNorm):
    """(stream, its LayerNorm) with `branch` added into the stream first, in one kernel."""
    if branch is None:
        return x, ops.layer_norm(x, ln.weight, ln.shift())
    return ops.add_layer_norm(branch, x, ln.weight, ln.shift())
