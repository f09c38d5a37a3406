"""The `evolve` command.

Exit codes: 0 success (for `eval`: accepted), 1 a rejected or failed candidate or a failed run,
2 bad input (unknown op or target, missing file, malformed config, no GPU for --device cuda, no usable
LLM server for --coder llm|mixed).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import torch

if not torch.cuda.is_available():
    # the model's Triton kernels (train, sample) run in Triton's interpreter without a GPU; this must be set
    # before triton is first imported, as the evaluator's sandboxes set it for themselves
    os.environ.setdefault("TRITON_INTERPRET", "1")

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agents.config import Config, ConfigError, load_config, resolve_config
from agents.app.report import print_run, runs_table
from agents.run_folder import RunFolder, RunNotFound, list_runs
from agents.app.runner import (UsageError, evaluator_settings, interrupt_on_sigterm, resolve_device, resume_target,
                               run_target)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evolve fast, verified Triton kernels for NanoGPT.")
console = Console()
if not console.is_terminal:
    # piped output (logs, CI) is not bound to a terminal's width: keep tables whole instead of 80 columns
    console = Console(width=max(console.width, 140))


def _fail(message: str, code: int = 2) -> None:
    # plain text: one line whatever the terminal width, and brackets such as [run].budget stay as written
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise typer.Exit(code)


def _message(exc: Exception) -> str:
    # a KeyError's str() wraps its message in quotes; other exceptions read as they are
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _children() -> list[int]:
    """This process's live children (Linux: /proc), or none where that cannot be read."""
    pids: list[int] = []
    for listing in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids.extend(int(pid) for pid in listing.read_text().split())
        except (OSError, ValueError):
            continue
    return pids


def _interrupted() -> typer.Exit:
    """Exit 130 after Ctrl-C or SIGTERM, first killing any child the evaluator did not stop on its way out (a
    fork server interrupted while it was starting): an interrupted command leaves no process behind."""
    for pid in _children():
        try:
            if os.getpgid(pid) == pid:  # a fork server leads its own process group
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return typer.Exit(130)


def _readable_text(file: Path) -> None:
    """A candidate must be a UTF-8 text file (the evaluator reads it as such); anything else is bad input."""
    if not file.is_file():
        raise UsageError(f"no such candidate file: {file}")
    try:
        file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the candidate file {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"the candidate file {file} is not UTF-8 text (invalid byte at offset {exc.start})") from None


def print_verdict(out: Console, op: str, file: Path, verdict) -> None:
    """The verdict for humans. Its detail is the candidate's own text (exception messages, source lines) and
    the file name is the user's: both are escaped, so rich prints them as written and never parses markup."""
    style = {"accepted": "green", "rejected": "yellow", "failed": "red"}[verdict.status]
    out.print(f"[{style}]{verdict.status}[/] {escape(f'{op} {file}: {verdict.reason()}')}", highlight=False)
    if verdict.timing:
        for shape in verdict.timing["shapes"]:
            out.print(f"  {shape['shape']} {shape['dtype']}: {shape['candidate_ms'] * 1e3:.1f} us, "
                      f"eager {shape['eager_ms'] * 1e3:.1f} us, compile {shape['compile_ms'] * 1e3:.1f} us, "
                      f"{shape['gbps']:,.0f} GB/s ({shape['roofline_fraction']:.0%})", markup=False)
    backward = verdict.backward or {}
    checks = backward.get("checks") or []
    if checks:
        out.print(f"  gradients: {sum(1 for c in checks if c.get('passed'))}/{len(checks)} shape×dtype checked, "
                  f"backward {'deterministic' if backward.get('deterministic') else 'with atomics' if backward.get('deterministic') is False else 'checked'}",
                  markup=False)
    for shape in (backward.get("timing") or {}).get("shapes", []):
        peak = shape.get("peak_mib") or {}
        out.print(f"  forward+backward {shape['shape']} {shape['dtype']}: {shape['candidate_ms'] * 1e3:.1f} us, eager "
                  f"{shape['eager_ms'] * 1e3:.1f} us, compile {shape['compile_ms'] * 1e3:.1f} us, peak "
                  f"{peak.get('candidate', 0):,.0f} MiB (eager {peak.get('eager', 0):,.0f}, compile "
                  f"{peak.get('compile', 0):,.0f})", markup=False)
    if verdict.phases:
        spent = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in verdict.phases.items())
        out.print(f"  judged in {verdict.seconds:.1f} s: {spent}", markup=False)
    timed = sorted(((c["seconds"], "gradient " if kind else "", c) for kind, group in ((0, verdict.checks), (1, checks))
                    for c in group if isinstance(c.get("seconds"), (int, float))), key=lambda t: -t[0])
    if timed:
        dearest = ", ".join(f"{how}{c['shape']} {c['dtype']}{' ' + c['variant'] if c.get('variant') else ''} "
                            f"{seconds:.1f} s" for seconds, how, c in timed[:3])
        out.print(f"  dearest checks: {dearest}", markup=False)


