"""Targets as data: what `evolve run TARGET` evolves, read from TOML files.

A target names its ops (in the order a model's forward pass meets them), the model config the assembly
stage builds (or none), the study it follows in the chain fmha -> microgpt -> nanogpt, and optionally,
per op, the shapes to time with the headline first (every shape of the op is still checked). The shipped
targets live in kernels/targets/*.toml; a path to a .toml file of the same form names a target of one's own.

[target]
name = "microgpt"
ops = ["embedding", "rms_norm", "attention", "cross_entropy"]
model = ""                # "" or a config name of kernels/nanogpt/model.py ("gpt2", "shakespeare-char")
follows = "fmha"          # "" for the first study
[shapes]                  # optional
rms_norm = ["microgpt-B32-T128"]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tomllib

SHIPPED = Path(__file__).parent / "targets"
_KEYS = {"name", "description", "ops", "model", "follows"}


class TargetError(ValueError):
    """A target file that cannot be used: unreadable, an unknown key or op, a shape an op does not have."""


@dataclass(frozen=True)
class Target:
    name: str
    ops: tuple[str, ...]
    description: str = ""
    model: str = ""
    follows: str = ""
    shapes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    path: Path | None = None


def load_target(path: Path, known_ops: dict) -> Target:
    """One target file, checked against the ops `known_ops` (name -> OpSpec) names."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TargetError(f"{path}: not a readable target file ({exc})") from None
    table = data.get("target")
    if not isinstance(table, dict) or set(data) - {"target", "shapes"}:
        raise TargetError(f"{path}: a target file holds a [target] table and optionally [shapes]")
    unknown = set(table) - _KEYS
    if unknown:
        raise TargetError(f"{path}: unknown key(s) in [target]: {', '.join(sorted(unknown))}")
    ops = table.get("ops")
    if not isinstance(ops, list) or not ops or not all(isinstance(op, str) for op in ops) or len(set(ops)) != len(ops):
        raise TargetError(f"{path}: [target].ops must be a non-empty list of distinct op names")
    missing = [op for op in ops if op not in known_ops]
    if missing:
        raise TargetError(f"{path}: unknown op(s) {', '.join(missing)}; known ops: {', '.join(sorted(known_ops))}")
    shapes = {}
    for op, names in (data.get("shapes") or {}).items():
        if op not in ops or not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise TargetError(f"{path}: [shapes].{op} must name shapes of one of the target's ops")
        try:
            known_ops[op].with_timed(names)
        except ValueError as exc:
            raise TargetError(f"{path}: {exc}") from None
        shapes[op] = tuple(names)
    for key in ("name", "description", "model", "follows"):
        if not isinstance(table.get(key, ""), str):
            raise TargetError(f"{path}: [target].{key} must be a string")
    name = table.get("name") or path.stem
    return Target(name=name, ops=tuple(ops), description=table.get("description", ""), model=table.get("model", ""),
                  follows=table.get("follows", ""), shapes=shapes, path=path)


def shipped_targets(known_ops: dict) -> dict[str, Target]:
    """The targets shipped in kernels/targets/, by name."""
    targets = {}
    for path in sorted(SHIPPED.glob("*.toml")):
        target = load_target(path, known_ops)
        targets[target.name] = target
    return targets
