"""The two records of the rulebook: a Rule and one piece of Evidence about it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from memory.errors import MemoryStoreError

RULE_KINDS = ("fact", "law", "rule", "invariant")
VERDICTS = ("confirmed", "refuted", "inconclusive")

# How far one measurement moves a rule's confidence towards certainty (confirmed) or towards zero
# (refuted), as a fraction of the remaining distance: big enough that a few runs on new hardware matter,
# small enough that one noisy measurement does not flip a rule.
EVIDENCE_STEP = 0.25


def _today() -> str:
    return date.today().isoformat()


def _is_iso_date(text: str) -> bool:
    """Accept a plain ISO date or a full ISO timestamp (runs may record either)."""
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            parse(text)
            return True
        except ValueError:
            continue
    return False


@dataclass(frozen=True)
class Evidence:
    """One run's measurement about a rule, on one GPU."""

    run: str
    gpu: str
    verdict: str  # one of VERDICTS
    effect: str = ""  # free text, e.g. "1.18x over BLOCK 128 at 8192x768"
    date: str = field(default_factory=_today)  # ISO date of the measurement

    def __post_init__(self) -> None:
        for name in ("run", "gpu", "verdict", "effect", "date"):
            if not isinstance(getattr(self, name), str):
                raise MemoryStoreError(f"evidence {name} must be a string, got {getattr(self, name)!r}")
        if self.verdict not in VERDICTS:
            raise MemoryStoreError(f"evidence verdict {self.verdict!r} must be one of {', '.join(VERDICTS)}")
        if not _is_iso_date(self.date):
            raise MemoryStoreError(f"evidence date {self.date!r} is not an ISO date (YYYY-MM-DD)")


def _same_value(expected: Any, actual: Any) -> bool:
    # bool is a subclass of int in Python, so without this `causal = true` would match a context value 1.
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    return expected == actual


def _condition_holds(expected: Any, actual: Any) -> bool:
    """A list in `when` means "any of these"; anything else must be equal."""
    if isinstance(expected, (list, tuple)):
        return any(_same_value(option, actual) for option in expected)
    return _same_value(expected, actual)


def _check_table(rule_id: str, name: str, table: Any) -> None:
    if not isinstance(table, dict) or not all(isinstance(key, str) for key in table):
        raise MemoryStoreError(f"rule {rule_id!r}: {name} must be a table with string keys, got {table!r}")
    # TOML has no null, so a None here could never be written back to a lesson file.
    missing = sorted(key for key, value in table.items() if value is None)
    if missing:
        raise MemoryStoreError(f"rule {rule_id!r}: {name} has no value for {', '.join(missing)}")


def _moved(prior: float, evidence) -> float:
    """The prior moved by each measurement in order: confirmations earn trust, refutations cost it."""
    value = prior
    for item in evidence:
        if item.verdict == "confirmed":
            value += EVIDENCE_STEP * (1.0 - value)
        elif item.verdict == "refuted":
            value -= EVIDENCE_STEP * value
    return value


@dataclass(frozen=True, kw_only=True)
class Rule:
    """A lesson with its scope (`op`, `when`), what it suggests, and how much we trust it.

    Keyword-only because the schema's field order puts optional tables between required fields.
    """

    id: str
    kind: str  # one of RULE_KINDS
    statement: str
    op: str  # an op name, or "*" for every op
    when: dict[str, Any] = field(default_factory=dict)
    learned_on: str
    suggests: dict[str, Any] = field(default_factory=dict)
    confidence: float
    origin: str
    evidence: tuple[Evidence, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise MemoryStoreError(f"rule id must be a non-empty string, got {self.id!r}")
        for name in ("statement", "op", "learned_on", "origin"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise MemoryStoreError(f"rule {self.id!r}: {name} must be a non-empty string, got {value!r}")
        if self.kind not in RULE_KINDS:
            raise MemoryStoreError(f"rule {self.id!r}: kind {self.kind!r} must be one of {', '.join(RULE_KINDS)}")
        _check_table(self.id, "when", self.when)
        _check_table(self.id, "suggests", self.suggests)
        confidence = self.confidence
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or math.isnan(confidence):
            raise MemoryStoreError(f"rule {self.id!r}: confidence must be a number, got {confidence!r}")
        if not 0.0 <= confidence <= 1.0:
            raise MemoryStoreError(f"rule {self.id!r}: confidence {confidence} is outside [0, 1]")
        # Frozen: normalise through object.__setattr__ so `1` from TOML compares and prints as 1.0.
        object.__setattr__(self, "confidence", float(confidence))
        evidence = tuple(self.evidence)
        if not all(isinstance(item, Evidence) for item in evidence):
            raise MemoryStoreError(f"rule {self.id!r}: evidence must hold Evidence records")
        object.__setattr__(self, "evidence", evidence)

    def applies_to(self, op: str, context: dict[str, Any]) -> bool:
        """True if the rule covers `op` and every `when` condition is present and met in `context`.

        A condition whose key the context lacks counts as unmet: a rule about head_dim 64 says nothing
        about an op whose head dimension we do not know.
        """
        if self.op not in ("*", op):
            return False
        return all(key in context and _condition_holds(expected, context[key]) for key, expected in self.when.items())

    def tally(self) -> dict[str, int]:
        """How many pieces of evidence carry each verdict (every verdict present, zero if unseen)."""
        counts = dict.fromkeys(VERDICTS, 0)
        for item in self.evidence:
            counts[item.verdict] += 1
        return counts

    @property
    def current_confidence(self) -> float:
        """The stated confidence, moved by the evidence in the order it was recorded.

        Most seed rules were learned on other hardware (an RTX 5070 with cuTile); measurements here are
        what should decide whether they still hold, so each confirmation earns trust and each refutation
        costs it, while the stated value remains the prior. Inconclusive runs leave it unchanged.
        """
        return _moved(self.confidence, self.evidence)

    def confidence_on(self, gpu: str) -> float:
        """The confidence on one GPU: the stated prior moved only by what was measured on that GPU. A rule
        confirmed on another device stays a hypothesis here until measured here."""
        return _moved(self.confidence, [item for item in self.evidence if item.gpu == gpu])

    def verdicts_by_gpu(self) -> dict[str, dict[str, int]]:
        """Per GPU the evidence has come from, how many of each verdict."""
        out: dict[str, dict[str, int]] = {}
        for item in self.evidence:
            out.setdefault(item.gpu, dict.fromkeys(VERDICTS, 0))[item.verdict] += 1
        return out