def _config(ctx: typer.Context) -> Config:
    # the LLM endpoint is checked by `run` for the coder it ends up with (--coder), never for reports
    try:
        return resolve_config(ctx.obj, check_llm=False)
    except ConfigError as exc:
        _fail(str(exc))


@app.callback()
def main(ctx: typer.Context,
         config: Optional[Path] = typer.Option(None, "--config", help="config.toml to use (default: ./config.toml, "
                                                                      "$EVOLVE_CONFIG, or the project's)")):
    ctx.obj = config
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C for every command: the evaluator's context managers stop its sandboxes and
        # a run's summary says "interrupted"; the previous handler comes back when the command is done
        previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
        ctx.call_on_close(lambda: signal.signal(signal.SIGTERM, previous))


@app.command()
def run(ctx: typer.Context,
        target: Optional[str] = typer.Argument(None, help="what to evolve: nanogpt, microgpt, fmha, or a target "
                                                          ".toml file (left out with --resume)"),
        ops: Optional[str] = typer.Option(None, "--ops", help="comma-separated subset of the target's ops"),
        budget: Optional[int] = typer.Option(None, "--budget", help="candidates per op"),
        coder: Optional[str] = typer.Option(None, "--coder", help="template | llm | mixed (the model writes "
                                                                  "candidates; mixed shares the budget by "
                                                                  "[llm].mixed_share)"),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cuda | cpu"),
        no_memory: bool = typer.Option(False, "--no-memory", help="ignore rules and promoted kernels; write nothing "
                                                                  "to memory"),
        seed: Optional[int] = typer.Option(None, "--seed", help="seed of the coder's search choices (inputs stay "
                                                                "random)"),
        llm_replay: Optional[str] = typer.Option(None, "--llm-replay", metavar="RUN",
                                                 help="re-run RUN with its recorded LLM answers; no server needed"),
        assemble: Optional[bool] = typer.Option(None, "--assemble/--no-assemble",
                                                help="end with the NanoGPT build ([model].assemble)"),
        training: Optional[bool] = typer.Option(None, "--training/--inference",
                                                help="evolve forward and backward, timed together, or the "
                                                     "forward only ([run].training)"),
        workers: Optional[int] = typer.Option(None, "--workers", help="evaluators judging candidates at once "
                                                                      "([run].workers); the result does not "
                                                                      "depend on it"),
        resume: Optional[str] = typer.Option(None, "--resume", metavar="RUN",
                                             help="continue an interrupted run (an id, a path or 'latest') "
                                                  "where it stopped, with the settings it ran with")):
    """Evolve the target's ops: plan, propose, evaluate, select, promote; then build NanoGPT from them."""
    config = _config(ctx)
    if resume is not None:
        given = {"--ops": ops, "--budget": budget, "--coder": coder, "--device": device, "--seed": seed,
                 "--llm-replay": llm_replay, "--assemble": assemble, "--training": training}
        extra = [flag for flag, value in given.items() if value is not None] + (["--no-memory"] if no_memory else [])
        if extra:
            _fail(f"--resume continues a run with the settings it ran with; leave out {', '.join(extra)}")
        try:
            folder = resume_target(config, resume, console, target, workers)
        except (UsageError, ConfigError, KeyError) as exc:
            _fail(_message(exc))
        except KeyboardInterrupt:
            raise _interrupted()
        except Exception as exc:
            _fail(f"the run failed: {type(exc).__name__}: {exc} (details in the run folder's events.jsonl)", 1)
        print_run(console, folder)
        return
    if target is None:
        _fail("evolve run needs a TARGET (nanogpt, microgpt, fmha or a target .toml file), or --resume RUN")
    if assemble is not None:
        import dataclasses

        config = dataclasses.replace(config, model=dataclasses.replace(config.model, assemble=assemble))
    try:
        if llm_replay is not None:
            config = config.with_run(check_llm=False, device=device, training=training, workers=workers)
            folder = run_target(config, target, ops, not no_memory, console, seed=seed, replay=llm_replay,
                                replay_flags={"coder": coder, "budget": budget})
        else:
            config = config.with_run(budget=budget, coder=coder, device=device, training=training, workers=workers)
            folder = run_target(config, target, ops, not no_memory, console, seed=seed)
    except (UsageError, ConfigError, KeyError) as exc:
        _fail(_message(exc))
    except KeyboardInterrupt:
        raise _interrupted()
    except Exception as exc:
        _fail(f"the run failed: {type(exc).__name__}: {exc} (details in the run folder's events.jsonl)", 1)
    print_run(console, folder)


