"""`evolve bench TARGET`: the kernels this machine would use, measured against PyTorch, one row per op.

For each op it takes the kernel promoted for this GPU (or the op's seed when none is promoted yet), runs it
through the full evaluator (every correctness check, then timing against eager, torch.compile and any
further baselines the spec names, interleaved in one process) and tabulates the headline numbers. It is
the command behind the per-op numbers in the notes, so anyone can rerun them.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evaluators import Verdict
from kernels import get_spec
from memory import INTERPRETER_GPU, KernelStore

from agents.config import Config
from agents.app.report import rate_text
from agents.app.runner import (evaluation_pool, evaluator_settings, resolve_device, resolve_ops, resolve_target,
                               resolve_workers)


@dataclass
class BenchRow:
    op: str
    kernel: str          # "promoted <path>" or "seed"
    verdict: Verdict

    def to_dict(self) -> dict:
        return {"op": self.op, "kernel": self.kernel, "verdict": self.verdict.to_dict()}


def sdpa_backend() -> str:
    """Which kernel torch's scaled_dot_product_attention runs for NanoGPT's attention on this GPU.

    Read off the profiler's kernel names, since the enabled flags say what may run, not what does.
    """
    import torch
    import torch.nn.functional as F

    q, k, v = (torch.randn(8, 12, 1024, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages()]
    for needle, backend in (("cudnn", "cuDNN attention"), ("flash", "FlashAttention-2"),
                            ("fmha", "memory-efficient attention"), ("efficient", "memory-efficient attention")):
        if any(needle in name.lower() for name in names):
            return f"{backend} ({', '.join(n for n in names if needle in n.lower())[:120]})"
    return f"math (kernels: {', '.join(names)[:120]})"


def kernel_in_use(op: str, promoted, tmp: Path, training: bool) -> tuple[Path, str]:
    """The file to measure for `op` and what it is: the kernel the model runs. A promoted template point is
    rendered afresh in a training bench, so a kernel promoted for its forward alone is measured with the
    backward the model gives it (its point's backward knobs, the seed's where it has none); a promoted file
    that is no template point as it is; the seed when nothing is promoted."""
    space = get_spec(op).template
    if promoted is None:
        path = tmp / f"{op}_seed.py"
        path.write_text(space.render(space.validate({})))
        return path, "seed"
    params = promoted.lineage.get("params")
    if training and isinstance(params, dict):
        try:
            point = space.validate(params)
        except ValueError:
            return promoted.path, f"promoted {promoted.path}"
        path = tmp / f"{op}_promoted.py"
        path.write_text(space.render(point))
        return path, f"promoted {promoted.path} (its point, with its backward)"
    return promoted.path, f"promoted {promoted.path}"


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a bench: the rows measured until then, for the caller to report."""

    def __init__(self, rows: list[BenchRow], device: dict):
        super().__init__()
        self.rows = rows
        self.device = device


def bench_target(config: Config, target: str, ops: str | None, console: Console,
                 on_row=None) -> tuple[list[BenchRow], dict]:
    """Evaluate the op kernels in use for `target` on this machine; returns the rows (in the order of
    `ops`) and the device. The ops are judged on the run's pool, as many at once as it has workers; each
    verdict is printed as it comes; interrupted, it raises BenchInterrupted with the rows done so far."""
    op_names = resolve_ops(target, ops)
    device = resolve_device(config.run.device)
    config = config.with_run(check_llm=False, workers=resolve_workers(config.run.workers, device))
    done: dict[int, BenchRow] = {}
    # the run's pool ([cluster], [run].workers): a verdict is the same whichever worker gave it
    with evaluation_pool(config, evaluator_settings(config, device, resolve_target(target))) as evaluator, \
            tempfile.TemporaryDirectory(prefix="evolve-bench-") as tmp:
        info = evaluator.device_info
        if device == "cuda":
            info = {**info, "ceilings": evaluator.ceilings()}
        gpu = info["name"] if device == "cuda" else INTERPRETER_GPU
        store = KernelStore(Path(config.run.memory_dir))
        jobs = []
        for op in op_names:
            path, kernel = kernel_in_use(op, store.best(op, gpu), Path(tmp), config.run.training)
            console.print(f"[cyan]bench[/] {op}: {escape(kernel)}")
            jobs.append((op, path, kernel))

        def arrived(index: int, verdict: Verdict) -> None:
            op, _, kernel = jobs[index]
            row = done[index] = BenchRow(op, kernel, verdict)
            console.print(f"  {op}: {verdict.status} {escape(verdict.reason())} (judged in {verdict.seconds:.0f} s)",
                          highlight=False)
            if on_row is not None:
                on_row(row)

        try:
            evaluator.evaluate_all([(op, path) for op, path, _ in jobs], on_verdict=arrived)
        except KeyboardInterrupt:
            raise BenchInterrupted([done[i] for i in sorted(done)], info) from None
    if device == "cuda" and "attention" in op_names:
        info = {**info, "sdpa_backend": sdpa_backend()}
    return [done[i] for i in sorted(done)], info


