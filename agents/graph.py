"""The run as a LangGraph StateGraph: plan -> propose -> evaluate -> select -> (propose | promote) -> plan.

Nodes are small functions over RunState; the heavy objects (evaluator, memory, run folder, display)
live in a RunContext the nodes close over, so the state stays plain data.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Literal

from langgraph.graph import END, START, StateGraph

from evaluators import Evaluator, Verdict
from kernels import get_spec
from memory import CandidateArchive, Evidence, KernelStore, Rulebook

from .coder import TemplateCoder
from .config import Config
from .lessons import judge_rule
from .planner import OpPlan, Planner
from .run_folder import RunFolder
from .state import Candidate, RunState, best_of


# the numbers of a verdict's headline timing that candidates, summaries and promotions carry
TIMING_KEYS = ("speedup_eager", "speedup_compile", "roofline_fraction", "gbps", "candidate_ms", "eager_ms",
               "compile_ms")


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

    @property
    def timed(self) -> bool:
        return self.config.run.device == "cuda"


def _emit(ctx: RunContext, kind: str, **data: Any) -> None:
    """Log an event to the run folder and show it."""
    ctx.folder.log(kind, **data)
    ctx.on_event(kind, data)


def _candidate_from(pending: Candidate, verdict: Verdict) -> Candidate:
    timing = verdict.timing or {}
    return {
        **pending,
        "status": verdict.status,
        "failure_class": verdict.failure_class,
        "reason": verdict.reason(),
        **{k: timing.get(k) for k in TIMING_KEYS},
    }


def build_graph(ctx: RunContext):
    folder = ctx.folder

    def emit(kind: str, **data: Any) -> None:
        _emit(ctx, kind, **data)

    def plan(state: RunState) -> dict:
        if not state["queue"]:
            return {"op": None}
        op = state["queue"][0]
        spec = get_spec(op)
        ctx.plan = ctx.planner.plan(spec)
        ctx.coder = TemplateCoder(spec, ctx.plan, ctx.config.coder.explore, ctx.rng)
        emit("plan", **ctx.plan.to_event())
        return {"queue": state["queue"][1:], "op": op, "proposed": 0, "pending": None, "history": [],
                "exhausted": False}

    def propose(state: RunState) -> dict:
        proposal = ctx.coder.propose(state["history"], ctx.plan.budget - state["proposed"])
        if proposal is None:
            emit("plan", op=state["op"], note="template space exhausted before the budget")
            return {"pending": None, "exhausted": True}
        cid = f"c{state['proposed'] + 1:03d}"
        path = folder.write_candidate(state["op"], cid, proposal.source)
        pending: Candidate = {"id": cid, "op": state["op"], "origin": proposal.origin, "params": proposal.params,
                              "parents": list(proposal.parents), "path": str(path)}
        emit("candidate", **pending, note=proposal.note)
        return {"pending": pending, "proposed": state["proposed"] + 1}

    def evaluate(state: RunState) -> dict:
        pending = state["pending"]
        verdict = ctx.evaluator.evaluate(pending["op"], Path(pending["path"]),
                                         on_message=lambda m: ctx.on_event("progress", {"message": m}))
        candidate = _candidate_from(pending, verdict)
        emit("verdict", id=pending["id"], **verdict.to_dict())
        if ctx.archive is not None:
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
        return {"history": state["history"] + [candidate], "pending": None}

    def select(state: RunState) -> dict:
        best = best_of(state["history"])
        summary = folder.op_summary(state["op"])
        if best is not None:
            summary["best"] = {"candidate": best["id"], "path": best["path"], "origin": best["origin"],
                               "params": best["params"],
                               **{k: best.get(k) for k in TIMING_KEYS}}
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
            if ctx.timed and ctx.rulebook is not None:
                ctx.rulebook.record_evidence(rule.id, Evidence(run=folder.run_id, gpu=ctx.gpu, verdict=verdict,
                                                               effect=effect, date=date.today().isoformat()))
                recorded = True
            lessons.append({"rule": rule.id, "verdict": verdict, "effect": effect, "recorded": recorded})
            emit("lesson", op=op, rule=rule.id, verdict=verdict, effect=effect, recorded=recorded)
        summary["lessons"] = lessons
        folder.write_summary()
        return {"done": state["done"] + [op], "op": None}

    def after_plan(state: RunState) -> Literal["propose", "__end__"]:
        return "propose" if state["op"] else END

    def after_propose(state: RunState) -> Literal["evaluate", "promote"]:
        return "evaluate" if state["pending"] else "promote"

    def after_select(state: RunState) -> Literal["propose", "promote"]:
        return "propose" if state["proposed"] < ctx.plan.budget and not state["exhausted"] else "promote"

    graph = StateGraph(RunState)
    for name, fn in (("plan", plan), ("propose", propose), ("evaluate", evaluate), ("select", select),
                     ("promote", promote)):
        graph.add_node(name, fn)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", after_plan)
    graph.add_conditional_edges("propose", after_propose)
    graph.add_edge("evaluate", "select")
    graph.add_conditional_edges("select", after_select)
    graph.add_edge("promote", "plan")
    return graph.compile()


def _promotion(ctx: RunContext, op: str, best: Candidate | None) -> tuple[bool, str]:
    """Promote the run's best into memory when it beats the incumbent beyond noise; (promoted?, why)."""
    def emit(kind: str, **data: Any) -> None:
        _emit(ctx, kind, **data)

    if best is None:
        reason = "no accepted candidate"
    elif ctx.store is None:
        reason = "memory disabled (--no-memory)"
    elif best["origin"] == "incumbent":
        reason = "the incumbent is still the best"
    else:
        incumbent = ctx.plan.incumbent
        decision = None
        if incumbent is None:
            reason = "first kernel for this op on this device"
        elif not ctx.timed:
            emit("promotion", op=op, promoted=False, reason="speed not measured on the CPU; the incumbent stays")
            return False, "speed not measured on the CPU; the incumbent stays"
        else:
            decision = ctx.evaluator.ab(op, Path(best["path"]), incumbent.path)
            if not decision.promote:
                emit("promotion", op=op, promoted=False, reason=decision.reason, ab=decision.to_dict())
                return False, decision.reason
            reason = decision.reason
        metrics = {k: best.get(k) for k in TIMING_KEYS}
        if decision is not None:
            metrics["ab_mean_ratio"] = decision.mean_ratio
        lineage = {"run": ctx.folder.run_id, "candidate": best["id"], "origin": best["origin"],
                   "parents": best.get("parents") or [], "params": best["params"]}
        kernel = ctx.store.promote(op, ctx.gpu, Path(best["path"]).read_text(), metrics, lineage)
        emit("promotion", op=op, promoted=True, candidate=best["id"], path=str(kernel.path), reason=reason,
             ab=decision.to_dict() if decision else None)
        return True, reason
    emit("promotion", op=op, promoted=False, reason=reason)
    return False, reason