@app.command("eval")
def evaluate(ctx: typer.Context,
             op: str = typer.Argument(..., help="op name, e.g. layer_norm"),
             file: Path = typer.Argument(..., help="candidate source file"),
             as_json: bool = typer.Option(False, "--json", help="print the verdict as one JSON object"),
             device: Optional[str] = typer.Option(None, "--device", help="auto | cuda | cpu"),
             training: Optional[bool] = typer.Option(None, "--training/--inference",
                                                     help="also check (and time) a differentiable candidate's "
                                                          "backward, or the forward only ([run].training)")):
    """Evaluate one candidate file: exit 0 if accepted, 1 if rejected or failed."""
    from evaluators import Evaluator, JudgeError, SandboxLost
    from kernels import get_spec

    config = _config(ctx)
    try:
        get_spec(op)
        _readable_text(file)
        config = config.with_run(device=device, training=training)
        resolved = resolve_device(config.run.device)
    except (UsageError, ConfigError, KeyError) as exc:
        _fail(_message(exc))
    try:
        with Evaluator(evaluator_settings(config, resolved)) as evaluator:
            verdict = evaluator.evaluate(op, file)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the evaluator stopped its sandboxes on the way out
        raise _interrupted()
    except (JudgeError, SandboxLost) as exc:  # the evaluator's own failure, never the candidate's
        _fail(f"the evaluator failed: {exc}", 1)
    if as_json:
        sys.stdout.write(verdict.to_json() + "\n")
    else:
        print_verdict(console, op, file, verdict)
    raise typer.Exit(0 if verdict.accepted else 1)


@app.command()
def runs(ctx: typer.Context):
    """List the runs in the runs folder."""
    config = _config(ctx)
    folders = list_runs(config.run.runs_dir)
    if not folders:
        console.print(f"no runs in {config.run.runs_dir}", markup=False)
        return
    console.print(runs_table(folders))


@app.command()
def compare(ctx: typer.Context,
            cold: str = typer.Argument(..., metavar="COLD", help="the run without memory (--no-memory)"),
            warm: str = typer.Argument(..., metavar="WARM", help="the run of the same ops with memory"),
            as_json: bool = typer.Option(False, "--json", help="print the comparison as JSON")):
    """What memory saved: per op, the candidates and seconds each run needed to come within 2% of the
    better run's best."""
    from agents.app.compare import CompareError, compare_runs, compare_table

    config = _config(ctx)
    try:
        result = compare_runs(RunFolder.open(config.run.runs_dir, cold), RunFolder.open(config.run.runs_dir, warm))
    except (RunNotFound, CompareError) as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        console.print(compare_table(result))


@app.command()
def report(ctx: typer.Context,
           run_id: str = typer.Argument("latest", metavar="RUN", help="run id, or latest"),
           as_json: bool = typer.Option(False, "--json", help="print summary.json"),
           as_html: bool = typer.Option(False, "--html", help="write report.html into the run folder: one "
                                                             "self-contained page (plots, lineage, sources)"),
           as_md: bool = typer.Option(False, "--md", help="write report.md into the run folder (the same "
                                                         "content as markdown)")):
    """Per op: best speedups vs eager and torch.compile, roofline fraction, candidates, failure classes."""
    config = _config(ctx)
    if sum((as_json, as_html, as_md)) > 1:
        _fail("choose one of --json, --html and --md")
    try:
        folder = RunFolder.open(config.run.runs_dir, run_id)
    except RunNotFound as exc:
        _fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(folder.summary, indent=2) + "\n")
    elif as_html or as_md:
        from agents.app.html_report import write_html, write_markdown

        path = (write_html if as_html else write_markdown)(folder)
        console.print(f"wrote {escape(str(path))}", highlight=False)
    else:
        print_run(console, folder)


