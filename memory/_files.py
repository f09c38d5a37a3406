"""Small file helpers shared by the stores: atomic writes, locked line appends and reads, safe names."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from memory._lock import locked_handle
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


def fsync_dir(folder: Path) -> None:
    """Make renames into `folder` durable; a no-op where directories cannot be opened for it."""
    try:
        handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one.

    The temporary file lives in the same folder so that os.replace is a rename on one filesystem; its name
    starts with '.' and ends in '.tmp', so no glob of the stores picks up one a crash left behind.
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


def _write_all(handle: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(handle, view)
        view = view[written:]


def append_line(path: Path, line: str) -> None:
    """Append one line to a JSON-lines file under an exclusive lock on the file itself.

    The lock makes concurrent appends land whole and in lock order. If a writer was killed mid-line, the
    file does not end with a newline; starting on a fresh line keeps the new record intact (readers skip
    the torn one) instead of gluing the two into one bad line.
    """
    if "\n" in line:
        raise MemoryStoreError(f"{path}: a JSON-lines record must not contain a newline")
    data = (line + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        with locked_handle(handle):
            size = os.fstat(handle).st_size
            if size > 0 and os.pread(handle, 1, size - 1) != b"\n":
                data = b"\n" + data
            _write_all(handle, data)
            os.fsync(handle)
    finally:
        os.close(handle)


def read_lines(path: Path) -> list[str]:
    """Every line of a JSON-lines file, read under a shared lock so no append is seen half done.

    Lines are decoded one by one with replacement: a line torn mid-character by a killed writer then fails
    to parse on its own instead of making the whole file unreadable.
    """
    try:
        handle = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        with locked_handle(handle, shared=True), os.fdopen(os.dup(handle), "rb") as log:
            raw = log.read()
    finally:
        os.close(handle)
    lines = raw.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # what follows the last newline
    return [line.decode("utf-8", errors="replace") for line in lines]


# A memory root may sit on top of the one shipped with the project: its layers.toml says `beneath =
# "shipped"`, and every store opened on it reads the shipped rulebook and kernels as read-only defaults.
LAYERS_FILE = "layers.toml"
SHIPPED_ROOT = Path(__file__).resolve().parent


def shipped_beneath(root: Path) -> Path | None:
    """The read-only root beneath `root` (the shipped memory), or None when it has none."""
    path = Path(root) / LAYERS_FILE
    if not path.is_file():
        return None
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise MemoryStoreError(f"{path}: unreadable ({exc})") from None
    if data.get("beneath") != "shipped" or set(data) - {"beneath"}:
        raise MemoryStoreError(f'{path}: must hold exactly beneath = "shipped"')
    return None if Path(root).resolve() == SHIPPED_ROOT else SHIPPED_ROOT


def mark_shipped_beneath(root: Path) -> None:
    """Make `root` a memory that reads the shipped one beneath it (a user's workspace); idempotent."""
    root = Path(root)
    if root.resolve() == SHIPPED_ROOT or (root / LAYERS_FILE).is_file():
        return
    atomic_write_text(root / LAYERS_FILE, '# this memory reads the rulebook and kernels shipped with evolve beneath it\n'
                                          'beneath = "shipped"\n')
