"""Rich tables of runs and of one run's results, read from the run folders alone."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agents.app.throughput import throughput, throughput_lines
from agents.run_folder import RunFolder


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _fraction(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def rate_text(op: str, best: dict) -> str:
    """GB/s for a memory-bound op, TFLOP/s for a compute-bound one (what its roofline is measured by)."""
    from kernels import get_spec

    try:
        compute = get_spec(op).bound == "compute"
    except KeyError:  # an op of an older version of the project
        compute = False
    value = best.get("tflops") if compute else best.get("gbps")
    if value is None:
        return "—"
    return f"{value:,.0f} TF/s" if compute else f"{value:,.0f} GB/s"


def run_table(folder: RunFolder) -> Table:
    s = folder.summary
    device = s.get("device") or {}
    timed = device.get("arch") != "interpreter"
    title = (f"run {s['run_id']} · {s['target']} · {folder.status()} · {device.get('name', '?')} "
             f"({device.get('arch', '?')}, torch {device.get('torch', '?')}, triton {device.get('triton', '?')})")
    # titles and cells are rich markup: values read from a run folder are escaped to print as written
    table = Table(title=escape(title), title_justify="left")
    # forward+backward columns when the run timed any (a training run on a GPU)
    train = any((o.get("best") or {}).get("train_speedup_compile") is not None for o in s["ops"].values())
    # short headers: the table fits an 80-column terminal (the caption says what the ratios are)
    columns = ["op", "tried", "ok", "best", "×eager", "×compile", "roofline", "rate"]
    columns += ["f+b ×eager", "f+b ×compile"] if train else []
    for column in (*columns, "bwd", "failures", "promoted"):
        table.add_column(column, justify="left" if column in ("op", "failures", "best", "bwd") else "right",
                         no_wrap=column in ("op", "best"))
    for op, o in s["ops"].items():
        best = o.get("best") or {}
        failures = ", ".join(f"{k} {v}" for k, v in sorted(o["failures"].items())) or "—"
        cells = [op, str(o["candidates"]), str(o["accepted"]),
                 str(best.get("candidate", "—")) + (f" {best['origin']}" if best.get("origin") else ""),
                 _ratio(best.get("speedup_eager")), _ratio(best.get("speedup_compile")),
                 _fraction(best.get("roofline_fraction")), rate_text(op, best)]
        if train:
            cells += [_ratio(best.get("train_speedup_eager")), _ratio(best.get("train_speedup_compile"))]
        cells += [_backward_kind(best), failures, "yes" if o.get("promoted") else "no"]
        table.add_row(*map(escape, cells))
    if not timed:
        table.caption = "Speed not measured: the run used Triton's CPU interpreter (correctness only)."
    else:
        table.caption = "×eager, ×compile: the best's speedup over PyTorch eager and torch.compile, same process."
        if train:
            table.caption += " f+b: of forward and backward together."
        if device.get("ceilings"):
            c = device["ceilings"]
            table.caption += (f"\nRoofline against measured ceilings: copy {c['copy_gbps']:,.0f} GB/s, "
                              f"bf16 matmul {c['matmul_tflops']:,.0f} TFLOP/s.")
    return table


def _backward_kind(best: dict) -> str:
    """What the best's backward is: checked and deterministic, checked with atomics, or none (forward only)."""
    if not best:
        return "—"
    if not best.get("backward"):
        return "none"
    return {True: "determ.", False: "atomics"}.get(best.get("deterministic"), "checked")


def _usage(u: dict) -> str:
    failed = f" ({u['failed_calls']} without an answer)" if u.get("failed_calls") else ""
    return (f"{u['calls']} calls{failed}, {u['prompt_tokens']:,} prompt + {u['completion_tokens']:,} completion "
            f"tokens, cost {u['cost']:.4f}")


def llm_lines(summary: dict) -> list[str]:
    """The ledger of a run that used the model: the run's totals, its budget, and each op's share."""
    llm = summary.get("llm")
    if not llm:
        return []
    source = f"replay of {llm['replay_of']}" if llm.get("replay_of") else llm["model"]
    lines = [f"LLM ({llm['coder']} coder, {source}): {_usage(llm)}"]
    budget = llm.get("budget") or {}
    limits = [f"{budget['tokens']:,} tokens" if budget.get("tokens") else "",
              f"cost {budget['cost']:.4f}" if budget.get("cost") else ""]
    if any(limits):
        lines.append("  budget: " + ", ".join(x for x in limits if x)
                     + (f"; {llm['budget_spent']}" if llm.get("budget_spent") else ""))
    for op, o in summary["ops"].items():
        if o.get("llm"):
            lines.append(f"  {op}: {_usage(o['llm'])}")
    return lines


