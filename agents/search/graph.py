"""The run as a LangGraph StateGraph: plan -> propose -> evaluate -> select -> (propose | promote) -> plan.

Nodes are small functions over RunState; the heavy objects (evaluator, memory, run folder, display)
live in a RunContext the nodes close over, so the state stays plain data.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from langgraph.graph import END, START, StateGraph

from evaluators import CandidateFailure, Evaluator, SandboxLost, Verdict
from kernels import get_spec
from memory import CandidateArchive, Evidence, KernelStore, Rulebook, source_sha

from agents.search.coder import TemplateCoder
from agents.config import Config
from agents.search.lessons import judge_rule
from agents.search.planner import OpPlan, Planner
from agents.run_folder import RunFolder
from agents.search.state import Candidate, RunState, best_of

if TYPE_CHECKING:
    # the LLM agents sit above the search: the application hands them in through the context
    from agents.llm.client import ChatModel
    from agents.llm.coder import LLMCoder
    from agents.llm.planner import LLMPlanner
    from agents.llm.reflector import Reflector


# the numbers of a verdict's headline timing that candidates, summaries and promotions carry
TIMING_KEYS = ("speedup_eager", "speedup_compile", "roofline_fraction", "gbps", "tflops", "candidate_ms",
               "eager_ms", "compile_ms")
# and of its forward+backward timing, carried as train_<key>
TRAIN_KEYS = ("speedup_eager", "speedup_compile", "gbps", "tflops", "candidate_ms", "eager_ms", "compile_ms",
              "peak_mib")


@dataclass
class RunContext:
    config: Config
    folder: RunFolder
    evaluator: Evaluator
    planner: Planner
    gpu: str                                   # device name, or "interpreter" on the CPU
    rulebook: Rulebook | None                  # None with --no-memory
    store: KernelStore | None
    archive: CandidateArchive | None
    on_event: Callable[[str, dict], None] = lambda kind, data: None   # the display's hook
    rng: random.Random = field(default_factory=random.Random)
    plan: OpPlan | None = None
    coder: TemplateCoder | None = None
    # the LLM agents: all None for a template run
    model: ChatModel | None = None
    llm_planner: LLMPlanner | None = None
    reflector: Reflector | None = None
    llm_coder: LLMCoder | None = None
    make_llm_coder: Callable[..., LLMCoder] | None = None  # the LLM coder's class, for each op's coder
    replay_of: str | None = None               # the run whose recorded answers this run replays
    replay_plans: dict[str, dict] = field(default_factory=dict)   # op -> that run's plan event
    fallback_noted: bool = False
    # a resumed run: op -> (the candidates it evaluated before it stopped, those it had proposed and not
    # evaluated); that op starts from them instead of from nothing
    resume: dict[str, tuple[list[Candidate], list[Candidate]]] = field(default_factory=dict)
    population: int = 1                        # candidates proposed and judged at once (the pool's workers)

    def llm_slot(self, slot: int) -> bool:
        """Whether the model writes candidate `slot` (0-based) of an op; mixed runs interleave by share."""
        if self.model is None:
            return False
        if self.config.run.coder == "llm":
            return True
        share = self.config.llm.mixed_share
        return math.floor((slot + 1) * share + 1e-9) > math.floor(slot * share + 1e-9)

    @property
    def timed(self) -> bool:
        return self.config.run.device == "cuda"


def _emit(ctx: RunContext, kind: str, **data: Any) -> None:
    """Log an event to the run folder and show it."""
    ctx.folder.log(kind, **data)
    ctx.on_event(kind, data)


def _candidate_from(pending: Candidate, verdict: Verdict, training: bool) -> Candidate:
    timing = verdict.timing or {}
    backward = verdict.backward or {}
    train = backward.get("timing") or {}
    candidate: Candidate = {
        **pending,
        "status": verdict.status,
        "failure_class": verdict.failure_class,
        "reason": verdict.reason(),
        **{k: timing.get(k) for k in TIMING_KEYS},
        "backward": verdict.backward is not None,
        "deterministic": backward.get("deterministic"),
        **{f"train_{k}": train.get(k) for k in TRAIN_KEYS},
    }
    # what the search maximises: forward+backward speed over eager in a training run (a candidate without
    # a checked backward then has no score), the forward's in an inference run
    candidate["score"] = train.get("speedup_eager") if training else timing.get("speedup_eager")
    return candidate


def _resumed(ctx: RunContext, op: str, queue: list[str]) -> dict:
    """The state of an op an interrupted run had begun: its judged candidates as they were, those it had
    proposed and not judged pending again, the coder told what was tried, the summary's counts redone."""
    history, pending = ctx.resume.pop(op)
    ctx.coder.skip_tried(history + pending)
    summary = ctx.folder.op_summary(op)
    summary["candidates"] = len(history)
    summary["accepted"] = sum(1 for c in history if c["status"] == "accepted")
    failures: dict[str, int] = {}
    for c in history:
        if c["status"] != "accepted":
            failures[c["failure_class"]] = failures.get(c["failure_class"], 0) + 1
    summary["failures"] = failures
    _emit(ctx, "resume", op=op, evaluated=[c["id"] for c in history], pending=[c["id"] for c in pending])
    return {"queue": queue, "op": op, "proposed": len(history) + len(pending), "pending": pending,
            "history": history, "exhausted": False}


