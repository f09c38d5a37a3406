"""Winning kernels promoted by runs, one slot per (op, GPU), with every displaced incumbent kept.

Layout under a memory root:
    promoted/<op>/<gpu slug>/kernel.py       the current winner's source
    promoted/<op>/<gpu slug>/meta.toml       its metrics, lineage, promotion time, sequence number and the
                                             sha256 of its kernel.py
    promoted/<op>/<gpu slug>/history/<seq>-<promoted_at>/{kernel.py, meta.toml}   earlier winners
    promoted/<op>/<gpu slug>/.lock           the slot's inter-process lock

Whether a candidate beats the incumbent (by a margin beyond noise) is the caller's decision; this store
only records the outcome. Promotions into one slot are serialised by the slot's lock and journalled (see
memory/_journal.py), so concurrent runs and writers killed at any moment leave a slot whose kernel.py and
meta.toml belong together and whose history holds every earlier winner once, in lock order.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomli_w

from memory._files import file_stem_for, require_safe_name, shipped_beneath
from memory._journal import LOCK_FILE, PENDING, apply_pending, clean_leftovers, commit
from memory._lock import file_lock
from memory.errors import MemoryStoreError

INTERPRETER_GPU = "interpreter"  # the gpu name used for results from Triton's CPU interpreter
_KERNEL_FILE = "kernel.py"
_META_FILE = "meta.toml"
_META_KEYS = frozenset({"op", "gpu", "promoted_at", "metrics", "lineage", "sha256", "seq"})


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


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
    sha256: str = ""  # of the source; "" for a meta.toml written before hashes were recorded
    seq: int = 0  # position in the slot's promotion order (lock order); 0 before it was recorded
    text: str = field(default="", repr=False, compare=False)  # the source as read and verified

    def source(self) -> str:
        """The source this record describes: the text read with its meta.toml, not whatever the slot's
        kernel.py holds by now (a later promotion may have replaced it)."""
        return self.text if self.text else self.path.read_text(encoding="utf-8")


class _Inconsistent(Exception):
    """A folder's kernel.py and meta.toml do not belong together (yet): mid-write, or damaged."""


def _parse_meta(meta_path: Path, text: str) -> dict[str, Any]:
    try:
        meta = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise MemoryStoreError(f"{meta_path}: not valid TOML: {err}") from None
    unknown = sorted(set(meta) - _META_KEYS)
    missing = sorted({"op", "gpu", "promoted_at"} - set(meta))
    if unknown or missing:
        raise MemoryStoreError(f"{meta_path}: unknown keys {unknown} / missing keys {missing}")
    seq = meta.get("seq", 0)
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise MemoryStoreError(f"{meta_path}: seq must be a whole number >= 0, got {seq!r}")
    if not isinstance(meta.get("sha256", ""), str):
        raise MemoryStoreError(f"{meta_path}: sha256 must be a hex string, got {meta['sha256']!r}")
    return meta


def _read_folder(folder: Path) -> PromotedKernel:
    """Read one kernel.py/meta.toml pair, raising _Inconsistent when they do not match."""
    meta_path = folder / _META_FILE
    kernel_path = folder / _KERNEL_FILE
    try:
        meta_text = meta_path.read_text(encoding="utf-8")
        source = kernel_path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise _Inconsistent(f"{err.filename} is missing") from None
    except UnicodeDecodeError:
        raise _Inconsistent("a file is not UTF-8 text") from None
    meta = _parse_meta(meta_path, meta_text)
    recorded = meta.get("sha256", "")
    if recorded and recorded != _sha256(source):
        raise _Inconsistent(f"{_KERNEL_FILE} does not match the sha256 in {_META_FILE}")
    return PromotedKernel(
        op=meta["op"],
        gpu=meta["gpu"],
        path=kernel_path,
        metrics=meta.get("metrics", {}),
        lineage=meta.get("lineage", {}),
        promoted_at=meta["promoted_at"],
        sha256=recorded,
        seq=meta.get("seq", 0),
        text=source,
    )


