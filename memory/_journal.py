"""The write-ahead journal of one promoted-kernel slot: how a promotion survives being killed at any moment.

A slot's kernel.py and meta.toml cannot be replaced together by one rename, and retiring the incumbent
into history/ is a third change. So a promotion (under the slot's lock) first stages everything it will
write in a fresh `.staging-<id>/` folder, then renames that folder to `.pending/`: the commit point. Then it
applies the journal (renames the retired entry into history/, rewrites kernel.py and meta.toml) and
retires it by renaming `.pending/` to `.done-<id>/` before deleting it. Each step is idempotent, so whoever
next takes the lock and finds `.pending/` rolls it forward; `.staging-*` and `.done-*` left by a killed
writer are incomplete or already applied, and are removed.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from memory._files import atomic_write_text, fsync_dir
from memory.errors import MemoryStoreError

LOCK_FILE = ".lock"
PENDING = ".pending"
_STAGING_PREFIX = ".staging-"
_DONE_PREFIX = ".done-"
_KERNEL_FILE = "kernel.py"
_META_FILE = "meta.toml"


def clean_leftovers(folder: Path) -> None:
    """Remove what killed writers left besides a pending journal (call under the slot's lock)."""
    if not folder.is_dir():
        return
    for leftover in [*folder.glob(f"{_STAGING_PREFIX}*"), *folder.glob(f"{_DONE_PREFIX}*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    for temp in [*folder.glob(f".{_KERNEL_FILE}.*.tmp"), *folder.glob(f".{_META_FILE}.*.tmp")]:
        temp.unlink(missing_ok=True)


def commit(folder: Path, source: str, meta_text: str, retired: tuple[str, str, str] | None) -> None:
    """Journal and apply one promotion; `retired` is (history folder name, kernel text, meta text) of the
    incumbent, or None for the slot's first winner. The caller holds the slot's lock."""
    staging = folder / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    atomic_write_text(staging / _KERNEL_FILE, source)
    atomic_write_text(staging / _META_FILE, meta_text)
    if retired is not None:
        name, kernel_text, old_meta_text = retired
        entry = staging / "history" / name
        atomic_write_text(entry / _KERNEL_FILE, kernel_text)
        atomic_write_text(entry / _META_FILE, old_meta_text)
        fsync_dir(entry.parent)
    fsync_dir(staging)
    staging.rename(folder / PENDING)
    fsync_dir(folder)
    apply_pending(folder)


def apply_pending(folder: Path) -> None:
    """Roll the slot's pending journal forward and retire it (call under the slot's lock)."""
    pending = folder / PENDING
    retired = pending / "history"
    if retired.is_dir():
        history = folder / "history"
        history.mkdir(exist_ok=True)
        for entry in sorted(retired.iterdir()):
            target = history / entry.name
            if target.exists():
                # the name was chosen free under the lock and only journals add entries: someone else wrote it
                raise MemoryStoreError(f"{target}: history entry already exists; cannot apply {pending}")
            entry.rename(target)
        fsync_dir(history)
    for name in (_KERNEL_FILE, _META_FILE):  # kernel first: meta.toml is what readers take as the commit
        atomic_write_text(folder / name, (pending / name).read_text(encoding="utf-8"))
    done = folder / f"{_DONE_PREFIX}{uuid.uuid4().hex}"
    pending.rename(done)
    fsync_dir(folder)
    shutil.rmtree(done, ignore_errors=True)
