"""`evolve run`: set up the evaluator, memory and run folder, drive the graph, show progress, finish cleanly.

Whatever happens (an exception, Ctrl-C), the run folder ends with a summary whose status says so, and
the evaluator's sandboxes are stopped.
"""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import traceback
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from evaluators import EvaluationPool, EvaluatorSettings, Timeouts, TimingSettings
from kernels import OPS, TARGET_FILES, Target, TargetError, get_spec, load_target
from memory import INTERPRETER_GPU, CandidateArchive, KernelStore, Rulebook

from agents.config import Config, ConfigError, load_config
from agents.search.graph import RunContext, build_graph, recorded_candidates
from agents.llm.client import ChatModel, LLMUnavailable, Recorder, preflight, read_exchanges, read_meta
from agents.llm.coder import LLMCoder
from agents.llm.planner import LLMPlanner
from agents.search.planner import Planner
from agents.llm.reflector import Reflector
from agents.run_folder import RunFolder, RunNotFound


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2."""


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to PyTorch on this machine")
    return requested


def resolve_target(target: str) -> Target:
    """A shipped target by name, or a target file of one's own by its path (ending in .toml)."""
    if target.endswith(".toml"):
        if not Path(target).is_file():
            raise UsageError(f"no target file {target}")
        try:
            return load_target(Path(target), OPS)
        except TargetError as exc:
            raise UsageError(str(exc)) from None
    if target not in TARGET_FILES:
        raise UsageError(f"unknown target {target!r}; known targets: {', '.join(sorted(TARGET_FILES))} "
                         "(or a path to a target .toml file)")
    return TARGET_FILES[target]


def resolve_ops(target: str, ops: str | None) -> list[str]:
    known = list(resolve_target(target).ops)
    if ops is None:
        return known
    chosen = [o.strip() for o in ops.split(",")]
    # an empty name is a typo (`a,,b`, a trailing comma), never "all ops"; a repeated op would have its
    # candidate files overwritten by its second pass
    if not any(chosen):
        raise UsageError(f"--ops {ops!r} names no op; its ops: {', '.join(known)}")
    if not all(chosen):
        raise UsageError(f"--ops {ops!r} has an empty op name; separate op names with single commas")
    for op in chosen:
        if op not in known:
            raise UsageError(f"unknown op {op!r} for {target}; its ops: {', '.join(known)}")
    repeated = sorted({op for op in chosen if chosen.count(op) > 1})
    if repeated:
        raise UsageError(f"--ops names {', '.join(repeated)} more than once; name each op once")
    return chosen


# workers per GPU where [run].workers is 0: on an H200 (16 cores) four workers, each checking in a sandbox
# with two more compiling ahead, keep the cores busy without queueing for them
WORKERS_PER_GPU = 4


