"""Judging the rulebook by this run's measurements: did each tested rule hold on this hardware?

A rule is judged on a pair: the best candidate of the op and its counterfactual (the same point on the
other side of the rule), both accepted and timed in this run. Without such a pair, or without timings
(the CPU interpreter), the verdict is inconclusive.
"""
from __future__ import annotations

from kernels import TemplateSpace
from memory import Rule

from agents.search.coder import counterfactual, follows
from agents.search.state import best_of


def judge_rule(rule: Rule, space: TemplateSpace, history: list[dict], margin: float) -> tuple[str, str]:
    """(verdict, effect): confirmed / refuted when the side following the rule is faster / slower beyond
    the margin, else inconclusive."""
    best = best_of(history, template_only=True)
    if best is None or best.get("speedup_eager") is None:
        return "inconclusive", "no timed accepted candidate (speed not measured)"
    flipped = counterfactual(space, best["params"], rule)
    pair = [h for h in history if h.get("params") is not None and space.normalize(h["params"]) == flipped]
    if not pair or pair[-1]["status"] != "accepted" or pair[-1].get("speedup_eager") is None:
        return "inconclusive", f"the counterfactual of {best['id']} across the rule was not measured"
    other = pair[-1]
    with_rule, without = (best, other) if follows(rule, best["params"]) else (other, best)
    ratio = with_rule["speedup_eager"] / without["speedup_eager"]
    effect = (f"{with_rule['id']} following it at {with_rule['speedup_eager']:.2f}x eager vs {without['id']} "
              f"without it at {without['speedup_eager']:.2f}x: {ratio:.2f}x")
    if ratio > 1 + margin:
        return "confirmed", effect
    if ratio < 1 - margin:
        return "refuted", effect
    return "inconclusive", effect + f", within the {margin:.0%} margin"
