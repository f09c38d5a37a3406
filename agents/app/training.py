"""`evolve train` and `evolve sample`: NanoGPT trained on character data with a progress bar, checkpoints in
nanoGPT's format, both backends side by side with their loss curves drawn, and text sampled from a checkpoint."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kernels.nanogpt import checks
from kernels.nanogpt.choice import install
from kernels.nanogpt.data import CharData, load_data
from kernels.nanogpt.model import CONFIGS, GPT, GPTConfig, config_named
from kernels.nanogpt.train import TrainConfig, load_checkpoint, save_checkpoint, train

from agents.app.assembly import TINY, kernel_choices

BACKENDS = ("triton", "torch", "both")


class TrainUsageError(ValueError):
    """Bad input to train or sample: one line, exit code 2."""


def model_config(name: str, data: CharData, device: str) -> GPTConfig:
    """The named config, with the data's vocabulary (a char model) and, on the CPU, the tiny size the
    interpreter trains in reasonable time."""
    if name not in CONFIGS:
        raise TrainUsageError(f"unknown model config {name!r}; known: {', '.join(CONFIGS)}")
    base = config_named(name)
    if data.vocab_size > base.vocab_size and name != "shakespeare-char":
        raise TrainUsageError(f"the data has {data.vocab_size} tokens, more than {name}'s vocabulary of "
                              f"{base.vocab_size}")
    overrides = {"vocab_size": data.vocab_size} if name == "shakespeare-char" else {}
    if device == "cpu":
        overrides.update(TINY)
    return config_named(name, **overrides)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"),
                    TimeElapsedColumn(), console=console, transient=False)


def run_training(model_name: str, backend: str, steps: int, data_path: str | None, device: str, out: Path,
                 memory_dir: Path, gpu: str, console: Console, batch_size: int | None = None,
                 dtype: str | None = None, cuda_graph: bool = True, init_from: Path | None = None) -> dict:
    if backend not in BACKENDS:
        raise TrainUsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if steps < 1:
        raise TrainUsageError(f"--steps must be at least 1, not {steps}")
    data = load_data(data_path)
    config = model_config(model_name, data, device)
    cpu = device == "cpu"
    cfg = TrainConfig(batch_size=batch_size or (4 if cpu else 64), block_size=config.block_size, steps=steps,
                      learning_rate=3e-3 if cpu else 1e-3, warmup_steps=min(20, steps // 10),
                      dtype=dtype or ("float32" if cpu else "bfloat16"), cuda_graph=cuda_graph and not cpu,
                      log_every=max(1, min(10, steps // 20)))
    choices = kernel_choices(memory_dir, gpu)
    install(choices)
    console.print(f"[bold]evolve train {escape(model_name)}[/] backend={backend} steps={steps} device={device} "
                  f"data={escape(data.source)} ({len(data.train):,} tokens, vocab {data.vocab_size}) "
                  f"batch {cfg.batch_size}x{cfg.block_size} {cfg.dtype}"
                  + (" in one CUDA graph" if cfg.cuda_graph else ""), highlight=False)
    if backend != "torch":
        console.print("kernels: " + escape(", ".join(f"{op} {c.source}" for op, c in choices.items())),
                      style="dim", highlight=False)
    out.mkdir(parents=True, exist_ok=True)
    if backend == "both":
        return _both(config, data, cfg, device, out, console)
    return _one(config, backend, data, cfg, device, out, console, init_from)


def _one(config, backend, data, cfg, device, out, console, init_from) -> dict:
    import torch

    torch.manual_seed(cfg.seed)
    if init_from is not None:
        model, _ = load_checkpoint(init_from, backend, device, expect=config)
    else:
        model = GPT(config, backend).to(device)
    with _progress(console) as progress:
        task = progress.add_task(f"train {backend}", total=cfg.steps, loss="—", rate="—")

        def on_log(point):
            progress.update(task, completed=point.step + 1, loss=f"{point.loss:.4f}",
                            rate=f"{point.tokens_per_s:,.0f}")

        history, stepper = train(model, data, cfg, device, on_log=on_log, val_every=max(cfg.steps // 4, 1),
                                 eval_iters=4 if device == "cpu" else 20)
    val = [p.val_loss for p in history if p.val_loss is not None]
    path = save_checkpoint(out / "ckpt.pt", model, stepper.optimizer, cfg.steps, min(val) if val else float("nan"),
                           cfg, data.itos)
    result = {"backend": backend, "config": asdict(config), "train": asdict(cfg), "checkpoint": str(path),
              "log": [asdict(p) for p in history]}
    (out / "losses.json").write_text(json.dumps(result, indent=2))
    last = history[-1]
    console.print(f"step {last.step}: loss {last.loss:.4f}" + (f", val {val[-1]:.4f}" if val else "")
                  + f", {last.tokens_per_s:,.0f} tokens/s; checkpoint {escape(str(path))}", highlight=False)
    return result


def _both(config, data, cfg, device, out, console) -> dict:
    with _progress(console) as progress:
        tasks = {}

        def on_log(backend, point):
            if backend not in tasks:  # a bar per training run, as the check starts it
                tasks[backend] = progress.add_task(f"train {backend}", total=cfg.steps, loss="—", rate="—")
            progress.update(tasks[backend], completed=point.step + 1, loss=f"{point.loss:.4f}",
                            rate=f"{point.tokens_per_s:,.0f}")

        conv = checks.convergence(config, data, cfg, device, on_log=on_log)
    result = {"config": asdict(config), "train": asdict(cfg), "convergence": conv.to_dict()}
    (out / "curves.json").write_text(json.dumps(result, indent=2))
    picture = plot_curves(conv, out / "curves.png", f"{config.n_layer}L/{config.n_head}H/{config.n_embd}, "
                                                    f"B{cfg.batch_size} T{cfg.block_size} {cfg.dtype}")
    verdict = "[green]within[/]" if conv.passed else "[red]outside[/]"
    own = "" if conv.torch_self_gap is None else (f"; PyTorch against itself, same init and batches: "
                                                  f"{conv.torch_self_gap:.2%}")
    console.print(f"loss curves {verdict} {conv.allowed:.2%} of each other at every logged step "
                  f"(worst gap {conv.worst:.2%}{own}); {escape(str(out / 'curves.json'))}"
                  + (f", {escape(str(picture))}" if picture else ""))
    return result


def plot_curves(conv: checks.Convergence, path: Path, title: str) -> Path | None:
    """Both backends' loss against the step, as a PNG; None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(conv.logged, conv.torch_loss, label="PyTorch backend", linewidth=2)
    if conv.torch_repeat_loss is not None:
        ax.plot(conv.logged, conv.torch_repeat_loss, label="PyTorch backend, again", linewidth=1, color="gray",
                linestyle=":")
    ax.plot(conv.logged, conv.triton_loss, label="Triton backend (the kernels in use)", linewidth=1.2, linestyle="--")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    own = "" if conv.torch_self_gap is None else f" (PyTorch against itself: {conv.torch_self_gap:.2%})"
    ax.set_title(f"NanoGPT {title}: worst gap {conv.worst:.2%}{own}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sample(checkpoint: Path, prompt: str, tokens: int, temperature: float, top_k: int | None, device: str,
           memory_dir: Path, gpu: str, backend: str = "torch", seed: int = 1337) -> str:
    import torch

    if tokens < 1:
        raise TrainUsageError(f"--tokens must be at least 1, not {tokens}")
    if temperature <= 0:
        raise TrainUsageError(f"--temperature must be greater than 0, not {temperature}")
    install(kernel_choices(memory_dir, gpu))
    model, state = load_checkpoint(checkpoint, backend, device)
    itos = state.get("itos")
    if not itos:
        raise TrainUsageError(f"{checkpoint} has no vocabulary (itos) to decode tokens with")
    data = CharData(None, None, len(itos), {int(k): v for k, v in itos.items()}, str(checkpoint))
    ids = data.encode(prompt or "\n")
    if len(ids) > model.config.block_size:
        raise TrainUsageError(f"the prompt is {len(ids)} tokens, longer than the block size {model.config.block_size}")
    torch.manual_seed(seed)
    model.eval()
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(idx, tokens, temperature=temperature, top_k=top_k)
    return data.decode(out[0].tolist())


def default_out(runs_dir: Path, model_name: str) -> Path:
    return Path(runs_dir) / f"train-{time.strftime('%Y%m%d-%H%M%S')}-{model_name}"