def recorded_candidates(events: list[dict], training: bool) -> dict[str, tuple[list[Candidate], list[Candidate]]]:
    """Per op, the candidates a run's events show judged (in order) and those proposed without a verdict
    whose file is still there (a population stopped mid-way): what a resume starts the op from."""
    proposed: dict[str, dict[str, dict]] = {}
    judged: dict[str, list[Candidate]] = {}
    for event in events:
        if event.get("kind") == "candidate":
            data = {k: v for k, v in event.items() if k not in ("ts", "kind", "note")}
            proposed.setdefault(data["op"], {})[data["id"]] = data
        elif event.get("kind") == "verdict":
            op, cid = event.get("op"), event.get("id")
            pending = proposed.get(op, {}).get(cid)
            if pending is None or any(c["id"] == cid for c in judged.get(op, [])):
                continue
            verdict = Verdict.from_dict({k: v for k, v in event.items() if k not in ("ts", "kind", "id")})
            judged.setdefault(op, []).append(_candidate_from(pending, verdict, training))
    out = {}
    for op, candidates in proposed.items():
        # in the order proposed: a population's verdicts are logged in the order they finished
        order = list(candidates)
        judged.get(op, []).sort(key=lambda c: order.index(c["id"]))
        done = {c["id"] for c in judged.get(op, [])}
        waiting = [c for cid, c in candidates.items() if cid not in done]
        pending = []
        for c in waiting:  # up to the first whose file is gone (a kill as it was written): ids stay in sequence
            if "unusable" not in c and not Path(c.get("path", "")).is_file():
                break
            pending.append(c)
        out[op] = (judged.get(op, []), pending)
    return out


def _train_metrics(candidate: Candidate) -> dict:
    """Whether the kernel carries a checked backward (and is deterministic), with its forward+backward
    timing: what a summary's best and a promoted kernel's metrics say of training."""
    out = {"backward": bool(candidate.get("backward")), "deterministic": candidate.get("deterministic")}
    out.update({f"train_{k}": candidate.get(f"train_{k}") for k in TRAIN_KEYS})
    return out


def _replayed_plan(ctx: RunContext, plan: OpPlan, recorded: dict) -> OpPlan:
    """The plan the replayed run followed, rebuilt from its plan event: the memory may have moved on since
    (the run's own promotion, learned rules), and a replay must start where that run started."""
    rules = {r.id: r for r in (ctx.rulebook.rules if ctx.rulebook else [])}
    kept = tuple(replace(rules[r["id"]], suggests=r["suggests"]) for r in recorded["rules"] if r["id"] in rules)
    incumbent = None
    if recorded.get("incumbent_sha") and ctx.store is not None:
        for kernel in [ctx.store.best(plan.op, ctx.gpu), *ctx.store.history(plan.op, ctx.gpu)]:
            if kernel is not None and source_sha(kernel.source()) == recorded["incumbent_sha"]:
                incumbent = kernel
                break
    ids = {r.id for r in kept}
    return replace(plan, rules=kept, suggestions=dict(recorded["suggestions"]),
                   tests=tuple(t for t in recorded["tests"] if t in ids), incumbent=incumbent)


