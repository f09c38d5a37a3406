"""The rule-guided template coder: proposes points of an op's template space, rendered to candidate files.

Order of proposals: the incumbent from memory (re-measured on this run's terms), the seed point with the
rules' suggestions applied, then search: one-knob mutations of the best candidate so far, and now and
then a random untried point so the search leaves its basin. The last proposals of the budget are the
counterfactuals of the best point, one per rule under test (the best with that rule's advice undone),
so each rule is judged on the configuration that matters.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from kernels import OpSpec, TemplateSpace
from memory import Rule

from agents.search.planner import OpPlan
from agents.search.state import best_of


@dataclass(frozen=True)
class Proposal:
    source: str
    origin: str                     # incumbent | rules | seed | test:<rule id> | mutation | explore
    params: dict[str, Any] | None   # the template point, None for a source that is not a template point
    parents: tuple[str, ...] = field(default=())
    note: str = ""


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


def follows(rule: Rule, point: dict[str, Any]) -> bool:
    """Whether a template point takes the rule's advice on every knob the template has."""
    return all(point.get(k) == v for k, v in rule.suggests.items() if k in point)


def counterfactual(space: TemplateSpace, point: dict[str, Any], rule: Rule) -> dict[str, Any]:
    """The point on the other side of the rule: its advice undone if the point follows it, else taken."""
    flipped = dict(point)
    taking = not follows(rule, point)
    for knob, value in rule.suggests.items():
        if knob not in flipped:
            continue
        if taking:
            flipped[knob] = value
        elif isinstance(value, bool):
            flipped[knob] = not value
        elif space.seed[knob] != value:
            flipped[knob] = space.seed[knob]
        else:
            flipped[knob] = next(v for v in space.params[knob] if v != value)
    return space.normalize(flipped)


class TemplateCoder:
    def __init__(self, spec: OpSpec, plan: OpPlan, explore: float, rng: random.Random | None = None):
        self.spec = spec
        self.space = spec.template
        self.plan = plan
        self.explore = explore
        self.rng = rng or random.Random()
        self.tried: set[tuple] = set()
        self.queue: list[tuple[str, dict[str, Any] | None, str]] = []
        self._fill_opening()

    def _point(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.space.normalize(self.space.validate(params))

    def _known_point(self, params: dict[str, Any] | None) -> dict[str, Any] | None:
        """A promoted kernel's parameters as a point of today's template: knobs added since it was promoted
        take their seed value (which keeps the old behaviour); a knob or value since removed makes it
        a kernel that can be re-measured but not mutated (None)."""
        if params is None:
            return None
        try:
            return self._point(params)
        except ValueError:
            return None

    def _fill_opening(self) -> None:
        incumbent = self.plan.incumbent
        if incumbent is not None:
            params = self._known_point(incumbent.lineage.get("params"))
            self.queue.append(("incumbent", params, "the promoted kernel, re-measured"))
        first = self._point({**self.space.seed, **self.plan.suggestions})
        origin = "rules" if self.plan.suggestions else "seed"
        self.queue.append((origin, first, ", ".join(f"{k}={v}" for k, v in self.plan.suggestions.items())))
        self.untested = [r for r in self.plan.rules if r.id in self.plan.tests]

    def _render(self, origin: str, params: dict[str, Any], parents: tuple[str, ...], note: str) -> Proposal:
        self.tried.add(_key(params))
        return Proposal(self.space.render(params), origin, params, parents, note)

    def propose(self, history: list[dict], remaining: int) -> Proposal | None:
        """The next candidate (`remaining` proposals left in the budget), or None when nothing is untried."""
        while self.queue:
            origin, params, note = self.queue.pop(0)
            if origin == "incumbent":
                if params is not None:
                    self.tried.add(_key(self._point(params)))
                return Proposal(self.plan.incumbent.source(), origin, params, (), note)
            if _key(params) not in self.tried:
                return self._render(origin, params, (), note)
        best = best_of(history, template_only=True)
        while best is not None and self.untested and remaining <= len(self.untested):
            rule = self.untested.pop(0)
            point = counterfactual(self.space, best["params"], rule)
            if _key(point) not in self.tried:
                return self._render(f"test:{rule.id}", point, (best["id"],), f"{best['id']} on the other side of {rule.id}")
        if best is not None and self.rng.random() >= self.explore:
            moves = [p for p in (self._point(n) for n in self.space.neighbours(best["params"]))
                     if _key(p) not in self.tried]
            if moves:
                point = self.rng.choice(moves)
                changed = ", ".join(f"{k}={v}" for k, v in point.items() if best["params"].get(k) != v)
                return self._render("mutation", point, (best["id"],), f"from {best['id']}: {changed}")
        untried = [p for p in (self._point(p) for p in self.space.all_points()) if _key(p) not in self.tried]
        if not untried:
            return None
        return self._render("explore", self.rng.choice(untried), (), "random untried point")
