"""`evolve bench nanogpt --model NAME`: the whole model, ours against PyTorch, in one process on one GPU.

Rows: a training step (forward, backward, fused AdamW, zero_grad; bf16 autocast over float32 weights, as
nanoGPT trains) and inference (a forward without targets: the last position's logits, as `generate` asks)
for PyTorch eager, torch.compile (default and reduce-overhead), our model eager, our model with the whole
step captured in one CUDA graph, and our model under torch.compile. Each row is the per-step wall time at
steady state, host overhead included (what a training loop pays): the median of several windows of steps
after a warm-up that compiles everything, on random token ids rotated over a few batches. Peak memory is
the CUDA allocator's peak while the variant was built, warmed and timed, alone on the GPU.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from kernels.nanogpt.choice import active
from kernels.nanogpt.model import GPT, config_named
from kernels.nanogpt.train import Stepper, TrainConfig, autocast

# model -> (training batch, inference batches), as (batch size, sequence length)
SHAPES = {
    "shakespeare-char": ((64, 256), ((64, 256), (1, 128))),
    "gpt2": ((8, 1024), ((8, 1024), (1, 128))),
}
VARIANTS = ("eager", "compile", "compile-ro", "ours", "ours-graph", "ours-compile")
LABELS = {
    "eager": "PyTorch eager",
    "compile": "torch.compile",
    "compile-ro": "torch.compile reduce-overhead",
    "ours": "ours (Triton kernels), eager",
    "ours-graph": "ours, one CUDA graph",
    "ours-compile": "ours under torch.compile",
}


@dataclass
class ModelRow:
    kind: str          # "train" or "inference"
    variant: str
    batch: int
    seq: int
    ms: float | None
    tokens_per_s: float | None
    peak_mib: float | None
    error: str | None = None
    vs_eager: float | None = None
    vs_compile: float | None = None
    vs_reduce_overhead: float | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "label": LABELS[self.variant]}


def _settings(variant: str) -> tuple[str, str | None, bool]:
    """(backend, torch.compile mode or None, CUDA graph of our own)."""
    return {
        "eager": ("torch", None, False), "compile": ("torch", "default", False),
        "compile-ro": ("torch", "reduce-overhead", False), "ours": ("triton", None, False),
        "ours-graph": ("triton", None, True), "ours-compile": ("triton", "default", False),
    }[variant]


def _time(step: Callable[[int], None], warmup: int, steps: int, windows: int) -> float:
    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    samples = []
    for w in range(windows):
        start = time.perf_counter()
        for i in range(steps):
            step(i)
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) / steps * 1e3)
    return statistics.median(samples)


def _batches(vocab: int, batch: int, seq: int, count: int = 4):
    generator = torch.Generator().manual_seed(1234)
    return [(torch.randint(0, vocab, (batch, seq), generator=generator).cuda(),
             torch.randint(0, vocab, (batch, seq), generator=generator).cuda()) for _ in range(count)]


def _train_step(variant: str, model_name: str, batch: int, seq: int) -> Callable[[int], None]:
    backend, mode, graph = _settings(variant)
    torch.manual_seed(0)
    model = GPT(config_named(model_name), backend).cuda()
    data = _batches(model.config.vocab_size, batch, seq)
    # the step the issue measures: no clipping, a constant learning rate
    cfg = TrainConfig(batch_size=batch, block_size=seq, grad_clip=0.0, dtype="bfloat16", cuda_graph=graph)
    forward_model = torch.compile(model, mode=mode) if mode else model
    stepper = Stepper(model, cfg, "cuda")
    if mode:
        stepper.model = forward_model
    return lambda i: stepper.step(*data[i % len(data)])


def _inference_step(variant: str, model_name: str, batch: int, seq: int) -> Callable[[int], None]:
    backend, mode, graph = _settings(variant)
    torch.manual_seed(0)
    model = GPT(config_named(model_name), backend).cuda().eval()
    data = [x for x, _ in _batches(model.config.vocab_size, batch, seq)]
    run = torch.compile(model, mode=mode) if mode else model

    def forward(x):
        with torch.no_grad(), autocast("cuda", "bfloat16"):
            return run(x)[0]

    if not graph:
        return lambda i: forward(data[i % len(data)])
    static = data[0].clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            forward(static)
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(cuda_graph):
        forward(static)

    def replay(i):
        static.copy_(data[i % len(data)], non_blocking=True)
        cuda_graph.replay()

    return replay


def _measure(kind: str, variant: str, model_name: str, batch: int, seq: int, warmup: int, steps: int,
             windows: int) -> ModelRow:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        make = _train_step if kind == "train" else _inference_step
        ms = _time(make(variant, model_name, batch, seq), warmup, steps, windows)
        peak = torch.cuda.max_memory_allocated() / 2**20
        return ModelRow(kind, variant, batch, seq, ms, batch * seq / ms * 1e3, peak)
    except Exception as exc:  # one variant failing (e.g. a compiler error) leaves the others standing
        message = str(exc).strip().splitlines()
        return ModelRow(kind, variant, batch, seq, None, None, None,
                        f"{type(exc).__name__}: {message[0] if message else ''}"[:300])
    finally:
        torch._dynamo.reset()  # compiled graphs and their CUDA-graph pools go with the variant
        gc.collect()
        torch.cuda.empty_cache()


def _ratios(rows: list[ModelRow]) -> None:
    for kind, batch, seq in {(r.kind, r.batch, r.seq) for r in rows}:
        group = {r.variant: r for r in rows if (r.kind, r.batch, r.seq) == (kind, batch, seq)}
        for row in group.values():
            if row.ms is None:
                continue
            for attr, base in (("vs_eager", "eager"), ("vs_compile", "compile"),
                               ("vs_reduce_overhead", "compile-ro")):
                ref = group.get(base)
                if ref is not None and ref.ms is not None:
                    setattr(row, attr, ref.ms / row.ms)


def bench_model(model_name: str, variants=VARIANTS, warmup: int = 10, steps: int = 20, windows: int = 5,
                on_row: Callable[[ModelRow], None] | None = None, kinds=("train", "inference")) -> dict:
    """Every variant's training step and inference for one model config; returns rows and context."""
    if model_name not in SHAPES:
        raise ValueError(f"unknown model config {model_name!r}; known: {', '.join(SHAPES)}")
    if not torch.cuda.is_available():
        raise RuntimeError("the model benchmark needs a CUDA GPU (on the CPU, `evolve run nanogpt` checks the "
                           "model's parity and convergence instead)")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    (train_b, train_t), inference = SHAPES[model_name]
    plan = [("train", v, train_b, train_t) for v in variants] if "train" in kinds else []
    plan += [("inference", v, b, t) for b, t in inference for v in variants] if "inference" in kinds else []
    rows = []
    for kind, variant, batch, seq in plan:
        row = _measure(kind, variant, model_name, batch, seq, warmup, steps, windows)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    _ratios(rows)
    config = config_named(model_name)
    return {
        "model": model_name,
        "config": asdict(config),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "kernels": {op: choice.source for op, choice in active().items()},
        "timing": {"warmup": warmup, "steps": steps, "windows": windows},
        "rows": [r.to_dict() for r in rows],
    }


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def model_table(result: dict):
    """The bench as a rich table: one row per (kind, shape, variant)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"evolve bench nanogpt --model {result['model']} · {result['gpu']} · torch "
                               f"{result['torch']}"), title_justify="left")
    for column in ("workload", "variant", "ms/step", "tokens/s", "peak MiB", "×eager", "×compile",
                   "×reduce-overhead"):
        table.add_column(column, justify="left" if column in ("workload", "variant") else "right", no_wrap=True)
    for row in result["rows"]:
        workload = f"{row['kind']} B{row['batch']} T{row['seq']}"
        if row["ms"] is None:
            table.add_row(workload, row["label"], escape(f"failed: {row['error']}"[:70]), *(["—"] * 5))
            continue
        table.add_row(workload, row["label"], f"{row['ms']:.3f}", f"{row['tokens_per_s']:,.0f}",
                      f"{row['peak_mib']:,.0f}", _ratio(row["vs_eager"]), _ratio(row["vs_compile"]),
                      _ratio(row["vs_reduce_overhead"]))
    table.caption = ("Per-step wall time at steady state, host overhead included (median of "
                     f"{result['timing']['windows']} windows of {result['timing']['steps']} steps). Train: forward, "
                     "backward, fused AdamW, zero_grad, bf16 autocast. Inference: the last position's logits. "
                     "Kernels: " + escape(", ".join(f"{op} {src}" for op, src in result["kernels"].items())))
    return table


def profile_step(model_name: str, kind: str = "train", variant: str = "ours", steps: int = 5, top: int = 15) -> dict:
    """Where a step's device time goes: the kernels of `steps` steps under torch.profiler, per step.

    Kernel times are the same whether the step is launched op by op or replayed from a CUDA graph; the
    difference between their sum and the graphed step's wall time is what launching still costs.
    """
    (train_b, train_t), inference = SHAPES[model_name]
    batch, seq = (train_b, train_t) if kind == "train" else inference[0]
    make = _train_step if kind == "train" else _inference_step
    step = make(variant, model_name, batch, seq)
    for i in range(5):
        step(i)
    torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(steps):
            step(i)
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0.0)
        if device_us > 0:
            rows.append({"kernel": event.key, "us_per_step": device_us / steps, "calls_per_step": event.count / steps})
    rows.sort(key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    for r in rows:
        r["share"] = r["us_per_step"] / total if total else 0.0
    torch._dynamo.reset()
    return {"model": model_name, "kind": kind, "variant": variant, "batch": batch, "seq": seq,
            "device_ms_per_step": total / 1e3, "kernels_per_step": sum(r["calls_per_step"] for r in rows),
            "top": rows[:top]}


def profile_table(profile: dict):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"device time of one {profile['kind']} step, {LABELS[profile['variant']]}, "
                               f"B{profile['batch']} T{profile['seq']}: {profile['device_ms_per_step']:.3f} ms in "
                               f"{profile['kernels_per_step']:.0f} kernels"), title_justify="left")
    for column in ("kernel", "µs/step", "calls", "share"):
        table.add_column(column, justify="left" if column == "kernel" else "right", no_wrap=column != "kernel")
    for r in profile["top"]:
        table.add_row(escape(r["kernel"][:90]), f"{r['us_per_step']:,.1f}", f"{r['calls_per_step']:.0f}",
                      f"{r['share']:.1%}")
    return table
