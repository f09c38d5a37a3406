"""The NanoGPT build: the model assembled from the kernels promoted for this device (else the seeds), its
invariants, parity with PyTorch, a short convergence check of both backends and, on a GPU, the model bench.

It runs in a process of its own (`python -m agents.app.assembly`): promoted kernels are imported and run
there, never in the judge's process, and a crash or a GPU fault of the model leaves the run standing.
The parent streams the worker's progress lines and reads its result, a JSON file.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from memory import INTERPRETER_GPU, KernelStore
from memory.promoted import PromotedKernel

# the tiny model the CPU interpreter can train in seconds: 2 layers, 2 heads of 16
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=16)


def choice_of(op: str, promoted: PromotedKernel):
    """The promoted kernel as the model runs it: its template point if it is one, else its file's entry."""
    from kernels.nanogpt import choice

    params = (promoted.lineage or {}).get("params")
    return choice.from_promoted(op, params, promoted.path, f"promoted {promoted.path}")


def kernel_choices(memory_dir: Path | None, gpu: str) -> dict:
    """op -> KernelChoice: this device's promoted kernel for each of the model's ops, else the seed."""
    from kernels.nanogpt import choice

    store = KernelStore(Path(memory_dir)) if memory_dir is not None else None
    out = {}
    for op in choice.MODEL_OPS:
        promoted = store.best(op, gpu) if store is not None else None
        out[op] = choice.seed(op) if promoted is None else choice_of(op, promoted)
    return out


def _say(message: str) -> None:
    print(message, flush=True)


def build_and_check(memory_dir: Path | None, device: str, bench: bool, steps: int | None = None) -> dict:
    """Everything the assembly stage reports, as plain data (the worker's body)."""
    import torch

    from kernels.nanogpt import checks, choice
    from kernels.nanogpt.data import load_data
    from kernels.nanogpt.model import GPT, config_named
    from kernels.nanogpt.train import TrainConfig

    gpu = torch.cuda.get_device_name() if device == "cuda" else INTERPRETER_GPU
    choices = kernel_choices(memory_dir, gpu)
    choice.install(choices)
    result: dict = {"device": gpu, "kernels": {op: c.source for op, c in choices.items()}}
    _say(f"kernels: {', '.join(f'{op} {c.source}' for op, c in choices.items())}")

    data = load_data()
    if device == "cuda":
        config = config_named("shakespeare-char", vocab_size=data.vocab_size)
        dtypes = ("float32", "bfloat16")
        train = TrainConfig(batch_size=64, block_size=256, steps=steps or 100, dtype="bfloat16", log_every=10)
    else:
        config = config_named("shakespeare-char", vocab_size=data.vocab_size, **TINY)
        dtypes = ("float32",)
        train = TrainConfig(batch_size=2, block_size=TINY["block_size"], steps=steps or 30, learning_rate=3e-3,
                            warmup_steps=5, dtype="float32", log_every=5)
    torch.manual_seed(0)
    model = GPT(config, "triton").to(device)
    result["invariants"] = [vars(i) for i in checks.invariants(model)]
    del model
    _say("invariants: " + ", ".join(f"{i['name']} {'ok' if i['passed'] else 'FAILED'}" for i in result["invariants"]))
    result["parity"] = []
    for dtype in dtypes:
        p = checks.parity(config, device, dtype).to_dict()
        result["parity"].append(p)
        _say(f"parity {dtype}: {'ok' if p['passed'] else 'FAILED'}, worst {p['worst']} {p['worst_error']:.2e}")
    _say(f"convergence: both backends, {train.steps} steps of {train.batch_size}x{train.block_size}")
    conv = checks.convergence(config, data, train, device,
                              on_log=lambda b, p: _say(f"  {b} step {p.step}: loss {p.loss:.4f}"))
    result["convergence"] = conv.to_dict()
    own = "" if conv.torch_self_gap is None else f", PyTorch against itself {conv.torch_self_gap:.2%}"
    _say(f"convergence: worst gap {conv.worst:.2%}{own} ({'ok' if conv.passed else 'FAILED'})")
    if bench and device == "cuda":
        from agents.app.model_bench import bench_model

        result["bench"] = {}
        for name in ("shakespeare-char", "gpt2"):
            _say(f"bench {name}")
            result["bench"][name] = bench_model(name, on_row=lambda r: _say(
                f"  {r.kind} {r.variant} B{r.batch} T{r.seq}: " + (f"{r.ms:.3f} ms" if r.ms else f"failed: {r.error}")))
    result["passed"] = (all(i["passed"] for i in result["invariants"]) and all(p["passed"] for p in result["parity"])
                        and result["convergence"]["passed"])
    return result


def assemble(memory_dir: Path | None, device: str, out: Path, bench: bool, on_line: Callable[[str], None],
             steps: int | None = None, timeout_s: float = 3600) -> dict:
    """Run the assembly stage in a fresh process; returns its result (or {"passed": False, "error": ...})."""
    cmd = [sys.executable, "-m", "agents.app.assembly", "--device", device, "--out", str(out)]
    if memory_dir is not None:
        cmd += ["--memory", str(memory_dir)]
    if bench:
        cmd.append("--bench")
    if steps:
        cmd += ["--steps", str(steps)]
    env = dict(os.environ)
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    tail: list[str] = []
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail = (tail + [line])[-20:]
            on_line(line)
            if time.monotonic() - started > timeout_s:
                proc.kill()
                break
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code == 0 and out.is_file():
        return json.loads(out.read_text())
    last = next((line for line in reversed(tail) if line.strip()), "no output")
    return {"passed": False, "error": f"the assembly process exited with {code}: {last}"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents.app.assembly")
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--memory", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    result = build_and_check(args.memory, args.device, args.bench, args.steps)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