def build_graph(ctx: RunContext):
    folder = ctx.folder
    history_of: dict[str, list[Candidate]] = {}

    def emit(kind: str, **data: Any) -> None:
        _emit(ctx, kind, **data)

    def plan(state: RunState) -> dict:
        if not state["queue"]:
            return {"op": None}
        queue = state["queue"]
        if ctx.model is None:
            op = queue[0]
            ctx.plan = ctx.planner.plan(get_spec(op))
            emit("plan", **ctx.plan.to_event())
            ctx.coder = TemplateCoder(get_spec(op), ctx.plan, ctx.config.coder.explore, ctx.rng,
                                      training=ctx.config.run.training)
            if op in ctx.resume:
                return _resumed(ctx, op, queue[1:])
            return {"queue": queue[1:], "op": op, "proposed": 0, "pending": [], "history": [], "exhausted": False}
        strategy, extra = "", {"planner": "rules"}
        # with one op left there is no choice to make: the request (and its tokens) would buy nothing
        if ctx.llm_planner is not None and ctx.model.available and len(queue) > 1:
            choice = ctx.llm_planner.choose(queue, folder.summary)
            op, ctx.plan, strategy = choice.op, choice.plan, choice.strategy
            extra = {"planner": choice.planner, "strategy": strategy, "fallback": choice.fallback}
        else:
            op = queue[0]
            ctx.plan = ctx.planner.plan(get_spec(op))
        if op in ctx.replay_plans:
            ctx.plan = _replayed_plan(ctx, ctx.plan, ctx.replay_plans[op])
        spec = get_spec(op)
        incumbent = ctx.plan.incumbent
        extra["incumbent_sha"] = source_sha(incumbent.source()) if incumbent else None
        emit("plan", **ctx.plan.to_event(), **extra)
        ctx.coder = TemplateCoder(spec, ctx.plan, ctx.config.coder.explore, ctx.rng,
                                  training=ctx.config.run.training)
        context = spec.context(spec.headline_shape(), ctx.planner.sm_count)
        lessons = ctx.rulebook.query(op, context) if ctx.rulebook else []
        ctx.llm_coder = ctx.make_llm_coder(spec, ctx.model, ctx.config.run.device, lessons, strategy,
                                 (incumbent.source(), incumbent.metrics) if incumbent else None,
                                 ctx.config.llm.repairs, ctx.config.run.training)
        return {"queue": [q for q in queue if q != op], "op": op, "proposed": 0, "pending": [], "history": [],
                "exhausted": False}

    def propose_one(state: RunState, proposed: int) -> Candidate | None:
        proposal = None
        if ctx.llm_slot(proposed):
            if ctx.model.available:
                proposal = ctx.llm_coder.propose(state["history"])
            if proposal is None and not ctx.fallback_noted:
                ctx.fallback_noted = True
                emit("llm", purpose="coder", op=state["op"], outcome="fallback",
                     error=f"{ctx.model.why_unavailable()}; the template coder takes the remaining slots")
        if proposal is None:
            proposal = ctx.coder.propose(state["history"], ctx.plan.budget - proposed)
        if proposal is None:
            return None
        cid = f"c{proposed + 1:03d}"
        pending: Candidate = {"id": cid, "op": state["op"], "origin": proposal.origin, "params": proposal.params,
                              "parents": list(proposal.parents)}
        unusable = getattr(proposal, "failure", None)
        if unusable:
            # no file to evaluate: the proposal is judged here, with the class its answer earned
            pending["unusable"] = {"class": unusable[0], "detail": unusable[1]}
        else:
            pending["path"] = str(folder.write_candidate(state["op"], cid, proposal.source))
        if getattr(proposal, "exchange", None):
            pending["exchange"] = proposal.exchange
        emit("candidate", **pending, note=proposal.note)
        return pending

    def propose(state: RunState) -> dict:
        # a population: one candidate per worker of the pool, all proposed from the same history, so the
        # search depends on the verdicts alone and not on which worker finished first
        population: list[Candidate] = []
        proposed = state["proposed"]
        while len(population) < ctx.population and proposed < ctx.plan.budget:
            pending = propose_one(state, proposed)
            if pending is None:
                break
            population.append(pending)
            proposed += 1
        if not population:
            emit("plan", op=state["op"], note="template space exhausted before the budget")
            return {"pending": [], "exhausted": True}
        return {"pending": population, "proposed": proposed}

    def evaluate(state: RunState) -> dict:
        population = state["pending"]
        judged = [p for p in population if "unusable" not in p]
        candidates: dict[str, Candidate] = {}

        def record(pending: Candidate, verdict: Verdict) -> None:
            # logged the moment it is known, so an interrupted population keeps every verdict it reached;
            # the history below still takes them in the order proposed
            candidate = _candidate_from(pending, verdict, ctx.config.run.training)
            emit("verdict", id=pending["id"], **verdict.to_dict())
            if ctx.archive is not None and "path" in pending:
                ctx.archive.record(pending["op"], Path(pending["path"]).read_text(), {
                    "run": folder.run_id, "candidate": pending["id"], "gpu": ctx.gpu, "status": verdict.status,
                    "failure_class": verdict.failure_class, "speedup_eager": candidate.get("speedup_eager")})
            summary = folder.op_summary(pending["op"])
            summary["candidates"] += 1
            if verdict.accepted:
                summary["accepted"] += 1
            else:
                failures = summary["failures"]
                failures[verdict.failure_class] = failures.get(verdict.failure_class, 0) + 1
            candidates[pending["id"]] = candidate

        for pending in population:
            if "unusable" in pending:
                record(pending, Verdict.failed(pending["op"], pending["unusable"]["class"],
                                               pending["unusable"]["detail"], device=folder.summary["device"]))
        lost_before = ctx.evaluator.lost
        ctx.evaluator.evaluate_all([(p["op"], Path(p["path"])) for p in judged],
                                   on_message=lambda m: ctx.on_event("progress", {"message": m}),
                                   on_verdict=lambda index, verdict: record(judged[index], verdict))
        if ctx.evaluator.lost > lost_before:
            # workers lost mid-way (a Ray actor or its node): their candidates were judged again elsewhere
            emit("workers_lost", op=state["op"], lost=ctx.evaluator.lost - lost_before,
                 candidates=[p["id"] for p in judged])
        # in the order proposed, whichever finished first
        history = list(state["history"]) + [candidates[p["id"]] for p in population]
        return {"history": history, "pending": []}

    def select(state: RunState) -> dict:
        history_of[state["op"]] = state["history"]
        best = best_of(state["history"])
        summary = folder.op_summary(state["op"])
        if best is not None:
            summary["best"] = {"candidate": best["id"], "path": best["path"], "origin": best["origin"],
                               "params": best["params"],
                               **{k: best.get(k) for k in TIMING_KEYS}, **_train_metrics(best)}
        folder.write_summary()
        return {}

    def promote(state: RunState) -> dict:
        op = state["op"]
        summary = folder.op_summary(op)
        promoted, reason = _promotion(ctx, op, best_of(state["history"]))
        summary["promoted"] = promoted
        summary["promotion"] = reason
        lessons = []
        for rule in ctx.plan.rules:
            if rule.id not in ctx.plan.tests:
                continue
            verdict, effect = judge_rule(rule, get_spec(op).template, state["history"],
                                         ctx.config.promotion.margin)
            recorded = False
            if ctx.timed and ctx.rulebook is not None and ctx.replay_of is None:
                ctx.rulebook.record_evidence(rule.id, Evidence(run=folder.run_id, gpu=ctx.gpu, verdict=verdict,
                                                               effect=effect, date=date.today().isoformat()))
                recorded = True
            lessons.append({"rule": rule.id, "verdict": verdict, "effect": effect, "recorded": recorded})
            emit("lesson", op=op, rule=rule.id, verdict=verdict, effect=effect, recorded=recorded)
        summary["lessons"] = lessons
        folder.write_summary()
        return {"done": state["done"] + [op], "op": None}

    def reflect(state: RunState) -> dict:
        op = state["done"][-1]
        if ctx.reflector is None or not ctx.model.available:
            return {}
        spec = get_spec(op)
        summary = folder.op_summary(op)
        result = ctx.reflector.reflect(spec, spec.context(spec.headline_shape(), ctx.planner.sm_count),
                                       history_of.get(op, []), summary.get("lessons", []))
        entries = []
        if result.error:
            emit("reflection", op=op, error=result.error)
        for why in result.rejected:
            emit("reflection", op=op, error=why)
        for rule in result.lessons:
            path = None
            if ctx.rulebook is not None and ctx.replay_of is None:
                path = str(ctx.rulebook.add_learned(rule))
            entry = {"rule": rule.id, "statement": rule.statement, "when": rule.when, "suggests": rule.suggests,
                     "confidence": rule.confidence, "learned_on": rule.learned_on, "path": path}
            entries.append(entry)
            emit("reflection", op=op, **entry)
        summary["reflections"] = entries
        folder.write_summary()
        return {}

    def after_plan(state: RunState) -> Literal["propose", "evaluate", "__end__"]:
        if not state["op"]:
            return END
        # a resumed op whose last candidates were proposed but never judged: those first
        return "evaluate" if state["pending"] else "propose"

    def after_propose(state: RunState) -> Literal["evaluate", "promote"]:
        return "evaluate" if state["pending"] else "promote"

    def after_select(state: RunState) -> Literal["propose", "promote"]:
        return "propose" if state["proposed"] < ctx.plan.budget and not state["exhausted"] else "promote"

    graph = StateGraph(RunState)
    for name, fn in (("plan", plan), ("propose", propose), ("evaluate", evaluate), ("select", select),
                     ("promote", promote), ("reflect", reflect)):
        graph.add_node(name, fn)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", after_plan)
    graph.add_conditional_edges("propose", after_propose)
    graph.add_edge("evaluate", "select")
    graph.add_conditional_edges("select", after_select)
    graph.add_edge("promote", "reflect")
    graph.add_edge("reflect", "plan")
    return graph.compile()


