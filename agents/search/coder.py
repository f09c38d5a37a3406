"""The rule-guided template coder: proposes points of an op's template space, rendered to candidate files.

Order of proposals: the incumbent from memory (re-measured on this run's terms), or with none on this device
the nearest device's winner (a transfer, re-measured here), the seed point with the
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
    origin: str                     # incumbent | incumbent-point | transfer | rules | seed | test:<rule id> | mutation | explore
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
    def __init__(self, spec: OpSpec, plan: OpPlan, explore: float, rng: random.Random | None = None,
                 training: bool = True):
        self.spec = spec
        # an inference run searches the forward's knobs only; its candidates keep the seed's backward
        self.space = spec.template if training else spec.template.forward_only()
        self.training = training
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
            if self.training and not incumbent.metrics.get("backward") and params is not None:
                # promoted for its forward alone: its point, rendered with a backward, is what a training
                # run can measure on its own terms
                self.queue.append(("incumbent-point", params,
                                   "the promoted kernel's point, rendered with its backward"))
            else:
                self.queue.append(("incumbent", params, "the promoted kernel, re-measured"))
        elif self.plan.transfer is not None:
            # nothing promoted on this device yet: the nearest device's winner, measured here first (its
            # point rendered anew where it is one, so a training run gets it with a backward)
            transfer = self.plan.transfer
            self.queue.append(("transfer", self._known_point(transfer.lineage.get("params")),
                               f"promoted on {transfer.gpu}, re-measured here"))
        first = self._point({**self.space.seed, **self.plan.suggestions})
        origin = "rules" if self.plan.suggestions else "seed"
        self.queue.append((origin, first, ", ".join(f"{k}={v}" for k, v in self.plan.suggestions.items())))
        self.untested = [r for r in self.plan.rules if r.id in self.plan.tests]

    def skip_tried(self, candidates: list[dict]) -> None:
        """Candidates an interrupted run already proposed: never proposed again, opening entries included
        (the incumbent once re-measured, a rule's counterfactual once tested)."""
        origins = {c.get("origin") for c in candidates}
        for c in candidates:
            point = self._known_point(c.get("params"))
            if point is not None:
                self.tried.add(_key(point))
        self.queue = [(origin, params, note) for origin, params, note in self.queue
                      if not (origin in ("incumbent", "incumbent-point", "transfer") and origin in origins)
                      and not (origin != "incumbent" and params is not None and _key(params) in self.tried)]
        self.untested = [r for r in self.untested if f"test:{r.id}" not in origins]

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
            if origin == "transfer" and params is None:
                return Proposal(self.plan.transfer.source(), origin, None, (), note)
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
        point = self.space.untried_point(self.rng, lambda p: _key(p) in self.tried)
        if point is None:
            return None
        return self._render("explore", point, (), "random untried point")