@app.command()
def export(ctx: typer.Context,
           run_id: str = typer.Argument("latest", metavar="RUN", help="run id, or latest"),
           out: Path = typer.Option(..., "--out", help="a new (or empty) folder for the package"),
           name: str = typer.Option("evolved_kernels", "--name", help="the package's import name"),
           version: str = typer.Option("0.1.0", "--version", help="the package's version")):
    """Write the run's kernels as a pip-installable package: every GPU's promoted kernels, the seeds as the
    fallback, the custom ops, the NanoGPT model, patch(model), MANIFEST.json and its own tests."""
    from agents.app.export import ExportError, export_run

    config = _config(ctx)
    try:
        folder = RunFolder.open(config.run.runs_dir, run_id)
        manifest = export_run(folder, Path(config.run.memory_dir), out, name, version)
    except (RunNotFound, ExportError) as exc:
        _fail(str(exc))
    console.print(f"exported {len(manifest['kernels'])} promoted kernels as {escape(name)} {escape(version)} into "
                  f"{escape(str(out))}; install it with: pip install {escape(str(out))}", highlight=False)


@app.command()
def memory(ctx: typer.Context,
           action: str = typer.Argument("list", help="list | show"),
           rule_id: Optional[str] = typer.Argument(None, metavar="ID", help="rule id for show")):
    """The rulebook (with evidence from runs) and the promoted kernels."""
    from memory import KernelStore, MemoryStoreError, Rulebook

    config = _config(ctx)
    try:
        book = Rulebook.load(config.run.memory_dir)
    except MemoryStoreError as exc:
        _fail(str(exc))
    if action == "list":
        # learned rules are written by the model: every cell is escaped so rich never reads it as markup
        table = Table(title=escape(f"rulebook ({config.run.memory_dir})"), title_justify="left")
        for column in ("id", "kind", "op", "confidence", "evidence", "origin"):
            table.add_column(column, no_wrap=column in ("id", "evidence"))
        for rule in book.rules:
            tally = rule.tally()
            table.add_row(*map(escape, (rule.id, rule.kind, rule.op, f"{rule.current_confidence:.2f}",
                                        f"+{tally['confirmed']} -{tally['refuted']} ?{tally['inconclusive']}",
                                        rule.origin)))
        console.print(table)
        try:
            kernels = KernelStore(config.run.memory_dir).all()
        except MemoryStoreError as exc:
            _fail(str(exc))
        for kernel in kernels:
            speed = kernel.metrics.get("speedup_eager")
            shown = f"{speed:.2f}x eager" if speed is not None else "speed not measured"
            console.print(f"promoted {kernel.op} on {kernel.gpu}: {shown} ({kernel.path})", markup=False)
    elif action == "show":
        if not rule_id:
            _fail("memory show needs a rule id")
        try:
            rule = book.get(rule_id)
        except KeyError as exc:
            _fail(_message(exc))
        console.print(f"[bold]{escape(rule.id)}[/] "
                      + escape(f"({rule.kind}, op {rule.op}, origin {rule.origin}, learned on {rule.learned_on})\n"
                               f"{rule.statement}\nwhen {rule.when} suggests {rule.suggests}\n"
                               f"confidence {rule.confidence:.2f} -> {rule.current_confidence:.2f} with evidence:"))
        for gpu, tally in rule.verdicts_by_gpu().items():
            console.print(f"  on {gpu}: confidence {rule.confidence_on(gpu):.2f} (+{tally['confirmed']} "
                          f"-{tally['refuted']} ?{tally['inconclusive']})", markup=False)
        for ev in rule.evidence:
            console.print(f"  {ev.date} {ev.gpu} {ev.run}: {ev.verdict} {ev.effect}", markup=False)
    else:
        _fail(f"unknown memory action {action!r}: list or show")