def _us(ms: float | None) -> str:
    return "—" if ms is None else f"{ms * 1e3:,.1f} µs"


def _checks_table(rows: list[BenchRow], title: str) -> Table:
    table = Table(title=title, title_justify="left",
                  caption="Speed not measured: Triton's CPU interpreter checks correctness only.")
    for column in ("op", "kernel", "status", "checks", "worst rel. error"):
        table.add_column(column, no_wrap=column != "status")
    for row in rows:
        v = row.verdict
        checks = [c for c in v.checks if isinstance(c, dict)]
        passed = sum(1 for c in checks if c.get("passed"))
        worst = max((c.get("rel_l2", 0.0) for c in checks if c.get("passed")), default=None)
        # a failure's detail holds the candidate's own text (exception messages): escaped, never markup
        status = v.status if v.accepted else f"{v.status}: {v.reason()}"
        table.add_row(*map(escape, (row.op, row.kernel.split(" ")[0], status, f"{passed}/{len(checks)} shape×dtype",
                                    "—" if worst is None else f"{worst:.1e}")))
    return table


def bench_table(rows: list[BenchRow], device: dict) -> Table:
    title = escape(f"evolve bench · {device.get('name', '?')} ({device.get('arch', '?')}, torch "
                   f"{device.get('torch', '?')}, triton {device.get('triton', '?')})")
    if device.get("arch") == "interpreter":
        return _checks_table(rows, title)
    table = Table(title=title, title_justify="left")
    for column in ("op", "shape", "status", "eager", "compile", "ours", "×eager", "×compile", "other", "rate",
                   "roofline", "of copy"):
        table.add_column(column, justify="left" if column in ("op", "shape", "status", "other") else "right",
                         no_wrap=True)
    for row in rows:
        v = row.verdict
        if not v.accepted or not v.timing:
            table.add_row(row.op, "—", escape(f"{v.status}: {v.reason()}"[:60]), *(["—"] * 9))
            continue
        for shape in v.timing["shapes"]:
            other = escape(", ".join(f"{name} {_us(b['ms'])} ({b['speedup']:.2f}x)"
                                     for name, b in shape.get("baselines", {}).items()) or "—")
            table.add_row(row.op, f"{shape['shape']} {shape['dtype']}", v.status, _us(shape["eager_ms"]),
                          _us(shape["compile_ms"]), _us(shape["candidate_ms"]), f"{shape['speedup_eager']:.2f}x",
                          f"{shape['speedup_compile']:.2f}x", other, rate_text(row.op, shape),
                          f"{shape['roofline_fraction']:.0%}",
                          "—" if shape.get("copy_fraction") is None else f"{shape['copy_fraction']:.0%}")
    c = device.get("ceilings") or {}
    table.caption = (f"×eager, ×compile: speedup over PyTorch eager and torch.compile, interleaved in one process. "
                     f"Roofline against measured copy {c.get('copy_gbps', 0):,.0f} GB/s and bf16 matmul "
                     f"{c.get('matmul_tflops', 0):,.0f} TFLOP/s; of copy: a Triton copy of the same bytes, its time over ours.")
    if device.get("sdpa_backend"):
        table.caption += f"\nscaled_dot_product_attention ran: {escape(device['sdpa_backend'])}."
    return table


def _mib(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def backward_table(rows: list[BenchRow], device: dict) -> Table | None:
    """Forward+backward of every op whose kernel carries a checked backward, with peak memory; None when
    nothing was timed that way (the CPU, or forward-only kernels)."""
    timed = [r for r in rows if r.verdict.accepted and (r.verdict.backward or {}).get("timing")]
    if not timed:
        return None
    table = Table(title=escape(f"forward+backward · {device.get('name', '?')}"), title_justify="left")
    for column in ("op", "shape", "eager", "compile", "ours", "×eager", "×compile", "other", "rate",
                   "peak MiB ours / eager / compile", "backward"):
        table.add_column(column, justify="left" if column in ("op", "shape", "other", "backward") else "right",
                         no_wrap=True)
    for row in timed:
        backward = row.verdict.backward
        kind = "deterministic" if backward.get("deterministic") else "atomics" \
            if backward.get("deterministic") is False else "—"
        for shape in backward["timing"]["shapes"]:
            peak = shape.get("peak_mib") or {}
            other = escape(", ".join(f"{name} {_us(b['ms'])} ({b['speedup']:.2f}x)"
                                     for name, b in shape.get("baselines", {}).items()) or "—")
            table.add_row(row.op, f"{shape['shape']} {shape['dtype']}", _us(shape["eager_ms"]), _us(shape["compile_ms"]),
                          _us(shape["candidate_ms"]), f"{shape['speedup_eager']:.2f}x",
                          f"{shape['speedup_compile']:.2f}x", other, rate_text(row.op, shape),
                          " / ".join(_mib(peak.get(k)) for k in ("candidate", "eager", "compile")), kind)
    table.caption = ("One forward and the gradients of every floating input, device time, interleaved in one "
                     "process; peak: memory allocated by one call beyond what was allocated before it.")
    return table