def resolve_workers(requested: int, device: str) -> int:
    """[run].workers, where 0 (as many as the machine suits) is four per GPU, no more than a quarter of the
    CPU cores (each worker compiles in up to three processes at once), and one on a CPU."""
    if requested > 0:
        return requested
    if device != "cuda":
        return 1
    import torch

    return max(1, min(WORKERS_PER_GPU * max(1, torch.cuda.device_count()), (os.cpu_count() or 4) // 4))


def evaluator_settings(config: Config, device: str, target: Target | None = None,
                       search: bool = False) -> EvaluatorSettings:
    """The evaluator as the config sets it up; a target's own timed shapes, where it names any. A `search`
    times its candidates with [timing]'s search_* settings (their ranking only picks the challenger) and
    promotion's re-timing and A/B rounds with the full ones; every other use times with the full ones."""
    e, t = config.evaluator, config.timing
    full = TimingSettings(rounds=t.rounds, warmup_ms=t.warmup_ms, rep_ms=t.rep_ms, rotate_bytes=t.rotate_mib << 20,
                          floor_slack=t.floor_slack)
    screening = dataclasses.replace(full, rounds=t.search_rounds, warmup_ms=t.search_warmup_ms,
                                    rep_ms=t.search_rep_ms)
    return EvaluatorSettings(
        device=device,
        timeouts=Timeouts(start=e.start_timeout_s, load=e.load_timeout_s, compile=e.compile_timeout_s,
                          check=e.check_timeout_s, time=e.timing_timeout_s),
        timing=screening if search else full,
        promotion_timing=full if search else None,
        timed_dtypes=e.timed_dtypes,
        ceilings_cache=e.ceilings_cache,
        baselines_cache=e.baselines_cache,
        compile_ahead=e.compile_ahead,
        candidate_seconds=e.search_candidate_s if search and device == "cuda" and e.search_candidate_s > 0 else None,
        promotion_margin=config.promotion.margin,
        ab_rounds=config.promotion.ab_rounds,
        backward=config.run.training,
        timed_shapes=dict(target.shapes) if target is not None else {},
    )


def evaluation_pool(config: Config, settings: EvaluatorSettings):
    """The run's evaluators: [run].workers of them, as threads here or as Ray actors ([cluster])."""
    if config.cluster.backend == "ray":
        from evaluators.ray_pool import RayPool

        try:
            return RayPool(settings, config.run.workers, config.cluster.address)
        except RuntimeError as exc:  # Ray missing, or no cluster at the address
            raise UsageError(str(exc)) from None
    return EvaluationPool(settings, config.run.workers)


class RunDisplay:
    """Rich progress while a run works: one bar per op, a line per verdict."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False)
        self.task = None
        self.op = ""

    def __enter__(self) -> "RunDisplay":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, kind: str, data: dict) -> None:
        # Every value below may come from a candidate or the model (ids of learned rules, exception text,
        # strategies): escaped, so that rich prints "[/]" or "[link=...]" as written instead of parsing it.
        print_line = self.progress.console.print
        if kind == "plan" and "budget" in data:
            self.op = data["op"]
            self.task = self.progress.add_task(f"[bold]{escape(self.op)}[/]", total=data["budget"])
            rules = ", ".join(r["id"] for r in data["rules"]) or "none"
            print_line(f"[cyan]plan[/] {escape(self.op)}: rules applied: {escape(rules)}")
            if data.get("planner") == "llm":
                print_line(f"  [cyan]strategy[/] {escape(str(data['strategy']))}", highlight=False)
            elif data.get("fallback"):
                print_line(f"  [yellow]rule-based plan[/]: {escape(str(data['fallback']))}", highlight=False)
        elif kind == "candidate" and self.task is not None:
            which = escape(f"{data['id']} ({data['origin']})")
            self.progress.update(self.task, description=f"[bold]{escape(self.op)}[/] {which}")
        elif kind == "progress" and self.task is not None and data["message"][0] == "phase":
            phase = escape(str(data["message"][1]))
            self.progress.update(self.task, description=f"[bold]{escape(self.op)}[/] {phase}")
        elif kind == "verdict" and self.task is not None:
            self.progress.advance(self.task)
            mark = {"accepted": "[green]✓[/]", "rejected": "[yellow]✗[/]", "failed": "[red]✗[/]"}[data["status"]]
            line = f"{self.op} {data['id']} {data['status']}: {_reason(data)}"
            print_line(f"  {mark} {escape(line)}")
        elif kind == "workers_lost":
            print_line(f"  [yellow]{data['lost']} worker(s) lost[/]: their candidates went back to the queue and "
                       f"were judged by others", highlight=False)
        elif kind == "lesson":
            line = f"{data['rule']}: {data['verdict']} ({data['effect']})"
            print_line(f"  [magenta]lesson[/] {escape(line)}")
        elif kind == "promotion":
            word = "[bold green]promoted[/]" if data["promoted"] else "[yellow]not promoted[/]"
            print_line(f"  {word} {escape(str(data['op']))}: {escape(str(data['reason']))}")
        elif kind == "llm":
            print_line(_llm_line(data), highlight=False)
        elif kind == "reflection":
            text = (f"[yellow]no lesson[/]: {escape(str(data['error']))}" if data.get("error") else
                    escape(f"{data['rule']} (confidence {data['confidence']:.2f}): {data['statement']}"))
            print_line(f"  [magenta]reflection[/] {escape(str(data['op']))}: {text}", highlight=False)


def _llm_line(data: dict) -> str | None:
    outcome = data["outcome"]
    where = escape(f"{data['purpose']}" + (f" {data['op']}" if data.get("op") else ""))
    if outcome == "ok":
        return (f"  [blue]llm[/] {where}: {data['prompt_tokens']:,} + {data['completion_tokens']:,} tokens"
                + (f", cost {data['cost']:.4f}" if data.get("cost") else ""))
    return f"  [blue]llm[/] {where}: [yellow]{escape(str(outcome))}[/] {escape(str(data.get('error', '')))}"


def _reason(verdict: dict) -> str:
    from evaluators import Verdict

    return Verdict.from_dict(verdict).reason()


def _replay_source(config: Config, replay: str, target: str, ops: str | None, seed: int | None,
                   coder: str | None, budget: int | None) -> tuple[Config, dict, list[dict], RunFolder]:
    """The recorded run, its meta and exchanges, and the config to replay it with: the [llm] settings
    and the coder, budget, ops and seed that run used (flags that disagree are refused)."""
    try:
        past = RunFolder.open(config.run.runs_dir, replay)
        meta = read_meta(past.path)
    except (RunNotFound, FileNotFoundError) as exc:
        raise UsageError(f"--llm-replay: {exc}") from None
    wanted = {"target": target, "ops": None if ops is None else resolve_ops(target, ops), "seed": seed,
              "coder": coder, "budget": budget}
    for key, value in wanted.items():
        if value is not None and value != meta[key]:
            raise UsageError(f"--llm-replay {replay}: that run had {key} {meta[key]!r}, not {value!r}; "
                             f"a replay re-runs it as it was")
    recorded = load_config(past.path / "config.toml", check_llm=False)
    config = dataclasses.replace(config, llm=recorded.llm).with_run(check_llm=False, coder=meta["coder"],
                                                                     budget=meta["budget"])
    return config, meta, read_exchanges(past.path), past


def _resumable(config: Config, run: str) -> tuple[Config, RunFolder, bool]:
    """The interrupted run to continue, with the configuration it ran under and whether it used memory."""
    try:
        folder = RunFolder.open(config.run.runs_dir, run)
    except RunNotFound as exc:
        raise UsageError(f"--resume: {exc}") from None
    status = folder.status()
    if status == "complete":
        raise UsageError(f"--resume {folder.run_id}: the run is complete; nothing to resume")
    if status == "running":
        raise UsageError(f"--resume {folder.run_id}: the run is still running (process {folder.summary.get('pid')})")
    try:
        recorded = load_config(folder.path / "config.toml", check_llm=False)
    except ConfigError as exc:
        raise UsageError(f"--resume {folder.run_id}: its config.toml cannot be read: {exc}") from None
    if recorded.run.coder != "template":
        raise UsageError(f"--resume {folder.run_id}: the run's coder is {recorded.run.coder!r}; resume continues "
                         "template-coder runs (an LLM run can be replayed with --llm-replay)")
    return recorded, folder, folder.summary.get("memory", True) is not False


def resume_target(config: Config, run: str, console: Console, target: str | None = None,
                  workers: int | None = None) -> RunFolder:
    """`evolve run --resume RUN`: the run continued where it stopped, under the settings it ran with (its
    population too, so the same candidates come), on `workers` evaluators if given; a target named beside it
    must be the run's."""
    recorded, folder, use_memory = _resumable(config, run)
    if workers is not None:
        recorded = recorded.with_run(check_llm=False, workers=workers, population=recorded.population)
    if target is not None and target != folder.summary["target"]:
        raise UsageError(f"--resume {folder.run_id}: that run's target is {folder.summary['target']!r}, not {target!r}")
    return run_target(recorded, folder.summary["target"], ",".join(folder.summary["ops"]), use_memory, console,
                      resume=folder)


def run_target(config: Config, target: str, ops: str | None, use_memory: bool, console: Console,
               seed: int | None = None, replay: str | None = None, replay_flags: dict | None = None,
               resume: RunFolder | None = None) -> RunFolder:
    """`replay`: a past run whose recorded answers stand in for the server; `replay_flags` are the
    command line's coder and budget, which must agree with that run's. `resume`: an interrupted run to
    continue: the ops it finished stay finished, the candidates it judged are not judged again."""
    meta = exchanges = past = None
    if replay is not None:
        flags = replay_flags or {}
        config, meta, exchanges, past = _replay_source(config, replay, target, ops, seed, flags.get("coder"),
                                                       flags.get("budget"))
        ops, seed = ",".join(meta["ops"]), meta["seed"]
    op_names = resolve_ops(target, ops)
    for op in op_names:
        get_spec(op)
    device = resolve_device(config.run.device)
    config = config.with_run(check_llm=False, device=device, workers=resolve_workers(config.run.workers, device))
    endpoint = None
    if config.run.coder != "template" and replay is None:
        try:
            endpoint = preflight(config.llm)
        except LLMUnavailable as exc:
            if config.llm.on_unavailable != "template":
                raise UsageError(str(exc)) from None
            console.print(f"[yellow]{escape(str(exc))}; the template coder writes every candidate "
                          f"({escape('[llm]')}.on_unavailable)[/]",
                          highlight=False)
            config = config.with_run(coder="template")
    if config.run.coder != "template" and seed is None:
        # the template coder's choices must be replayable beside the recorded answers
        seed = random.SystemRandom().randrange(2**31)
    memory_dir = Path(config.run.memory_dir)
    console.print(f"[bold]evolve run {escape(target)}[/] ops={','.join(op_names)} budget={config.run.budget} "
                  f"device={device} memory={'off' if not use_memory else escape(str(memory_dir))}")
    if config.run.coder != "template":
        where = f"replaying {past.run_id}" if past else f"{config.llm.model} at {endpoint.base_url}"
        console.print(f"[bold]LLM[/] coder={config.run.coder} ({escape(where)})", highlight=False)
    if device == "cpu":
        console.print("[yellow]No GPU: candidates run in Triton's interpreter. Correctness only; speed not measured.[/]")
    evaluator = evaluation_pool(config, evaluator_settings(config, device, resolve_target(target), search=True))
    folder = None
    model = None
    previous = None
    if threading.current_thread() is threading.main_thread():
        # a kill (e.g. a job's time limit) ends the run as Ctrl-C does: the summary says "interrupted"
        previous = signal.signal(signal.SIGTERM, interrupt_on_sigterm)
    try:
        info = evaluator.device_info
        if device == "cuda":
            info = {**info, "ceilings": evaluator.ceilings()}
        if resume is not None:
            folder = resume
            folder.claim()
            folder.log("resume", op=None, evaluated=[], pending=[])
            console.print(f"resuming: {escape(str(folder.path))}")
        else:
            folder = RunFolder.create(config.run.runs_dir, target, config.to_toml(), info, op_names)
            folder.summary["memory"] = use_memory
            folder.write_summary()
            console.print(f"run folder: {escape(str(folder.path))}")
        gpu = info["name"] if device == "cuda" else INTERPRETER_GPU
        rulebook = Rulebook.load(memory_dir) if use_memory else None
        store = KernelStore(memory_dir) if use_memory else None
        ctx = RunContext(
            config=config, folder=folder, evaluator=evaluator, gpu=gpu, rulebook=rulebook, store=store,
            archive=CandidateArchive(memory_dir) if use_memory and replay is None else None,
            planner=Planner(rulebook, store, gpu, info["sm_count"], config.run.budget, config.coder.test_rules,
                            config.run.training, info.get("arch", "")),
            rng=random.Random(seed), population=config.population,
        )
        if config.run.coder != "template":
            model = _llm_agents(ctx, config, target, op_names, seed, endpoint, meta, exchanges, past)
        done: list[str] = []
        if resume is not None:
            # an op is finished once its promotion step wrote its lessons into the summary
            done = [op for op in op_names if "lessons" in folder.summary["ops"].get(op, {})]
            recorded = recorded_candidates(folder.events(), config.run.training)
            ctx.resume = {op: recorded[op] for op in op_names if op not in done and op in recorded}
        graph = build_graph(ctx)
        state = {"queue": [op for op in op_names if op not in done], "op": None, "proposed": 0, "pending": [],
                 "history": [], "exhausted": False, "done": done}
        steps = 10 + len(op_names) * (4 * config.run.budget + 6)
        with RunDisplay(console) as display:
            ctx.on_event = display
            graph.invoke(state, {"recursion_limit": steps})
        if resolve_target(target).model and config.model.assemble:
            _assemble(folder, config, device, memory_dir if use_memory else None, console)
        folder.finish("complete")
        return folder
    except KeyboardInterrupt:
        if folder is not None:
            folder.log("error", error="interrupted by the user")
            folder.finish("interrupted")
            console.print(f"[yellow]interrupted[/]; what was done is in {escape(str(folder.path))}")
        raise
    except Exception as exc:
        if folder is not None:
            folder.log("error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=12))
            folder.finish("failed")
        raise
    finally:
        if model is not None:
            model.close()
        evaluator.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _assemble(folder: RunFolder, config: Config, device: str, memory_dir: Path | None, console: Console) -> None:
    """The NanoGPT build from what the run promoted (agents/app/assembly.py), its result into summary.json."""
    from agents.app.assembly import assemble

    console.print("[bold]assembly[/]: NanoGPT from the promoted kernels: invariants, parity, convergence"
                  + (", model bench" if device == "cuda" and config.model.bench else ""))
    folder.log("assembly", stage="start")
    result = assemble(memory_dir, device, folder.path / "model.json", device == "cuda" and config.model.bench,
                      lambda line: console.print(f"  {escape(line)}", style="dim", highlight=False),
                      steps=config.model.convergence_steps or None)
    folder.summary["model"] = result
    folder.log("assembly", stage="done", passed=result.get("passed"), error=result.get("error"))
    folder.write_summary()
    verdict = "[green]passed[/]" if result.get("passed") else f"[red]failed[/] {escape(result.get('error') or '')}"
    console.print(f"[bold]assembly[/]: {verdict}")


def _llm_agents(ctx: RunContext, config: Config, target: str, op_names: list[str], seed: int, endpoint,
                meta: dict | None, exchanges: list[dict] | None, past: RunFolder | None) -> ChatModel:
    """Set the model, the LLM planner and the reflector into the run's context; the ledger goes into
    every llm event and into summary.json as it grows."""
    folder = ctx.folder
    recorder = Recorder(folder.path / "llm")
    recorder.write_meta({"target": target, "ops": op_names, "budget": config.run.budget, "coder": config.run.coder,
                         "seed": seed, "model": config.llm.model,
                         "base_url": endpoint.base_url if endpoint else (meta or {}).get("base_url"),
                         "replay_of": past.run_id if past else None})

    def on_call(data: dict) -> None:
        ledger = model.ledger
        folder.summary["llm"] = {"model": config.llm.model, "coder": config.run.coder, **ledger.summary(),
                                 "replay_of": past.run_id if past else None}
        for op, usage in ledger.ops.items():
            if op in folder.summary["ops"]:
                folder.summary["ops"][op]["llm"] = usage.to_dict()
        folder.log("llm", **data)
        ctx.on_event("llm", data)
        folder.write_summary()

    model = ChatModel(config.llm, recorder, endpoint, exchanges, on_call)
    ctx.model = model
    ctx.make_llm_coder = LLMCoder
    folder.summary["llm"] = {"model": config.llm.model, "coder": config.run.coder, **model.ledger.summary(),
                             "replay_of": past.run_id if past else None}
    folder.write_summary()
    if config.llm.planner:
        ctx.llm_planner = LLMPlanner(model, ctx.planner, ctx.rulebook, {k: v for k, v in folder.summary["device"].items()
                                                                         if k != "ceilings"})
    if config.llm.reflector:
        ctx.reflector = Reflector(model, ctx.rulebook, ctx.gpu, folder.run_id, config.llm.lesson_confidence,
                                  past.run_id if past else None)
    if past is not None:
        ctx.replay_of = past.run_id
        ctx.replay_plans = {e["op"]: e for e in past.events() if e["kind"] == "plan" and "budget" in e}
    return model


def interrupt_on_sigterm(signum: int, frame: object) -> None:
    """A SIGTERM handler that unwinds the main thread as Ctrl-C does (KeyboardInterrupt), so context managers
    and `finally` blocks run: the evaluator stops its sandboxes, a run folder records "interrupted"."""
    # Later SIGTERMs are ignored: a second one (a supervisor that signals the whole group, or twice) must not
    # cut short the cleanup the first one started. SIGKILL still ends everything.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")