def _meta_identity(meta_path: Path) -> tuple[int, int] | None:
    try:
        stat = meta_path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _read_unlocked(folder: Path) -> PromotedKernel | None:
    """The slot's winner read without the lock; _Inconsistent if a promotion may have been under way.

    The hash catches a kernel.py newer than its meta.toml; the journal check and an unchanged meta.toml
    around the reads also cover a meta.toml written before hashes were recorded.
    """
    before = _meta_identity(folder / _META_FILE)
    if before is None:
        if (folder / PENDING).exists():
            raise _Inconsistent("a promotion is pending")
        return None  # meta.toml is the commit marker: no (complete) winner
    kernel = _read_folder(folder)
    if (folder / PENDING).exists() or _meta_identity(folder / _META_FILE) != before:
        raise _Inconsistent("a promotion was under way while reading")
    return kernel


def _damaged(folder: Path, why: str) -> MemoryStoreError:
    return MemoryStoreError(f"{folder}: damaged promoted kernel: {why}; restore it from history/ or remove it")


class KernelStore:
    """The promoted kernels under one memory root."""

    def __init__(self, root: Path, defaults: Path | None = None) -> None:
        """`defaults`: a read-only memory root beneath this one (the kernels shipped with the project; by
        default what the root's layers.toml names): a slot this root has not filled reads from there;
        promotions are written here only."""
        self._root = Path(root)
        defaults = shipped_beneath(self._root) if defaults is None else defaults
        self._defaults = KernelStore(defaults) if defaults is not None and Path(defaults).resolve() != \
            self._root.resolve() else None

    @property
    def root(self) -> Path:
        return self._root

    def slot(self, op: str, gpu: str) -> Path:
        """The folder holding the winner for `op` on `gpu` (it may not exist yet)."""
        return self._root / "promoted" / require_safe_name(op, "op") / gpu_slug(gpu)

    def best(self, op: str, gpu: str) -> PromotedKernel | None:
        own = self._current(self.slot(op, gpu))
        if own is None and self._defaults is not None:
            return self._defaults.best(op, gpu)
        return own

    def _current(self, folder: Path) -> PromotedKernel | None:
        """The slot's winner, read without the lock when it reads cleanly, else again under the lock.

        Outside the lock a promotion may be half applied (a journal is pending, or kernel.py is new and
        meta.toml old); under the lock, after rolling any journal forward, a mismatch is damage.
        """
        try:
            return _read_unlocked(folder)
        except _Inconsistent as why:
            if folder.is_dir() and not os.access(folder, os.W_OK):
                raise _damaged(folder, str(why)) from None  # read-only: nobody can be writing it
        if not folder.is_dir():
            return None
        with file_lock(folder / LOCK_FILE):
            self._recover(folder)
            return self._current_locked(folder)

    @staticmethod
    def _current_locked(folder: Path) -> PromotedKernel | None:
        # meta.toml is the commit marker: after recovery, a kernel.py without one is an uncommitted leftover
        if not (folder / _META_FILE).exists():
            return None
        try:
            return _read_folder(folder)
        except _Inconsistent as why:
            raise _damaged(folder, str(why)) from None

    def _recover(self, folder: Path) -> None:
        clean_leftovers(folder)
        if (folder / PENDING).exists():
            apply_pending(folder)

    def promote(
        self, op: str, gpu: str, source: str, metrics: dict[str, Any], lineage: dict[str, Any]
    ) -> PromotedKernel:
        """Make `source` the winner for (op, gpu), moving any incumbent into history/ first."""
        folder = self.slot(op, gpu)
        if not isinstance(source, str) or not source.strip():
            raise MemoryStoreError(f"{folder}: promoted source for {op!r} must be non-empty text")
        if not isinstance(metrics, dict) or not isinstance(lineage, dict):
            raise MemoryStoreError(f"{folder}: metrics and lineage must be dicts")
        metrics, lineage = _without_none(metrics), _without_none(lineage)
        # Serialise before touching any file so that a bad value leaves the incumbent where it was.
        try:
            tomli_w.dumps({"metrics": metrics, "lineage": lineage})
        except TypeError as err:
            raise MemoryStoreError(f"{folder / _META_FILE}: value not representable in TOML: {err}") from None
        with file_lock(folder / LOCK_FILE):
            self._recover(folder)
            incumbent = self._current_locked(folder)
            # the incumbent is always the slot's latest; only a slot emptied by hand needs its history read
            last = incumbent.seq if incumbent else max((k.seq for k in self._history(folder)), default=0)
            seq = last + 1
            # Taken under the lock, so promotion times never run backwards against the lock order.
            promoted_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            meta = {"op": op, "gpu": gpu, "promoted_at": promoted_at, "seq": seq, "sha256": _sha256(source),
                    "metrics": metrics, "lineage": lineage}
            retired = None
            if incumbent is not None:
                retired = (self._history_name(folder, incumbent), incumbent.text,
                           (folder / _META_FILE).read_text(encoding="utf-8"))
            commit(folder, source, tomli_w.dumps(meta), retired)
        return PromotedKernel(op=op, gpu=gpu, path=folder / _KERNEL_FILE, metrics=metrics, lineage=lineage,
                              promoted_at=promoted_at, sha256=meta["sha256"], seq=seq, text=source)

    @staticmethod
    def _history_name(folder: Path, incumbent: PromotedKernel) -> str:
        stamp = file_stem_for(incumbent.promoted_at.replace(":", "-").replace("+", "-"))
        base = f"{incumbent.seq:06d}-{stamp}"
        name, counter = base, 1
        while (folder / "history" / name).exists():  # legacy entries (seq 0) promoted within one second
            counter += 1
            name = f"{base}-{counter}"
        return name

    def history(self, op: str, gpu: str) -> list[PromotedKernel]:
        """Earlier winners for (op, gpu), oldest first (in lock order)."""
        folder = self.slot(op, gpu)
        if not (folder / PENDING).exists():
            try:
                entries = self._history(folder, verified_only=True)
            except _Inconsistent:
                entries = None
            # a journal applied meanwhile may have listed the incumbent here while it is still the winner
            if entries is not None and not (folder / PENDING).exists():
                return entries
        if not folder.is_dir():
            return []
        with file_lock(folder / LOCK_FILE):
            self._recover(folder)
            return self._history(folder)

    def _history(self, folder: Path, verified_only: bool = False) -> list[PromotedKernel]:
        """History entries are written whole (a folder renamed into place) and never changed, so one that
        does not read cleanly is damage; `verified_only` lets a lock-free reader retry under the lock."""
        history_folder = folder / "history"
        if not history_folder.is_dir():
            return []
        entries = []
        for entry in history_folder.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if not any((entry / name).exists() for name in (_META_FILE, _KERNEL_FILE)):
                continue  # an empty folder left by an older version of this store, killed mid-retirement
            try:
                entries.append(_read_folder(entry))
            except _Inconsistent as why:
                if verified_only:
                    raise
                raise _damaged(entry, str(why)) from None
        return sorted(entries, key=lambda kernel: (kernel.seq, kernel.promoted_at, kernel.path.parent.name))

    def nearest(self, op: str, gpu: str, arch: str) -> list[PromotedKernel]:
        """The op's winners on other devices, nearest first: the same architecture (an H100's sm_90 kernel
        for an H200), then the same vendor, newest promotion first within each; never the CPU
        interpreter's, whose kernels were never timed. A device's arch is what its promotion recorded."""
        vendor = gpu.split()[0].lower() if gpu.split() else ""
        found = []
        for kernel in self.all():
            if kernel.op != op or kernel.path.parent.name in (gpu_slug(gpu), gpu_slug(INTERPRETER_GPU)):
                continue
            same_arch = bool(arch) and kernel.lineage.get("arch") == arch
            same_vendor = bool(vendor) and kernel.gpu.lower().startswith(vendor)
            found.append((0 if same_arch else 1 if same_vendor else 2, kernel.promoted_at, kernel))
        found.sort(key=lambda item: item[1], reverse=True)  # newest first, then (stable) nearest first
        found.sort(key=lambda item: item[0])
        return [kernel for _, _, kernel in found]

    def all(self) -> list[PromotedKernel]:
        """The current winner of every (op, gpu) slot, sorted by op then gpu folder."""
        promoted_root = self._root / "promoted"
        own = []
        if promoted_root.is_dir():
            kernels = (self._current(folder) for folder in sorted(promoted_root.glob("*/*")) if folder.is_dir())
            own = [kernel for kernel in kernels if kernel is not None]
        if self._defaults is None:
            return own
        filled = {(k.op, k.path.parent.name) for k in own}
        shipped = [k for k in self._defaults.all() if (k.op, k.path.parent.name) not in filled]
        return sorted(own + shipped, key=lambda k: (k.op, k.path.parent.name))

    def for_gpu(self, gpu: str) -> dict[str, PromotedKernel]:
        """The current winners on one device, by op (devices match by slug, so spelling variants agree)."""
        slug = gpu_slug(gpu)
        return {
            kernel.op: kernel
            for kernel in self.all()
            if kernel.path.parent.name == slug
        }
