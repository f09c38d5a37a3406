"""The reflector: after an op's search, the model proposes lessons from the evidence of that search.

A lesson enters the rulebook (memory/learned/) as a hypothesis: kind "rule", the low confidence of
[llm].lesson_confidence, learned on this device. Nothing else raises its confidence but measurements:
later runs apply it through the planner, test it against its counterfactual, and record the verdicts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kernels import OpSpec
from memory import MemoryStoreError, Rule, Rulebook

from agents.llm.client import BudgetSpent, ChatModel, LLMCallFailed
from agents.llm.coder import lessons_text, prompt
from agents.llm.planner import Unusable, parse_json_object

MAX_LESSONS = 3
_NAME = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Reflection:
    lessons: tuple[Rule, ...]
    rejected: tuple[str, ...]      # why proposed lessons were not taken
    error: str | None = None       # why there was no usable answer at all


def _scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def lesson_rules(data: dict, spec: OpSpec, context: dict, gpu: str, run_id: str, confidence: float,
                 taken: set[str]) -> tuple[list[Rule], list[str]]:
    """Rules from a parsed answer; each lesson that breaks the schema is left out with its reason."""
    lessons = data.get("lessons")
    if not isinstance(lessons, list):
        raise Unusable("the answer has no \"lessons\" list")
    rules, rejected = [], []
    for n, item in enumerate(lessons[:MAX_LESSONS], start=1):
        try:
            if not isinstance(item, dict):
                raise Unusable("not an object")
            name = _NAME.sub("-", str(item.get("name") or "").lower()).strip("-")[:48]
            statement = item.get("statement")
            when, suggests = item.get("when") or {}, item.get("suggests") or {}
            if not name or not isinstance(statement, str) or not statement.strip():
                raise Unusable("needs a name and a statement")
            if not isinstance(when, dict) or not isinstance(suggests, dict):
                raise Unusable("when and suggests must be objects")
            bad_when = [k for k, v in when.items() if k not in context or not (_scalar(v) or isinstance(v, list))]
            if bad_when:
                raise Unusable(f"when uses keys outside the context: {', '.join(map(str, bad_when))}")
            for knob, value in suggests.items():
                allowed = spec.template.params.get(knob)
                if allowed is None or value not in allowed:
                    raise Unusable(f"suggests {knob}={value!r}, not a value of the template")
            rule_id = f"learned.{spec.name}.{name}"
            while rule_id in taken:
                rule_id += "-2"
            rules.append(Rule(id=rule_id, kind="rule", statement=statement.strip(), op=spec.name, when=dict(when),
                              learned_on=gpu, suggests=dict(suggests), confidence=confidence,
                              origin=f"reflector, run {run_id}"))
            taken.add(rule_id)
        except (Unusable, MemoryStoreError) as exc:
            rejected.append(f"lesson {n}: {exc}")
    return rules, rejected


def _candidate_line(c: dict) -> str:
    speed = ("speed not measured" if c.get("speedup_eager") is None else
             f"{c['speedup_eager']:.2f}x eager, {c.get('speedup_compile') or 0:.2f}x compile, "
             f"{c.get('gbps') or 0:,.0f} GB/s")
    what = c.get("params") or "LLM-written"
    outcome = speed if c["status"] == "accepted" else c.get("reason", c["status"])
    return f"- {c['id']} ({c['origin']}; {what}): {c['status']}, {outcome}"


class Reflector:
    def __init__(self, model: ChatModel, rulebook: Rulebook | None, gpu: str, run_id: str, confidence: float,
                 replay_of: str | None = None):
        self.model = model
        # a replay names its lessons as the replayed run did, not around the rules that run wrote
        self.not_taken = f"reflector, run {replay_of}" if replay_of else None
        self.rulebook = rulebook
        self.gpu = gpu
        self.run_id = run_id
        self.confidence = confidence

    def reflect(self, spec: OpSpec, context: dict, history: list[dict], verdicts: list[dict]) -> Reflection:
        existing = self.rulebook.query(spec.name, context) if self.rulebook else []
        knobs = "\n".join(f"- {k}: {list(v)}" for k, v in spec.template.params.items())
        task = prompt("reflector_task.md", op=spec.name, gpu=self.gpu, context=context, knobs=knobs,
                      rules=lessons_text(existing), candidates="\n".join(map(_candidate_line, history)) or "(none)",
                      verdicts="\n".join(f"- {v['rule']}: {v['verdict']} ({v['effect']})" for v in verdicts)
                      or "(none tested)")
        messages = [{"role": "system", "content": prompt("reflector_system.md", max_lessons=MAX_LESSONS)},
                    {"role": "user", "content": task}]
        try:
            reply = self.model.chat("reflector", spec.name, messages)
            taken = {r.id for r in (self.rulebook.rules if self.rulebook else []) if r.origin != self.not_taken}
            rules, rejected = lesson_rules(parse_json_object(reply.content), spec, context, self.gpu, self.run_id,
                                           self.confidence, taken)
        except (BudgetSpent, LLMCallFailed, Unusable) as exc:
            return Reflection((), (), str(exc))
        return Reflection(tuple(rules), tuple(rejected))
