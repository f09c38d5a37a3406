"""The rulebook: seed lessons and learned rules from TOML, plus the evidence runs append to them.

Layout under a memory root:
    lessons/*.toml    shipped seed rules (never rewritten by code)
    learned/*.toml    rules proposed by runs, one file each
    evidence.jsonl    one line per measurement: {rule, run, gpu, verdict, effect, date}
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from datetime import date
from pathlib import Path
from typing import Any

import tomli_w

from memory._files import append_line, atomic_write_text, file_stem_for, read_lines, shipped_beneath
from memory._lock import file_lock
from memory.errors import MemoryStoreError
from memory.rule import Evidence, Rule

__all__ = ["Evidence", "Rule", "Rulebook"]

_REQUIRED_RULE_KEYS = frozenset({"id", "kind", "statement", "op", "learned_on", "confidence", "origin"})
_OPTIONAL_RULE_KEYS = frozenset({"when", "suggests", "evidence"})
_REQUIRED_EVIDENCE_KEYS = frozenset({"run", "gpu", "verdict", "date"})
_OPTIONAL_EVIDENCE_KEYS = frozenset({"effect"})
_EVIDENCE_LOG = "evidence.jsonl"
_LEARNED_LOCK = ".lock"  # not *.toml, so the loader never reads it as rules


def _check_keys(label: str, table: dict[str, Any], required: frozenset[str], optional: frozenset[str]) -> None:
    unknown = sorted(set(table) - required - optional)
    missing = sorted(required - set(table))
    if unknown:
        raise MemoryStoreError(f"{label}: unknown key(s) {', '.join(unknown)}")
    if missing:
        raise MemoryStoreError(f"{label}: missing required key(s) {', '.join(missing)}")


def _evidence_from_table(rule_label: str, table: Any) -> Evidence:
    if not isinstance(table, dict):
        raise MemoryStoreError(f"{rule_label}: each evidence entry must be a table, got {table!r}")
    _check_keys(f"{rule_label} evidence", table, _REQUIRED_EVIDENCE_KEYS, _OPTIONAL_EVIDENCE_KEYS)
    fields = dict(table)
    # An unquoted TOML date parses to datetime.date; keep the record a plain ISO string.
    if isinstance(fields["date"], date):
        fields["date"] = fields["date"].isoformat()
    try:
        return Evidence(**fields)
    except MemoryStoreError as err:
        raise MemoryStoreError(f"{rule_label}: {err}") from None


def _rule_from_table(table: Any, position: int) -> Rule:
    if not isinstance(table, dict):
        raise MemoryStoreError(f"[[rule]] number {position} must be a table")
    label = f"rule {table.get('id', f'number {position}')!r}"
    _check_keys(label, table, _REQUIRED_RULE_KEYS, _OPTIONAL_RULE_KEYS)
    fields = dict(table)
    raw_evidence = fields.pop("evidence", [])
    if not isinstance(raw_evidence, list):
        raise MemoryStoreError(f"{label}: evidence must be a list of tables")
    evidence = tuple(_evidence_from_table(label, item) for item in raw_evidence)
    return Rule(**fields, evidence=evidence)


def _rules_from_file(path: Path) -> list[Rule]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise MemoryStoreError(f"{path}: not valid TOML: {err}") from None
    unknown = sorted(set(document) - {"rule"})
    if unknown:
        raise MemoryStoreError(f"{path}: unknown top-level key(s) {', '.join(unknown)}; rules go in [[rule]] tables")
    tables = document.get("rule", [])
    if not isinstance(tables, list):
        raise MemoryStoreError(f"{path}: 'rule' must be an array of tables ([[rule]])")
    try:
        return [_rule_from_table(table, position) for position, table in enumerate(tables, start=1)]
    except MemoryStoreError as err:
        raise MemoryStoreError(f"{path}: {err}") from None


def _rule_to_table(rule: Rule) -> dict[str, Any]:
    """The TOML table of a rule; empty optional tables are left out, as they are optional on load."""
    table: dict[str, Any] = {
        "id": rule.id,
        "kind": rule.kind,
        "statement": rule.statement,
        "op": rule.op,
        "learned_on": rule.learned_on,
        "confidence": rule.confidence,
        "origin": rule.origin,
    }
    if rule.when:
        table["when"] = dict(rule.when)
    if rule.suggests:
        table["suggests"] = dict(rule.suggests)
    if rule.evidence:
        table["evidence"] = [dataclasses.asdict(item) for item in rule.evidence]
    return table


def _rules_of(root: Path) -> dict[str, Rule]:
    """The rules of one memory root, lessons then learned; a duplicate id within it is an error."""
    rules: dict[str, Rule] = {}
    defined_in: dict[str, Path] = {}
    for folder in ("lessons", "learned"):
        for path in sorted((root / folder).glob("*.toml")):
            for rule in _rules_from_file(path):
                if rule.id in rules:
                    raise MemoryStoreError(
                        f"{path}: rule {rule.id!r}: duplicate id, already defined in {defined_in[rule.id]}"
                    )
                rules[rule.id] = rule
                defined_in[rule.id] = path
    return rules


class Rulebook:
    """Every rule known under one memory root, with the evidence runs have recorded about them."""

    def __init__(self, root: Path, rules: list[Rule] | tuple[Rule, ...] = ()) -> None:
        self._root = Path(root)
        self._rules: dict[str, Rule] = {}
        for rule in rules:
            if rule.id in self._rules:
                raise MemoryStoreError(f"duplicate rule id {rule.id!r}")
            self._rules[rule.id] = rule

    @classmethod
    def load(cls, root: Path, defaults: Path | None = None) -> Rulebook:
        """Read lessons/*.toml then learned/*.toml (each sorted), then merge evidence.jsonl.

        A missing root or subfolder gives an empty rulebook, so a fresh checkout or `--no-memory` works.
        `defaults`: a read-only memory root read first (the rulebook shipped with the project, with its
        evidence; by default what the root's layers.toml names); a rule of `root` with the same id takes its
        place. Evidence and lessons are written to `root` only.
        """
        root = Path(root)
        defaults = shipped_beneath(root) if defaults is None else defaults
        layers = [root]
        if defaults is not None and Path(defaults).resolve() != root.resolve():
            layers.insert(0, Path(defaults))
        rules: dict[str, Rule] = {}
        for layer in layers:
            rules.update(_rules_of(layer))
        book = cls(root, list(rules.values()))
        for layer in layers:
            book._merge_evidence_log(layer)
        return book

    def _merge_evidence_log(self, root: Path) -> None:
        path = Path(root) / _EVIDENCE_LOG
        for line_number, line in enumerate(read_lines(path), start=1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A line torn by a writer killed mid-write carries no usable measurement; skip it.
                continue
            if not isinstance(record, dict):
                continue
            rule_id = record.get("rule")
            # Evidence about a rule this checkout does not have (a learned rule since deleted, another
            # branch's lesson) stays in the log for whoever has the rule, and is ignored here.
            if rule_id not in self._rules:
                continue
            label = f"{path} line {line_number}: rule {rule_id!r}"
            fields = {key: value for key, value in record.items() if key != "rule"}
            evidence = _evidence_from_table(label, fields)
            rule = self._rules[rule_id]
            self._rules[rule_id] = dataclasses.replace(rule, evidence=rule.evidence + (evidence,))

    @property
    def root(self) -> Path:
        return self._root

    @property
    def rules(self) -> list[Rule]:
        """All rules, in load order (seed lessons first, then learned ones)."""
        return list(self._rules.values())

    def __len__(self) -> int:
        return len(self._rules)

    def __contains__(self, rule_id: object) -> bool:
        return rule_id in self._rules

    def get(self, rule_id: str) -> Rule:
        try:
            return self._rules[rule_id]
        except KeyError:
            raise KeyError(f"no rule with id {rule_id!r} in the rulebook at {self._root}") from None

    def query(self, op: str, context: dict[str, Any], include_invariants: bool = False,
              gpu: str | None = None) -> list[Rule]:
        """Rules that apply to `op` in `context`, most trusted first (ties broken by id); with `gpu`, trusted
        by what was measured on that GPU alone.

        Invariants are correctness conditions of the build, not tuning advice, so a planner asking what
        to try does not get them unless it asks.
        """
        matches = [
            rule
            for rule in self._rules.values()
            if rule.applies_to(op, context) and (include_invariants or rule.kind != "invariant")
        ]
        if gpu is not None:
            return sorted(matches, key=lambda rule: (-rule.confidence_on(gpu), rule.id))
        return sorted(matches, key=lambda rule: (-rule.current_confidence, rule.id))

    def invariants(self) -> list[Rule]:
        return sorted((rule for rule in self._rules.values() if rule.kind == "invariant"), key=lambda r: r.id)

    def record_evidence(self, rule_id: str, evidence: Evidence) -> Rule:
        """Append a measurement to evidence.jsonl and return the rule with it.

        Evidence goes to a log rather than into the TOML so that seed files stay as written (reviewable,
        diffable) and concurrent runs only ever append.
        """
        rule = self.get(rule_id)
        if not isinstance(evidence, Evidence):
            raise MemoryStoreError(f"rule {rule_id!r}: record_evidence needs an Evidence, got {evidence!r}")
        line = json.dumps({"rule": rule_id, **dataclasses.asdict(evidence)}, ensure_ascii=False)
        append_line(self._root / _EVIDENCE_LOG, line)
        updated = dataclasses.replace(rule, evidence=rule.evidence + (evidence,))
        self._rules[rule_id] = updated
        return updated

    def add_learned(self, rule: Rule) -> Path:
        """Write a rule proposed by a run to learned/<id>.toml and add it to this rulebook.

        The caller chooses the (low) starting confidence; evidence from later runs then moves it.
        """
        if not isinstance(rule, Rule):
            raise MemoryStoreError(f"add_learned needs a Rule, got {rule!r}")
        path = self._root / "learned" / f"{file_stem_for(rule.id)}.toml"
        if rule.id in self._rules:
            raise MemoryStoreError(f"{path}: rule {rule.id!r}: id already exists in the rulebook")
        try:
            text = tomli_w.dumps({"rule": [_rule_to_table(rule)]})
        except TypeError as err:
            raise MemoryStoreError(f"{path}: rule {rule.id!r}: value not representable in TOML: {err}") from None
        # Under the lock, so that of two runs learning the same id at once exactly one writes its file.
        with file_lock(self._root / "learned" / _LEARNED_LOCK):
            if path.exists():
                # Two ids can map to one file name ("a/b" and "a_b"), or another run learned this id since we
                # loaded: never overwrite another rule's file.
                raise MemoryStoreError(f"{path}: rule {rule.id!r}: file already exists for another rule")
            atomic_write_text(path, text)
        self._rules[rule.id] = rule
        return path
