"""The LLM planner: picks the next op and a strategy from the device profile, the rulebook and the history.

Its answer is one JSON object checked against PLAN_SCHEMA (below) and the run's facts (the op must be one
still to evolve, the rules applicable ones, the suggestions values of the op's template); anything else
falls back to the rule-based planner, with the reason in the plan event.

    {"op": str, "strategy": str, "rules": [rule id, ...], "suggestions": {knob: value}}   (suggestions optional)
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from kernels import get_spec
from memory import Rulebook

from agents.llm.client import BudgetSpent, ChatModel, LLMCallFailed
from agents.llm.coder import lessons_text, prompt
from agents.search.planner import OpPlan, Planner

PLAN_SCHEMA = {
    "type": "object",
    "required": ["op", "strategy", "rules"],
    "properties": {
        "op": {"type": "string"},
        "strategy": {"type": "string", "maxLength": 2000},
        "rules": {"type": "array", "items": {"type": "string"}},
        "suggestions": {"type": "object"},
    },
    "additionalProperties": False,
}
_JSON_BLOCK = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


class Unusable(ValueError):
    """The model's answer is not a plan this run can follow."""


def parse_json_object(answer: str) -> dict:
    """The one JSON object of an answer, bare or in a ```json block."""
    fenced = _JSON_BLOCK.findall(answer)
    text = fenced[0] if len(fenced) == 1 else answer
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise Unusable("the answer holds no JSON object")
    try:
        data = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        raise Unusable(f"the answer's JSON does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise Unusable("the answer's JSON is not an object")
    return data


def _check_schema(data: dict) -> None:
    props = PLAN_SCHEMA["properties"]
    missing = [k for k in PLAN_SCHEMA["required"] if k not in data]
    if missing:
        raise Unusable(f"the plan lacks {', '.join(missing)}")
    extra = sorted(set(data) - set(props))
    if extra:
        raise Unusable(f"the plan has unknown keys {', '.join(extra)}")
    kinds = {"string": str, "array": list, "object": dict}
    for key, value in data.items():
        if not isinstance(value, kinds[props[key]["type"]]):
            raise Unusable(f"plan.{key} must be a JSON {props[key]['type']}")
    if len(data["strategy"]) > props["strategy"]["maxLength"]:
        raise Unusable("plan.strategy is too long")
    if not all(isinstance(r, str) for r in data["rules"]):
        raise Unusable("plan.rules must list rule ids")


@dataclass(frozen=True)
class Choice:
    op: str
    plan: OpPlan
    strategy: str
    planner: str              # "llm" or "rules"
    fallback: str | None      # why the rule-based plan was used, when the model was asked


def validate(data: dict, queue: list[str], base: OpPlan | None, planner: Planner) -> tuple[str, OpPlan, str]:
    """(op, plan, strategy) from a parsed answer, or Unusable. `base` is the rule-based plan of queue[0]."""
    _check_schema(data)
    op = data["op"]
    if op not in queue:
        raise Unusable(f"plan.op {op!r} is not one of the ops still to evolve ({', '.join(queue)})")
    spec = get_spec(op)
    plan = base if base is not None and base.op == op else planner.plan(spec)
    known = {r.id: r for r in plan.rules}
    unknown = [r for r in data["rules"] if r not in known]
    if unknown:
        raise Unusable(f"plan.rules names rules that do not apply to {op}: {', '.join(unknown)}")
    chosen = [known[r] for r in known if r in data["rules"]]   # keep the planner's trust order
    suggestions: dict[str, Any] = {}
    for rule in chosen:
        for knob, value in rule.suggests.items():
            suggestions.setdefault(knob, value)
    for knob, value in (data.get("suggestions") or {}).items():
        allowed = spec.template.params.get(knob)
        if allowed is None:
            raise Unusable(f"plan.suggestions: {op}'s template has no knob {knob!r}")
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            raise Unusable(f"plan.suggestions: {knob}={value!r} is outside its values {list(allowed)}")
        suggestions[knob] = value
    tests = tuple(r.id for r in chosen if r.id in plan.tests)
    adjusted = replace(plan, rules=tuple(chosen), suggestions=suggestions, tests=tests,
                       notes=plan.notes + (f"rules and suggestions chosen by the LLM planner",))
    return op, adjusted, data["strategy"].strip()


class LLMPlanner:
    def __init__(self, model: ChatModel, planner: Planner, rulebook: Rulebook | None, device: dict):
        self.model = model
        self.planner = planner
        self.rulebook = rulebook
        self.device = device

    def _history(self, summary: dict) -> str:
        lines = []
        for op, o in summary["ops"].items():
            if not o["candidates"]:
                continue
            best = o.get("best") or {}
            lines.append(f"- {op}: {o['candidates']} candidates, {o['accepted']} accepted, failures "
                         f"{o['failures'] or 'none'}, best {best.get('candidate', 'none')} ({best.get('origin', '-')}, "
                         f"{best.get('speedup_eager') or 'speed not measured'}x eager), promoted {o['promoted']}")
        return "\n".join(lines) or "(no op searched yet in this run)"

    def _ops(self, queue: list[str]) -> str:
        lines = []
        for op in queue:
            spec = get_spec(op)
            context = spec.context(spec.headline_shape(), self.planner.sm_count)
            plan = self.planner.plan(spec)
            rules = lessons_text(self.rulebook.query(op, context)) if self.rulebook else "(rulebook off)"
            incumbent = plan.incumbent
            shown = ("none" if incumbent is None else
                     f"promoted kernel at {incumbent.metrics.get('speedup_eager') or 'unmeasured '}x eager")
            lines.append(f"## {op}: {spec.description}\ncontext {context}\ntemplate knobs "
                         f"{ {k: list(v) for k, v in spec.template.params.items()} }\n"
                         f"rules that apply (ids usable in \"rules\"): {[r.id for r in plan.rules]}\n"
                         f"incumbent: {shown}\nlessons:\n{rules}")
        return "\n\n".join(lines)

    def choose(self, queue: list[str], summary: dict) -> Choice:
        base = self.planner.plan(get_spec(queue[0]))
        messages = [{"role": "system", "content": prompt("planner_system.md")},
                    {"role": "user", "content": prompt("planner_task.md", device=json.dumps(self.device),
                                                       ops=self._ops(queue), history=self._history(summary))}]
        try:
            reply = self.model.chat("planner", None, messages)
            op, plan, strategy = validate(parse_json_object(reply.content), queue, base, self.planner)
        except BudgetSpent as exc:
            return Choice(queue[0], base, "", "rules", f"the model was not asked: {exc}")
        except (LLMCallFailed, Unusable) as exc:
            return Choice(queue[0], base, "", "rules", str(exc))
        return Choice(op, plan, strategy, "llm", None)