@app.command()
def bench(ctx: typer.Context,
          target: str = typer.Argument(..., help="what to measure: nanogpt"),
          ops: Optional[str] = typer.Option(None, "--ops", help="comma-separated subset of the target's ops"),
          device: Optional[str] = typer.Option(None, "--device", help="auto | cuda | cpu"),
          as_json: bool = typer.Option(False, "--json", help="print the rows as one JSON object"),
          model: Optional[str] = typer.Option(None, "--model", help="gpt2 | shakespeare-char: the whole model "
                                                                    "(training step and inference) instead of "
                                                                    "the ops"),
          variants: Optional[str] = typer.Option(None, "--variants", help="with --model: a comma-separated "
                                                                         "subset of eager, compile, compile-ro, "
                                                                         "ours, ours-graph, ours-compile"),
          only: Optional[str] = typer.Option(None, "--only", help="with --model: train | inference"),
          profile: bool = typer.Option(False, "--profile", help="with --model: also where our training "
                                                                 "step's device time goes, kernel by kernel"),
          training: Optional[bool] = typer.Option(None, "--training/--inference",
                                                  help="the ops: also forward+backward with peak memory, or the "
                                                       "forward only ([run].training)"),
          workers: Optional[int] = typer.Option(None, "--workers", help="the ops: evaluators judging them at "
                                                                        "once ([run].workers)")):
    """Per op, the kernel in use (promoted for this GPU, else the seed) against eager and torch.compile;
    with --model, the whole model against PyTorch eager and torch.compile."""
    if model is not None:
        _bench_model(ctx, target, model, device, as_json, profile, variants, only)
        return
    from memory import MemoryStoreError

    from evaluators import JudgeError, SandboxLost

    from agents.app.bench import BenchInterrupted, backward_table, bench_table, bench_target

    config = _config(ctx)
    interrupted = False
    try:
        config = config.with_run(device=device, training=training, workers=workers)
        quiet = Console(file=sys.stderr) if as_json else console
        rows, info = bench_target(config, target, ops, quiet)
    except (UsageError, ConfigError, KeyError, MemoryStoreError) as exc:
        _fail(_message(exc))
    except BenchInterrupted as stopped:  # the ops measured so far are reported, then the interruption
        rows, info, interrupted = stopped.rows, stopped.device, True
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the evaluator stopped its sandboxes on the way out
        raise _interrupted()
    except (JudgeError, SandboxLost) as exc:  # the evaluator's own failure, never the candidate's
        _fail(f"the evaluator failed: {exc}", 1)
    if as_json:
        sys.stdout.write(json.dumps({"device": info, "rows": [r.to_dict() for r in rows], "interrupted": interrupted},
                                    indent=2) + "\n")
        if interrupted:
            raise _interrupted()
    elif rows or not interrupted:
        console.print(bench_table(rows, info))
        train = backward_table(rows, info)
        if train is not None:
            console.print(train)
    if interrupted:
        raise _interrupted()
    raise typer.Exit(0 if all(r.verdict.accepted for r in rows) else 1)


def _bench_model(ctx: typer.Context, target: str, model: str, device: Optional[str], as_json: bool,
                 profile: bool, variants: Optional[str], only: Optional[str]) -> None:
    from agents.app.assembly import kernel_choices
    from agents.app.model_bench import SHAPES, VARIANTS, bench_model, model_table, profile_step, profile_table

    chosen = VARIANTS if variants is None else tuple(v.strip() for v in variants.split(","))
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown or not chosen:
        _fail(f"unknown variant(s) {', '.join(unknown) or '(none)'}; known: {', '.join(VARIANTS)}")

    config = _config(ctx)
    if only not in (None, "train", "inference"):
        _fail(f"--only {only!r}: train or inference")
    if target != "nanogpt":
        _fail(f"--model is a model of the nanogpt target, not of {target!r}")
    if model not in SHAPES:
        _fail(f"unknown model config {model!r}; known: {', '.join(SHAPES)}")
    try:
        if resolve_device(device or config.run.device) != "cuda":
            _fail("the model benchmark times a GPU: it needs CUDA (on the CPU, `evolve run nanogpt` checks the "
                  "model's parity and convergence)")
    except UsageError as exc:
        _fail(str(exc))
    from kernels.nanogpt.choice import install

    install(kernel_choices(Path(config.run.memory_dir), torch.cuda.get_device_name()))
    quiet = Console(file=sys.stderr) if as_json else console
    try:
        result = bench_model(model, chosen, kinds=(only,) if only else ("train", "inference"), on_row=lambda r: quiet.print(
            f"[cyan]bench[/] {r.kind} {r.variant} B{r.batch} T{r.seq}: "
            + (f"{r.ms:.3f} ms" if r.ms is not None else f"[red]failed[/] {escape(r.error or '')}"), highlight=False))
        if profile:
            result["profile"] = profile_step(model)
    except KeyboardInterrupt:
        raise _interrupted()
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        console.print(model_table(result))
        if profile:
            console.print(profile_table(result["profile"]))
    raise typer.Exit(0 if all(r["ms"] is not None for r in result["rows"]) else 1)


