"""Winning kernels promoted by runs, one slot per (op, GPU), with every displaced incumbent kept.

Layout under a memory root:
    promoted/<op>/<gpu slug>/kernel.py       the current winner's source
    promoted/<op>/<gpu slug>/meta.toml       its metrics, lineage and promotion time
    promoted/<op>/<gpu slug>/history/<promoted_at>/{kernel.py, meta.toml}   earlier winners

Whether a candidate beats the incumbent (by a margin beyond noise) is the caller's decision; this store
only records the outcome.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomli_w

from memory._files import atomic_write_text, file_stem_for, require_safe_name
from memory.errors import MemoryStoreError

INTERPRETER_GPU = "interpreter"  # the gpu name used for results from Triton's CPU interpreter
_KERNEL_FILE = "kernel.py"
_META_FILE = "meta.toml"
_META_KEYS = frozenset({"op", "gpu", "promoted_at", "metrics", "lineage"})


def gpu_slug(gpu: str) -> str:
    """Folder name for a device: lowercase, runs of non-alphanumerics become one '-'.

    "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"; "interpreter" stays "interpreter".
    """
    if not isinstance(gpu, str):
        raise MemoryStoreError(f"gpu name must be a string, got {gpu!r}")
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    if not slug:
        raise MemoryStoreError(f"gpu name {gpu!r} has no letters or digits to name a folder with")
    return slug


def _without_none(value: Any) -> Any:
    """Drop None from tables and arrays, recursively, because TOML has no null.

    A metric that was not measured (e.g. timing on the CPU interpreter) is simply absent from meta.toml,
    which reads back the same as "unknown".
    """
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items() if item is not None}
    if isinstance(value, (list, tuple)):
        return [_without_none(item) for item in value if item is not None]
    return value


@dataclass(frozen=True)
class PromotedKernel:
    """A promoted kernel: where its source is, how it measured, and where it came from."""

    op: str
    gpu: str  # the device name as reported, e.g. "NVIDIA H100 80GB HBM3", or "interpreter"
    path: Path  # the kernel source file
    metrics: dict[str, Any]
    lineage: dict[str, Any]  # run id, candidate id, parent ids, params
    promoted_at: str  # ISO timestamp (UTC)

    def source(self) -> str:
        return self.path.read_text(encoding="utf-8")


def _read_promoted(folder: Path) -> PromotedKernel:
    meta_path = folder / _META_FILE
    kernel_path = folder / _KERNEL_FILE
    try:
        meta = tomllib.loads(meta_path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise MemoryStoreError(f"{meta_path}: not valid TOML: {err}") from None
    unknown = sorted(set(meta) - _META_KEYS)
    missing = sorted({"op", "gpu", "promoted_at"} - set(meta))
    if unknown or missing:
        raise MemoryStoreError(f"{meta_path}: unknown keys {unknown} / missing keys {missing}")
    if not kernel_path.exists():
        # kernel.py is written before meta.toml and moved after it, so this is damage, not a crash.
        raise MemoryStoreError(f"{meta_path}: its {_KERNEL_FILE} is missing")
    return PromotedKernel(
        op=meta["op"],
        gpu=meta["gpu"],
        path=kernel_path,
        metrics=meta.get("metrics", {}),
        lineage=meta.get("lineage", {}),
        promoted_at=meta["promoted_at"],
    )


class KernelStore:
    """The promoted kernels under one memory root."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    @property
    def root(self) -> Path:
        return self._root

    def slot(self, op: str, gpu: str) -> Path:
        """The folder holding the winner for `op` on `gpu` (it may not exist yet)."""
        return self._root / "promoted" / require_safe_name(op, "op") / gpu_slug(gpu)

    def best(self, op: str, gpu: str) -> PromotedKernel | None:
        folder = self.slot(op, gpu)
        # meta.toml is the commit marker: a slot without it has no (complete) winner.
        if not (folder / _META_FILE).exists():
            return None
        return _read_promoted(folder)

    def promote(
        self, op: str, gpu: str, source: str, metrics: dict[str, Any], lineage: dict[str, Any]
    ) -> PromotedKernel:
        """Make `source` the winner for (op, gpu), moving any incumbent into history/ first."""
        folder = self.slot(op, gpu)
        if not isinstance(source, str) or not source.strip():
            raise MemoryStoreError(f"{folder}: promoted source for {op!r} must be non-empty text")
        if not isinstance(metrics, dict) or not isinstance(lineage, dict):
            raise MemoryStoreError(f"{folder}: metrics and lineage must be dicts")
        promoted_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        meta = {
            "op": op,
            "gpu": gpu,
            "promoted_at": promoted_at,
            "metrics": _without_none(metrics),
            "lineage": _without_none(lineage),
        }
        # Serialise before touching any file so that a bad value leaves the incumbent where it was.
        try:
            meta_text = tomli_w.dumps(meta)
        except TypeError as err:
            raise MemoryStoreError(f"{folder / _META_FILE}: value not representable in TOML: {err}") from None
        if (folder / _META_FILE).exists():
            self._retire_incumbent(folder)
        # Kernel first, meta last: until meta.toml lands, readers see an empty slot, never a new kernel
        # described by old metadata.
        atomic_write_text(folder / _KERNEL_FILE, source)
        atomic_write_text(folder / _META_FILE, meta_text)
        return PromotedKernel(
            op=op,
            gpu=gpu,
            path=folder / _KERNEL_FILE,
            metrics=meta["metrics"],
            lineage=meta["lineage"],
            promoted_at=promoted_at,
        )

    def _retire_incumbent(self, folder: Path) -> None:
        incumbent = _read_promoted(folder)
        base = folder / "history" / file_stem_for(incumbent.promoted_at.replace(":", "-").replace("+", "-"))
        target, counter = base, 1
        while target.exists():  # two promotions within one second
            counter += 1
            target = base.with_name(f"{base.name}-{counter}")
        target.mkdir(parents=True)
        # Meta first, so that the slot reads as empty (not as a half-moved winner) if we stop in between.
        os.replace(folder / _META_FILE, target / _META_FILE)
        os.replace(folder / _KERNEL_FILE, target / _KERNEL_FILE)

    def history(self, op: str, gpu: str) -> list[PromotedKernel]:
        """Earlier winners for (op, gpu), oldest first."""
        history_folder = self.slot(op, gpu) / "history"
        if not history_folder.is_dir():
            return []
        entries = [
            _read_promoted(folder)
            for folder in history_folder.iterdir()
            if (folder / _META_FILE).exists()
        ]
        return sorted(entries, key=lambda kernel: (kernel.promoted_at, kernel.path.parent.name))

    def all(self) -> list[PromotedKernel]:
        """The current winner of every (op, gpu) slot, sorted by op then gpu folder."""
        promoted_root = self._root / "promoted"
        if not promoted_root.is_dir():
            return []
        return [
            _read_promoted(meta_path.parent)
            for meta_path in sorted(promoted_root.glob(f"*/*/{_META_FILE}"))
        ]

    def for_gpu(self, gpu: str) -> dict[str, PromotedKernel]:
        """The current winners on one device, by op (devices match by slug, so spelling variants agree)."""
        slug = gpu_slug(gpu)
        return {
            kernel.op: kernel
            for kernel in self.all()
            if kernel.path.parent.name == slug
        }
