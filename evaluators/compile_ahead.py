"""Compiling a candidate's kernels ahead of its checks, in sandboxes of their own.

On a GPU a candidate's checks are mostly Triton compiling it: every shape whose block sizes differ and every
dtype is a new kernel, a second or two of CPU each, one after another in the sandbox that checks it. Here a few
more sandboxes load the same candidate, call it on the same shapes, dtypes and input variants with Triton's
warm-up path (kernels compiled, never run), and the judge copies what they compiled into the checking
sandbox's Triton cache, where its own compiler finds the kernels made. The helpers take the checks' order
from its end, the checking sandbox from its start, so they meet in the middle: a case the checking sandbox
has reached is never started by a helper, and one a helper is compiling when the checking sandbox reaches it
is waited for, so that no kernel is compiled twice on a host whose cores the other workers share.

Nothing a helper leaves is trusted beyond what it can change: the judge copies only cache entries named after
the candidate's own @triton.jit functions (never torch.compile's `triton_*` kernels nor the judge's copy
kernel, which the checking sandbox compiles for itself), only plain files under names Triton writes, within a
byte budget, and never over an entry the checking sandbox has. A kernel copied this way runs as the candidate's
own kernel and is judged by its outputs like one the checking sandbox compiled itself. Correctness never
depends on it: a helper that fails, hangs or is killed only leaves the checking sandbox to compile.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, ContextManager

from .sandboxes import Sandbox, SandboxLost
from .verdict import CandidateFailure

# kernels the checking sandbox compiles for itself and a candidate's helper must never supply
RESERVED_KERNELS = ("triton_", "_copy_words")
_ENTRY_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")   # a cache entry: one folder per compiled kernel
_FILE_NAME = re.compile(r"[A-Za-z0-9_]{1,120}\.[a-z0-9_]{1,16}")
HARVEST_BYTES = 512 << 20  # what one candidate's helpers may copy in all


def kernel_names(source: str) -> frozenset[str]:
    """The names of the candidate's top-level @triton.jit functions (plain, called or under autotune or
    heuristics), less those the judge reserves."""
    def jit(d: ast.expr) -> bool:
        d = d.func if isinstance(d, ast.Call) else d
        return (isinstance(d, ast.Attribute) and d.attr == "jit") or (isinstance(d, ast.Name) and d.id == "jit")

    names = {node.name for node in ast.parse(source).body
             if isinstance(node, ast.FunctionDef) and any(jit(d) for d in node.decorator_list)}
    return frozenset(n for n in names if not n.startswith(RESERVED_KERNELS))


def _plain_file(path: Path) -> bool:
    return not path.is_symlink() and path.is_file()


def harvest(source: Path, destination: Path, names: frozenset[str], seen: set[str], budget: list[int]) -> int:
    """Copy the entries of a helper's Triton cache (`source`) for the kernels in `names` into the checking
    sandbox's (`destination`); returns how many were copied. `seen` holds the entries already looked at and
    `budget` the bytes left to copy. Each entry's files go first and its group file last, with its paths
    rewritten to the destination, each written whole by a rename, so the checking sandbox finds a complete
    entry or none."""
    copied = 0
    try:
        entries = sorted(os.listdir(source)) if source.is_dir() and not source.is_symlink() else []
    except OSError:
        return 0
    for entry in entries:
        here = source / entry
        if entry in seen or not _ENTRY_NAME.fullmatch(entry) or here.is_symlink() or not here.is_dir():
            continue
        groups = [g for g in os.listdir(here) if g.startswith("__grp__") and g.endswith(".json")]
        if not groups:
            continue  # not finished yet: looked at again after the helper's next case
        seen.add(entry)
        if len(groups) != 1 or (destination / entry).exists():
            continue
        files = _entry_files(here, groups[0], names)
        if files is None:
            continue
        size = sum((here / f).stat().st_size for f in files)
        if size > budget[0]:
            continue
        budget[0] -= size
        if _install(here, destination / entry, groups[0], files):
            copied += 1
    return copied


def _entry_files(folder: Path, group: str, names: frozenset[str]) -> list[str] | None:
    """The files of a finished cache entry of one of `names`, as its group file lists them; None where anything
    about it is not what Triton writes for a kernel of the candidate's."""
    kernel = group[len("__grp__"):-len(".json")]
    if kernel not in names or not _plain_file(folder / group) or (folder / group).stat().st_size > 1 << 20:
        return None
    try:
        children = json.loads((folder / group).read_text()).get("child_paths")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(children, dict) or f"{kernel}.json" not in children:
        return None
    files = []
    for name, path in children.items():
        if not (isinstance(name, str) and isinstance(path, str) and _FILE_NAME.fullmatch(name)
                and name.startswith(f"{kernel}.") and os.path.basename(path) == name
                and _plain_file(folder / name)):
            return None
        files.append(name)
    return files


