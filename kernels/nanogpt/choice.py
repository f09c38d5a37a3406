"""Which Triton kernel runs each op of the model: the seed, a point of the op's template space, or an entry
function taken from a kernel file.

A promoted kernel rendered from a template is a point of that template (its meta.toml keeps the point), so
the model runs the op module's own launchers at that point: the forward's knobs drive the forward launcher,
the backward's knobs the module's Triton backward (the seed's backward for a point recorded before the
template had backward knobs). A kernel written outside the template (by an LLM) supplies its forward only;
the backward stays the module's seed.
The choice is process-wide, like a library's kernel registry: `install` sets it, the custom ops read it.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import add_layer_norm, attention, bias_gelu, cross_entropy, embedding, layer_norm

# op -> (the launcher a template point drives, the seed point)
LAUNCHERS: dict[str, tuple[Callable, dict[str, Any]]] = {
    "embedding": (embedding._embedding_fwd, embedding.SEED_PARAMS),
    "layer_norm": (layer_norm._layer_norm_fwd, layer_norm.SEED_PARAMS),
    "add_layer_norm": (add_layer_norm._add_layer_norm_fwd, add_layer_norm.SEED_PARAMS),
    "bias_gelu": (bias_gelu._bias_gelu_fwd, bias_gelu.SEED_PARAMS),
    "attention": (attention._attention_fwd, attention.SEED_PARAMS),
    "cross_entropy": (cross_entropy._cross_entropy_fwd, cross_entropy.SEED_PARAMS),
}
MODEL_OPS = tuple(LAUNCHERS)


class KernelChoiceError(ValueError):
    """A kernel choice that cannot run: unknown op, parameters outside the template, an unloadable file."""


@dataclass(frozen=True)
class KernelChoice:
    """One op's kernel. Exactly one of `params` (a template point) and `entry` (a forward from a file)."""

    op: str
    source: str = "seed"                       # what it is, for people: "seed", "promoted <path>", ...
    params: Mapping[str, Any] | None = None
    entry: Callable | None = field(default=None, compare=False)

    def forward(self) -> Callable:
        """The forward as the op's entry signature sees it (attention gets `lse=` when it has params)."""
        launcher, _ = LAUNCHERS[self.op]
        if self.params is None:
            return self.entry
        params = _template(self.op).forward_point(self.params)
        return lambda *args, **extra: launcher(*args, **params, **extra)

    def backward_params(self) -> dict[str, Any]:
        """The knobs of the op module's backward launcher: the point's, else the backward's seed."""
        seed_point = dict(_template(self.op).backward_point(_template(self.op).seed))
        if self.params is None:
            return seed_point
        return {**seed_point, **_template(self.op).backward_point(self.params)}


def _template(op: str):
    from .. import get_spec

    return get_spec(op).template


def seed(op: str) -> KernelChoice:
    if op not in LAUNCHERS:
        raise KernelChoiceError(f"unknown op {op!r}; the model's ops are {', '.join(MODEL_OPS)}")
    return KernelChoice(op, "seed", dict(_template(op).seed))


def from_params(op: str, params: Mapping[str, Any], source: str) -> KernelChoice:
    """A template point; knobs added to the template since the point was recorded read as their seed value."""
    if op not in LAUNCHERS:
        raise KernelChoiceError(f"unknown op {op!r}; the model's ops are {', '.join(MODEL_OPS)}")
    from .. import get_spec

    try:
        point = get_spec(op).template.validate(dict(params))
    except ValueError as exc:
        raise KernelChoiceError(f"{source}: {exc}") from None
    return KernelChoice(op, source, point)


def from_file(op: str, path: Path, entry_name: str) -> KernelChoice:
    """The entry function of a kernel file (a judged candidate), imported as a module of its own."""
    path = Path(path)
    name = f"_evolve_kernel_{op}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise KernelChoiceError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        sys.modules[name] = module  # Triton's jit reads a kernel's globals through its module
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise KernelChoiceError(f"{path}: does not load: {type(exc).__name__}: {exc}") from None
    entry = getattr(module, entry_name, None)
    if not callable(entry):
        raise KernelChoiceError(f"{path}: defines no {entry_name}()")
    return KernelChoice(op, f"file {path}", None, entry)


def from_promoted(op: str, params: Mapping[str, Any] | None, path: Path, source: str) -> KernelChoice:
    """A promoted kernel: the template point it records, where the template still takes it (knobs added
    since read as their seed), else the entry of its file."""
    if isinstance(params, dict):
        try:
            return from_params(op, params, source)
        except KernelChoiceError:
            pass
    from .. import get_spec

    return from_file(op, path, get_spec(op).entry)


def device_slug(name: str) -> str:
    """A device name as a folder name: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    import re

    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def shipped_choices(root: Path, device_name: str) -> dict[str, KernelChoice]:
    """The kernels shipped under `root` (an exported package's kernels/<op>/<device slug>/) for this device:
    per op its template point (meta.json's params) or its file's entry; ops without one keep the seed."""
    import json

    out = {}
    for op in MODEL_OPS:
        folder = Path(root) / op / device_slug(device_name)
        if not (folder / "kernel.py").is_file():
            continue
        meta = json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").is_file() else {}
        params = (meta.get("lineage") or {}).get("params")
        out[op] = from_promoted(op, params, folder / "kernel.py", f"shipped {op}/{folder.name}")
    return out


_ACTIVE: dict[str, KernelChoice] = {op: seed(op) for op in MODEL_OPS}
# each active choice's backward knobs, worked out once: the custom ops read them on every backward
_BACKWARD: dict[str, dict[str, Any]] = {op: choice.backward_params() for op, choice in _ACTIVE.items()}


def install(choices: Mapping[str, KernelChoice] | None) -> None:
    """Use these kernels in this process from now on; ops left out keep their seed."""
    fresh = {op: seed(op) for op in MODEL_OPS}
    for op, choice in (choices or {}).items():
        if op not in fresh:
            raise KernelChoiceError(f"unknown op {op!r}; the model's ops are {', '.join(MODEL_OPS)}")
        fresh[op] = choice
    _ACTIVE.clear()
    _ACTIVE.update(fresh)
    _BACKWARD.clear()
    _BACKWARD.update({op: choice.backward_params() for op, choice in fresh.items()})


def active() -> dict[str, KernelChoice]:
    return dict(_ACTIVE)


def forward_of(op: str) -> Callable:
    return _ACTIVE[op].forward()


def backward_of(op: str) -> dict[str, Any]:
    return _BACKWARD[op]


def has_params(op: str) -> bool:
    return _ACTIVE[op].params is not None
