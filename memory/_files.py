"""Small file helpers shared by the stores: atomic writes, line appends, safe names."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from memory.errors import MemoryStoreError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def require_safe_name(name: str, what: str) -> str:
    """Return `name` if it can be used as one path component, else raise.

    Op names become folder and file names; refusing separators and '..' keeps every write inside the root.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in {".", ".."}:
        raise MemoryStoreError(f"{what} {name!r} must be a non-empty name of letters, digits, '.', '_' or '-'")
    return name


def file_stem_for(identifier: str) -> str:
    """Map an arbitrary id to a file stem by replacing characters outside [A-Za-z0-9._-] with '_'."""
    return _UNSAFE_CHARS.sub("_", identifier)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one.

    The temporary file lives in the same folder so that os.replace is a rename on one filesystem.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp_file:
            temp_file.write(text)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def append_line(path: Path, line: str) -> None:
    """Append one line to a JSON-lines file, creating its folders.

    If an earlier writer crashed mid-line, the file does not end with a newline; starting on a fresh line
    keeps the new record intact (readers skip the torn one) instead of gluing the two into one bad line.
    """
    if "\n" in line:
        raise MemoryStoreError(f"{path}: a JSON-lines record must not contain a newline")
    path.parent.mkdir(parents=True, exist_ok=True)
    needs_separator = False
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as existing:
            existing.seek(-1, os.SEEK_END)
            needs_separator = existing.read(1) != b"\n"
    with path.open("a", encoding="utf-8") as out:
        out.write(("\n" if needs_separator else "") + line + "\n")
        out.flush()
        os.fsync(out.fileno())