def _install(source: Path, destination: Path, group: str, files: list[str]) -> bool:
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
        for name in files:
            (partial / name).write_bytes((source / name).read_bytes())
        os.replace(partial, destination)  # the entry's files, whole, before the group file that names them
        listing = destination / f".{group}.partial"
        listing.write_text(json.dumps({"child_paths": {name: str(destination / name) for name in files}}))
        os.replace(listing, destination / group)
        return True
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        return False


class CompileAhead:
    """`count` helper sandboxes compiling a candidate's kernels for `cases` (the checks' order, as
    (shape, dtype, variant, backward)) from its end, each case in the GPU's shared turn, copying what they
    compiled into `destination` (the checking sandbox's Triton cache) as each case ends. The checking sandbox
    says where it is with `reached(index)`. `start()` returns at once; `stop()` kills whatever is still
    compiling."""

    def __init__(self, spawn: Callable[[], Sandbox], cases: list[tuple[str, str, str | None, bool]], count: int,
                 destination: Path, names: frozenset[str], turn: Callable[[], ContextManager], timeout: float,
                 seed: int):
        self.spawn = spawn
        self.cases = list(cases)
        self.count = max(0, min(count, len(cases)))
        self.destination = destination
        self.names = names
        self.turn = turn
        self.timeout = timeout
        self.seed = seed
        self.compiled = 0          # cases the helpers finished
        self.kernels = 0           # cache entries copied into the checking sandbox
        self.waited = 0.0          # seconds the checking sandbox waited for a helper's case in flight
        self._seen: set[str] = set()
        self._budget = [HARVEST_BYTES]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._live: list[Sandbox] = []
        self._threads: list[threading.Thread] = []
        self._front = 0            # the cases before this one the checking sandbox has reached
        self._back = len(cases)    # the cases from this one on a helper has taken
        self._in_flight: dict[int, threading.Event] = {}

    def start(self) -> "CompileAhead":
        if not self.names:
            return self  # no kernel of the candidate's could be copied
        for k in range(self.count):
            thread = threading.Thread(target=self._helper, daemon=True, name=f"compile-ahead-{k}")
            thread.start()
            self._threads.append(thread)
        return self

    def reached(self, index: int) -> None:
        """The checking sandbox is about to run case `index`: no helper starts it or a case before it, and a
        helper compiling it now is waited for (at most the compile timeout, as long as the helper may take),
        so its kernels are copied rather than compiled a second time. Never called inside the GPU's turn,
        which the helper needs to finish."""
        with self._lock:
            self._front = max(self._front, index + 1)
            in_flight = [self._in_flight[index]] if index in self._in_flight else []
        self._wait(in_flight)

    def reached_all(self) -> None:
        """The checking sandbox is past every case: helpers start none, and those in flight are waited for."""
        with self._lock:
            self._front = len(self.cases)
            in_flight = list(self._in_flight.values())
        self._wait(in_flight)

    def _wait(self, in_flight: list[threading.Event]) -> None:
        if not in_flight:
            return
        started = time.monotonic()
        for event in in_flight:
            event.wait(self.timeout)
        self.waited += time.monotonic() - started

    def _claim(self) -> int | None:
        with self._lock:
            if self._stopping.is_set() or self._back <= self._front:
                return None
            self._back -= 1
            self._in_flight[self._back] = threading.Event()
            return self._back

    def _finish(self, index: int) -> None:
        with self._lock:
            self._in_flight.pop(index).set()

    def _helper(self) -> None:
        sandbox = None
        try:
            sandbox = self.spawn()
            with self._lock:
                if self._stopping.is_set():
                    return
                self._live.append(sandbox)
            own = Path(sandbox.folder) / "triton"
            while (index := self._claim()) is not None:
                try:
                    shape, dtype, variant, backward = self.cases[index]
                    with self.turn():
                        reply = sandbox.request({"kind": "compile", "phase": "compile", "shape": shape,
                                                 "dtype": dtype, "variant": variant, "backward": backward,
                                                 "seed": self.seed + index}, self.timeout)
                    with self._lock:
                        if self._stopping.is_set():
                            return
                        self.compiled += reply.get("kind") == "compiled"
                        self.kernels += harvest(own, self.destination, self.names, self._seen, self._budget)
                finally:
                    self._finish(index)  # copied or not, the checking sandbox waits no longer
        except (SandboxLost, CandidateFailure, OSError):
            return  # a helper lost is only compilation the checking sandbox does itself
        finally:
            if sandbox is not None:
                sandbox.close()

    def stop(self) -> dict:
        """Kill the helpers still compiling and wait for their threads; what they did, for the verdict."""
        with self._lock:
            self._stopping.set()
            live = list(self._live)
        for sandbox in live:
            sandbox.kill()
        for thread in self._threads:
            thread.join(30)
        return {"sandboxes": len(self._threads), "cases": self.compiled, "kernels": self.kernels,
                "waited_s": round(self.waited, 3)}