def _train_device(config: Config, device: Optional[str]) -> tuple[str, str]:
    from memory import INTERPRETER_GPU

    try:
        resolved = resolve_device(device or config.run.device)
    except UsageError as exc:
        _fail(str(exc))
    return resolved, (torch.cuda.get_device_name() if resolved == "cuda" else INTERPRETER_GPU)


@app.command()
def train(ctx: typer.Context,
          model: str = typer.Argument("shakespeare-char", help="shakespeare-char | gpt2 (on the CPU: a tiny "
                                                               "model of the same shape of config)"),
          backend: str = typer.Option("triton", "--backend", help="triton | torch | both (same init, same "
                                                                   "batches; loss curves drawn side by side)"),
          steps: int = typer.Option(200, "--steps", help="training steps"),
          data: Optional[str] = typer.Option(None, "--data", help="a text file or a prepared folder "
                                                                 "(train.bin, val.bin, meta.pkl); default: "
                                                                 "the generated corpus"),
          out: Optional[Path] = typer.Option(None, "--out", help="folder for ckpt.pt and the loss log "
                                                                 "(default: a new folder under runs/)"),
          device: Optional[str] = typer.Option(None, "--device", help="auto | cuda | cpu"),
          batch_size: Optional[int] = typer.Option(None, "--batch-size", help="sequences per step"),
          dtype: Optional[str] = typer.Option(None, "--dtype", help="bfloat16 | float16 | float32 (activations)"),
          cuda_graph: bool = typer.Option(True, "--cuda-graph/--no-cuda-graph", help="on a GPU, capture the "
                                                                                    "whole step in one CUDA graph"),
          init_from: Optional[Path] = typer.Option(None, "--init-from", help="start from this checkpoint (of "
                                                                             "the same config)")):
    """Train NanoGPT on character data; checkpoints in nanoGPT's format."""
    from kernels.nanogpt.data import DataError
    from kernels.nanogpt.train import DTYPES, CheckpointError

    from agents.app.training import TrainUsageError, default_out, run_training

    config = _config(ctx)
    if dtype is not None and dtype not in DTYPES:
        _fail(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if batch_size is not None and batch_size < 1:
        _fail(f"--batch-size must be at least 1, not {batch_size}")
    resolved, gpu = _train_device(config, device)
    try:
        run_training(model, backend, steps, data, resolved, out or default_out(config.run.runs_dir, model),
                     Path(config.run.memory_dir), gpu, console, batch_size, dtype, cuda_graph, init_from)
    except (TrainUsageError, DataError, CheckpointError) as exc:
        _fail(str(exc))
    except ValueError as exc:  # the model's own checks (e.g. a sequence longer than the block size)
        _fail(str(exc))
    except KeyboardInterrupt:
        raise _interrupted()


@app.command()
def sample(ctx: typer.Context,
           checkpoint: Path = typer.Argument(..., help="a ckpt.pt written by `evolve train` (or nanoGPT, with "
                                                       "its vocabulary)"),
           prompt: str = typer.Option("\n", "--prompt", help="text to continue"),
           tokens: int = typer.Option(300, "--tokens", help="characters to generate"),
           temperature: float = typer.Option(0.8, "--temperature"),
           top_k: Optional[int] = typer.Option(200, "--top-k"),
           backend: str = typer.Option("torch", "--backend", help="torch | triton"),
           device: Optional[str] = typer.Option(None, "--device", help="auto | cuda | cpu"),
           seed: int = typer.Option(1337, "--seed")):
    """Print text generated by a trained checkpoint."""
    from kernels.nanogpt.data import DataError
    from kernels.nanogpt.train import CheckpointError

    from agents.app.training import TrainUsageError, sample as generate

    config = _config(ctx)
    if backend not in ("torch", "triton"):
        _fail(f"unknown backend {backend!r}; choose torch or triton")
    resolved, gpu = _train_device(config, device)
    try:
        text = generate(checkpoint, prompt, tokens, temperature, top_k, resolved, Path(config.run.memory_dir), gpu,
                        backend, seed)
    except (TrainUsageError, DataError, CheckpointError, ValueError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        raise _interrupted()
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    app()
