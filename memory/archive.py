"""Every evaluated candidate, per op, so that later runs can look results up instead of re-evaluating.

Layout under a memory root: archive/<op>.jsonl, one JSON object per line, appended only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from memory._files import append_line, read_lines, require_safe_name
from memory.errors import MemoryStoreError


def source_sha(source: str) -> str:
    """The identity of a candidate: sha256 of its exact source text (UTF-8)."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


class CandidateArchive:
    """Append-only log of candidates and their outcomes under one memory root."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    @property
    def root(self) -> Path:
        return self._root

    def path_for(self, op: str) -> Path:
        return self._root / "archive" / f"{require_safe_name(op, 'op')}.jsonl"

    def record(self, op: str, source: str, entry: dict[str, Any]) -> str:
        """Append {"sha", "op", **entry} for this candidate and return its sha."""
        path = self.path_for(op)
        if not isinstance(source, str):
            raise MemoryStoreError(f"{path}: candidate source must be text, got {type(source).__name__}")
        if not isinstance(entry, dict):
            raise MemoryStoreError(f"{path}: archive entry must be a dict, got {type(entry).__name__}")
        sha = source_sha(source)
        # "sha" and "op" are the archive's own keys; an entry that disagrees would corrupt lookups.
        for key, expected in (("sha", sha), ("op", op)):
            if key in entry and entry[key] != expected:
                raise MemoryStoreError(f"{path}: entry key {key!r} = {entry[key]!r} contradicts {expected!r}")
        try:
            line = json.dumps({"sha": sha, "op": op, **entry}, ensure_ascii=False)
        except (TypeError, ValueError) as err:
            raise MemoryStoreError(f"{path}: archive entry is not JSON-serialisable: {err}") from None
        append_line(path, line)
        return sha

    def entries(self, op: str) -> list[dict[str, Any]]:
        """Every readable entry for `op`, oldest first.

        Lines that do not parse (a crash mid-write leaves a torn line) are skipped: the archive is a
        cache of past work, and losing one record only costs one re-evaluation.
        """
        records: list[dict[str, Any]] = []
        for line in read_lines(self.path_for(op)):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def lookup(self, op: str, source: str) -> dict[str, Any] | None:
        """The latest entry for exactly this source text, or None if it was never evaluated."""
        sha = source_sha(source)
        for record in reversed(self.entries(op)):
            if record.get("sha") == sha:
                return record
        return None
