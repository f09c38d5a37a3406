"""The rule-based planner: for each op, which lessons apply, what they suggest, which to put to the test.

It reads the rulebook against the facts of the op's headline shape on this device (e.g. more rows than
twice the SM count) and turns the suggestions that name knobs of the op's template into the first
candidate's defaults; agents/search/lessons.py judges the rules after the search.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from kernels import OpSpec
from memory import KernelStore, PromotedKernel, Rule, Rulebook


@dataclass(frozen=True)
class OpPlan:
    op: str
    budget: int
    context: dict[str, Any]
    rules: tuple[Rule, ...]                  # applicable rules whose suggestions touch the template
    suggestions: dict[str, Any]              # knob -> value, from the most trusted rule that names it
    tests: tuple[str, ...]                   # ids of rules whose counterfactual the coder evaluates
    incumbent: PromotedKernel | None = None
    notes: tuple[str, ...] = field(default=())
    gpu: str = ""                            # the device planned for: rules are trusted by its evidence
    # with no incumbent on this device, the nearest device's winner, re-measured here as the first candidate
    transfer: PromotedKernel | None = None

    def to_event(self) -> dict:
        return {
            "op": self.op, "budget": self.budget, "context": self.context,
            "rules": [{"id": r.id, "confidence": round(r.confidence_on(self.gpu), 3), "suggests": dict(r.suggests),
                       "learned_on": r.learned_on} for r in self.rules],
            "suggestions": self.suggestions, "tests": list(self.tests),
            "incumbent": str(self.incumbent.path) if self.incumbent else None, "notes": list(self.notes),
            "transfer": {"gpu": self.transfer.gpu, "path": str(self.transfer.path)} if self.transfer else None,
        }


class Planner:
    def __init__(self, rulebook: Rulebook | None, store: KernelStore | None, gpu: str, sm_count: int,
                 budget: int, test_rules: bool, training: bool = True, arch: str = ""):
        self.rulebook = rulebook
        self.store = store
        self.gpu = gpu
        self.sm_count = sm_count
        self.budget = budget
        self.test_rules = test_rules
        self.training = training
        self.arch = arch

    def plan(self, spec: OpSpec) -> OpPlan:
        context = spec.context(spec.headline_shape(), self.sm_count)
        knobs = spec.template.params
        applied: list[Rule] = []
        suggestions: dict[str, Any] = {}
        notes: list[str] = []
        rules = self.rulebook.query(spec.name, context, gpu=self.gpu) if self.rulebook else []
        # an inference run holds the backward's knobs at their seed: advice on them is not applied there
        held = frozenset() if self.training else spec.template.backward_knobs
        for rule in rules:  # most trusted first: the first rule to name a knob sets it
            usable = {k: v for k, v in spec.template.knobs_for(rule.suggests).items() if k not in held}
            if not usable:
                continue
            bad = {k: v for k, v in usable.items() if v not in knobs[k]}
            if bad:
                notes.append(f"{rule.id}: {bad} outside the template's values; not applied")
                continue
            if usable != rule.suggests:
                notes.append(f"{rule.id}: {dict(rule.suggests)} read as {usable} in this template")
                # the coder and the judge see the rule in this template's terms
                rule = replace(rule, suggests=usable)
            applied.append(rule)
            for k, v in usable.items():
                suggestions.setdefault(k, v)
        tests = tuple(r.id for r in applied) if self.test_rules else ()
        incumbent = self.store.best(spec.name, self.gpu) if self.store else None
        transfer = None
        if incumbent is None and self.store is not None:
            nearest = self.store.nearest(spec.name, self.gpu, self.arch)
            transfer = nearest[0] if nearest else None
        return OpPlan(spec.name, self.budget, context, tuple(applied), suggestions, tests, incumbent, tuple(notes),
                      gpu=self.gpu, transfer=transfer)
