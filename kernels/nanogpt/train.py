"""The training step, eager or captured whole in one CUDA graph, nanoGPT's learning-rate schedule, and
checkpoints in nanoGPT's format.

A step is forward, backward, (clipping,) the optimizer's step and zero_grad. Small models spend most of a
step launching kernels, so `Stepper(cuda_graph=True)` captures the whole step once, with static input
buffers and a capturable fused AdamW, and replays it: one launch a step. Capture needs a few warm-up steps
(Triton compiles, cuBLAS picks its kernels); they run on a copy of the state, which is put back before
the first real step, so a captured run trains exactly like an eager one from the same init.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .model import GPT, GPTConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainConfig:
    batch_size: int = 64
    block_size: int = 256
    steps: int = 200
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0        # 0 switches clipping off
    dtype: str = "bfloat16"       # the activations' dtype (autocast); the weights stay float32
    cuda_graph: bool = True       # on a GPU: the whole step in one CUDA graph
    log_every: int = 10
    seed: int = 1337


def autocast(device_type: str, dtype: str):
    """nanoGPT's mixed precision: float32 weights, 16-bit activations; nothing for float32."""
    if DTYPES[dtype] == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[dtype])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to min_lr at the last step (nanoGPT's get_lr)."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_steps + 1)
    span = max(1, cfg.steps - cfg.warmup_steps)
    ratio = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


class Stepper:
    """Runs training steps of `model` on [batch, block] batches; returns each step's loss as a device tensor."""

    def __init__(self, model: GPT, cfg: TrainConfig, device: str, cuda_graph: bool | None = None):
        self.model, self.cfg, self.device = model, cfg, device
        device_type = torch.device(device).type
        self.device_type = device_type
        graph = cfg.cuda_graph if cuda_graph is None else cuda_graph
        self.graphed = bool(graph) and device_type == "cuda"
        if self.graphed and DTYPES[cfg.dtype] == torch.float16:
            raise ValueError("float16 training needs a gradient scaler, which syncs with the host every step; "
                             "use bfloat16 or float32 with a CUDA graph")
        self.scaler = torch.amp.GradScaler(device_type) if DTYPES[cfg.dtype] == torch.float16 else None
        self.optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, cfg.betas, device_type,
                                                    capturable=self.graphed)
        self._graph = None
        self._x = self._y = self._loss = None

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # the captured step reads the tensor
            else:
                group["lr"] = lr

    def _step_body(self, x, y):
        with autocast(self.device_type, self.cfg.dtype):
            _, loss = self.model(x, y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.cfg.grad_clip > 0:
            # foreach clipping keeps the norm on the device: no host sync, so it can be captured
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip,
                                           foreach=True if self.device_type == "cuda" else None)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.graphed:
            loss = self._step_body(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            return loss.detach()
        if self._graph is None:
            self._capture(x, y)
        self._x.copy_(x, non_blocking=True)
        self._y.copy_(y, non_blocking=True)
        self._graph.replay()
        return self._loss

    def _capture(self, x, y) -> None:
        params = list(self.model.parameters())
        saved = [p.detach().clone() for p in params]
        self._x, self._y = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # compiles every kernel and creates the optimizer's state before capture
                self._step_body(self._x, self._y)
                self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.current_stream().wait_stream(side)
        # grads set to None: the captured backward allocates them from the graph's pool and writes, not adds
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._loss = self._step_body(self._x, self._y).detach()
        # undo the warm-up: weights as they were, the optimizer's moments and step count at zero
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
            for state in self.optimizer.state.values():
                for value in state.values():
                    if isinstance(value, torch.Tensor):
                        value.zero_()
        self._graph = graph


@dataclass
class LogPoint:
    step: int
    loss: float
    lr: float
    tokens_per_s: float
    val_loss: float | None = None


def train(model: GPT, data, cfg: TrainConfig, device: str, on_log: Callable[[LogPoint], None] | None = None,
          val_every: int = 0, eval_iters: int = 20) -> tuple[list[LogPoint], Stepper]:
    """Train on data.train for cfg.steps steps; every log_every-th step (and the last) logs the mean loss of the
    steps since the previous log.
    Returns the log and the stepper (whose optimizer a checkpoint saves)."""
    import time

    from .data import get_batch

    generator = torch.Generator().manual_seed(cfg.seed)
    stepper = Stepper(model, cfg, device)
    model.train()
    history: list[LogPoint] = []
    tokens = cfg.batch_size * cfg.block_size
    mark, mark_step = time.perf_counter(), 0
    # the logged loss is the mean over the steps since the last log: one batch's loss is noisy, and a mean
    # kept on the device costs no host sync between logs
    window, count = torch.zeros((), dtype=torch.float32, device=device), 0
    for step in range(cfg.steps):
        stepper.set_lr(lr_at(step, cfg))
        x, y = get_batch(data.train, cfg.batch_size, cfg.block_size, generator, device)
        loss = stepper.step(x, y)
        window += loss.float()
        count += 1
        last = step == cfg.steps - 1
        if step % cfg.log_every == 0 or last:
            value = float(window.item()) / count  # the one host sync of a logged step
            window.zero_()
            count = 0
            now = time.perf_counter()
            rate = tokens * (step + 1 - mark_step) / max(now - mark, 1e-9)
            mark, mark_step = now, step + 1
            val = None
            if val_every and (step % val_every == 0 or last):
                val = estimate_loss(model, data.val, cfg, device, eval_iters)
                model.train()
            point = LogPoint(step, value, lr_at(step, cfg), rate, val)
            history.append(point)
            if on_log is not None:
                on_log(point)
    return history, stepper


@torch.no_grad()
def estimate_loss(model: GPT, ids, cfg: TrainConfig, device: str, iters: int) -> float:
    from .data import get_batch

    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    losses = []
    for _ in range(iters):
        x, y = get_batch(ids, cfg.batch_size, cfg.block_size, generator, device)
        with autocast(torch.device(device).type, cfg.dtype):
            _, loss = model(x, y)
        losses.append(loss.float())
    return float(torch.stack(losses).mean().item())


# ----------------------------------------------------------------------------- checkpoints

class CheckpointError(ValueError):
    """A checkpoint that is not one, or one of another model."""


def save_checkpoint(path: Path, model: GPT, optimizer, iter_num: int, best_val_loss: float,
                    train_cfg: TrainConfig, itos: dict | None) -> Path:
    """nanoGPT's ckpt.pt layout: model, optimizer, model_args, iter_num, best_val_loss, config (+ itos)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "model_args": asdict(model.config),
        "iter_num": iter_num,
        "best_val_loss": best_val_loss,
        "config": {**asdict(train_cfg), "backend": model.backend},
        "itos": itos,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # a run killed while saving leaves the previous checkpoint whole
    return path


def load_checkpoint(path: Path, backend: str = "torch", device: str = "cpu",
                    expect: GPTConfig | None = None) -> tuple[GPT, dict]:
    """The model of a nanoGPT-format checkpoint (its own config, or `expect`'s, which must agree)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a checkpoint: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or "model" not in state or "model_args" not in state:
        raise CheckpointError(f"{path} is not a nanoGPT checkpoint (no model or model_args)")
    fields = set(GPTConfig.__dataclass_fields__)
    args = {k: v for k, v in state["model_args"].items() if k in fields}
    config = GPTConfig(**args)
    if expect is not None:
        differ = [f"{k} {getattr(config, k)} (not {getattr(expect, k)})" for k in sorted(fields)
                  if k != "dropout" and getattr(config, k) != getattr(expect, k)]
        if differ:
            raise CheckpointError(f"{path} is a checkpoint of another config: {', '.join(differ)}")
    model = GPT(config, backend)
    weights = {k.removeprefix("_orig_mod."): v for k, v in state["model"].items()}  # torch.compile's prefix
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path} does not fit its own model_args: {first[1].strip() if len(first) > 1 else first[0]}") from None
    return model.to(device), state