def _promotion(ctx: RunContext, op: str, best: Candidate | None) -> tuple[bool, str]:
    """Promote the run's best into memory when it beats the incumbent beyond noise; (promoted?, why)."""
    def emit(kind: str, **data: Any) -> None:
        _emit(ctx, kind, **data)

    if best is None:
        reason = "no accepted candidate"
    elif ctx.replay_of is not None:
        reason = f"a replay (of {ctx.replay_of}) writes nothing to memory"
    elif ctx.store is None:
        reason = "memory disabled (--no-memory)"
    elif best["origin"] == "incumbent":
        reason = "the incumbent is still the best"
    else:
        incumbent = ctx.plan.incumbent
        decision = None
        # a training run measures forward+backward: an incumbent promoted for its forward alone cannot be
        # raced on those terms, so the first kernel with a checked backward takes its place once re-timed
        forward_only = (incumbent is not None and ctx.config.run.training and best.get("backward")
                        and not incumbent.metrics.get("backward"))
        if incumbent is None or forward_only:
            reason = ("first kernel for this op on this device" if incumbent is None else
                      "first kernel with a checked backward for this op on this device")
            if ctx.timed:
                # timed again in a fresh sandbox, with every cross-check: a speed that does not repeat is void
                again = ctx.evaluator.retime(op, Path(best["path"]))
                if not again.accepted:
                    reason = f"not confirmed when timed again in a fresh sandbox: {again.reason()}"
                    emit("promotion", op=op, promoted=False, reason=reason)
                    return False, reason
                reason += f"; timed again in a fresh sandbox: {again.reason()}"
        elif not ctx.timed:
            emit("promotion", op=op, promoted=False, reason="speed not measured on the CPU; the incumbent stays")
            return False, "speed not measured on the CPU; the incumbent stays"
        else:
            try:
                decision = ctx.evaluator.ab(op, Path(best["path"]), incumbent.path,
                                            backward=bool(ctx.config.run.training and best.get("backward")))
            except (CandidateFailure, SandboxLost) as failure:
                reason = f"A/B rounds failed: {failure.failure_class}: {failure.detail}"
                emit("promotion", op=op, promoted=False, reason=reason)
                return False, reason
            if not decision.promote:
                emit("promotion", op=op, promoted=False, reason=decision.reason, ab=decision.to_dict())
                return False, decision.reason
            reason = decision.reason
        metrics = {k: best.get(k) for k in TIMING_KEYS}
        metrics.update(_train_metrics(best))
        if decision is not None:
            metrics["ab_mean_ratio"] = decision.mean_ratio
        lineage = {"run": ctx.folder.run_id, "candidate": best["id"], "origin": best["origin"],
                   "parents": best.get("parents") or [], "params": best["params"],
                   # the architecture it was measured on: what a later run on another device matches
                   "arch": (ctx.folder.summary.get("device") or {}).get("arch")}
        if best["origin"] == "transfer" and ctx.plan.transfer is not None:
            lineage["transferred_from"] = ctx.plan.transfer.gpu
        kernel = ctx.store.promote(op, ctx.gpu, Path(best["path"]).read_text(), metrics, lineage)
        emit("promotion", op=op, promoted=True, candidate=best["id"], path=str(kernel.path), reason=reason,
             ab=decision.to_dict() if decision else None)
        return True, reason
    emit("promotion", op=op, promoted=False, reason=reason)
    return False, reason