def model_lines(summary: dict) -> list[str]:
    """The NanoGPT build of a run (summary["model"]): kernels, invariants, parity and convergence."""
    model = summary.get("model")
    if not model:
        return []
    if model.get("error"):
        return [f"NanoGPT build: failed: {model['error']}"]
    lines = [f"NanoGPT build: {'passed' if model.get('passed') else 'FAILED'} on {model.get('device', '?')}",
             "  kernels: " + ", ".join(f"{op} {src}" for op, src in (model.get("kernels") or {}).items())]
    invariants = model.get("invariants") or []
    lines.append("  invariants: " + ", ".join(f"{i['name']} {'ok' if i['passed'] else 'FAILED: ' + i['detail']}"
                                              for i in invariants))
    for p in model.get("parity") or []:
        verdict = "ok" if p["passed"] else "FAILED: " + "; ".join(p["failures"])
        lines.append(f"  parity {p['dtype']}: {verdict} (logits error {p['logits_error']:.1e}, worst "
                     f"{p['worst']} {p['worst_error']:.1e})")
    conv = model.get("convergence")
    if conv:
        own = "" if conv.get("torch_self_gap") is None else f"; PyTorch against itself {conv['torch_self_gap']:.2%}"
        # a build recorded before PyTorch's own gap was measured allowed its tolerance alone
        allowed = conv.get("allowed", conv.get("tolerance"))
        lines.append(f"  convergence: {conv['steps']} steps, worst gap {conv['worst_relative_gap']:.2%} "
                     f"(allowed {allowed:.2%}{own}): {'ok' if conv['passed'] else 'FAILED'}")
    return lines


def handover_lines(folder: RunFolder) -> list[str]:
    """What earlier studies handed this run, per op, from its plan events: the kernel it started from (the
    incumbent, or a transfer from another device) with the run and target that promoted it, and the rules
    it applied with their confidence on this device. A resumed run plans an op again; its first plan is
    what the op started from."""
    runs_dir = folder.path.parent
    lines, seen = [], set()
    for event in folder.events():
        if event.get("kind") != "plan" or "budget" not in event or event.get("op") in seen:
            continue
        seen.add(event.get("op"))
        op, parts = event.get("op"), []
        for key, word in (("incumbent", "started from its incumbent"), ("transfer", "started from a transfer")):
            value = event.get(key)
            path = value.get("path") if isinstance(value, dict) else value
            if isinstance(path, str) and path:
                parts.append(f"{word} {_promoted_by(Path(path), runs_dir)}")
        rules = [f"{r.get('id')} ({r.get('confidence')})" for r in event.get("rules") or [] if isinstance(r, dict)]
        if rules:
            parts.append("rules " + ", ".join(rules))
        if parts:
            lines.append(f"  {op}: " + "; ".join(parts))
    return ["Handed over:", *lines] if lines else []


def _promoted_by(kernel: Path, runs_dir: Path) -> str:
    """"<gpu>, promoted by run R (target T)" from a promoted kernel's meta.toml, as far as it can be read."""
    import tomllib

    try:
        meta = tomllib.loads(kernel.with_name("meta.toml").read_text())
    except (OSError, ValueError):
        return f"({kernel})"
    run = (meta.get("lineage") or {}).get("run")
    target = None
    if isinstance(run, str):
        try:
            target = RunFolder.open(runs_dir, run).summary.get("target")
        except (LookupError, OSError, ValueError):
            target = None
    where = f" by run {run}" + (f" (target {target})" if target else "") if run else ""
    return f"of {meta.get('gpu', '?')}, promoted{where}"


def _workers(folder: RunFolder) -> int | None:
    """[run].workers of the run's own config.toml, where it can be read."""
    from agents.config import ConfigError, load_config

    try:
        return load_config(folder.path / "config.toml", check_llm=False).run.workers
    except (ConfigError, OSError):
        return None


def print_run(console: Console, folder: RunFolder) -> None:
    console.print(run_table(folder))
    # promotion reasons, rule ids and statements may hold text from candidates or the model: never markup
    for op, o in folder.summary["ops"].items():
        if o.get("promotion"):
            console.print(f"  {op}: {o['promotion']}", markup=False)
        for lesson in o.get("lessons", []):
            console.print(f"  {op}: rule {lesson['rule']} {lesson['verdict']} — {lesson['effect']}", markup=False)
        for learned in o.get("reflections", []):
            console.print(f"  {op}: learned {learned['rule']} (confidence {learned['confidence']:.2f}) — "
                          f"{learned['statement']}", highlight=False, markup=False)
    for line in handover_lines(folder):
        console.print(line, highlight=False, markup=False)
    for line in throughput_lines(throughput(folder.events(), _workers(folder))):
        console.print(line, highlight=False, markup=False)
    for line in llm_lines(folder.summary):
        console.print(line, highlight=False, markup=False)
    for line in model_lines(folder.summary):
        console.print(line, highlight=False, markup=False)
    bench = (folder.summary.get("model") or {}).get("bench") or {}
    if bench:
        from agents.app.model_bench import model_table

        for result in bench.values():
            console.print(model_table(result))


def runs_table(folders: list[RunFolder]) -> Table:
    table = Table(title="runs", title_justify="left")
    for column in ("run", "target", "status", "device", "ops", "accepted / candidates", "started"):
        table.add_column(column, no_wrap=column == "run")
    for folder in folders:
        s = folder.summary
        ops = s.get("ops", {})
        accepted = sum(o.get("accepted", 0) for o in ops.values())
        total = sum(o.get("candidates", 0) for o in ops.values())
        table.add_row(*map(escape, (str(s["run_id"]), str(s["target"]), str(folder.status()),
                                    str((s.get("device") or {}).get("name", "?")), ",".join(ops),
                                    f"{accepted} / {total}", str(s.get("started", "")))))
    return table
