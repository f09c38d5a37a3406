"""Compiling a candidate's kernels ahead of its checks, in sandboxes of their own.

On a GPU a candidate's checks are mostly Triton compiling it: every shape whose block sizes differ and every
dtype is a new kernel, a second or two of CPU each, one after another in the sandbox that checks it. Here a few
more sandboxes load the same candidate, call it on the same shapes, dtypes and input variants with Triton's
warm-up path (kernels compiled, never run), and the judge copies what they compiled into the checking
sandbox's Triton cache, where its own compiler finds the kernels made. The helpers take the checks' order
from its end, the checking sandbox from its start, so they meet in the middle: a case the checking sandbox
has reached is never started by a helper, and one a helper is compiling when the checking sandbox reaches it
is waited for, so that no kernel is compiled twice on a host whose cores the other workers share.

A helper runs the candidate only inside the GPU's preemptible turn: a worker about to time a candidate
does not wait for a helper's case (attention's float32 backward compiles for up to a minute) but kills the
helper, after copying what it finished; the case goes back and is compiled after the timed turn by a new
sandbox seeded with the kernels already made.

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
    (shape, dtype, variant, backward)) from its end, copying what they compiled into `destination` (the
    checking sandbox's Triton cache) as each case ends. `spawn()` starts a helper's sandbox and `load(sandbox)`
    loads the candidate into it; the candidate's code runs only inside `turn(preempt)`, the GPU's turn for
    work that can be thrown away: a timed turn calls `preempt`, which copies what the helper finished and
    kills its sandbox, and the case goes back to be compiled again after it by a new sandbox that starts from
    the kernels already made. The checking sandbox says where it is with `reached(index)`. `start()` returns
    at once; `stop()` kills whatever is still compiling."""

    def __init__(self, spawn: Callable[[], Sandbox], cases: list[tuple[str, str, str | None, bool]], count: int,
                 destination: Path, names: frozenset[str],
                 turn: Callable[[Callable[[], None]], ContextManager], timeout: float, seed: int,
                 load: Callable[[Sandbox], None] | None = None):
        self.spawn = spawn
        self.load = load
        self.cases = list(cases)
        self.count = max(0, min(count, len(cases)))
        self.destination = destination
        self.names = names
        self.turn = turn
        self.timeout = timeout
        self.seed = seed
        self.compiled = 0          # cases the helpers finished
        self.kernels = 0           # cache entries copied into the checking sandbox
        self.preempted = 0         # cases a timed turn took the card from
        self.waited = 0.0          # seconds the checking sandbox waited for a helper's case in flight
        self._seen: set[str] = set()
        self._budget = [HARVEST_BYTES]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._live: list[Sandbox] = []
        self._threads: list[threading.Thread] = []
        self._front = 0            # the cases before this one the checking sandbox has reached
        self._back = len(cases)    # the cases from this one on a helper has taken
        self._returned: list[int] = []  # cases given back by a preempted helper, to be taken first
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

    def _left(self) -> bool:
        """Whether a case is left for the helpers (under the lock): given back or not yet taken, and not reached
        by the checking sandbox."""
        self._returned = [i for i in self._returned if i >= self._front]
        return not self._stopping.is_set() and bool(self._returned or self._back > self._front)

    def _more(self) -> bool:
        with self._lock:
            return self._left()

    def _claim(self) -> int | None:
        """The next case for a helper that holds the GPU's turn: one given back first, then the next from
        the end; None when the checking sandbox has reached everything left."""
        with self._lock:
            if not self._left():
                return None
            if self._returned:
                index = self._returned.pop()
            else:
                self._back -= 1
                index = self._back
            self._in_flight[index] = threading.Event()
            return index

    def _finish(self, index: int, again: bool = False) -> None:
        with self._lock:
            self._in_flight.pop(index).set()
            if again and index >= self._front:
                self._returned.append(index)

    def _copy(self, sandbox: Sandbox) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self.kernels += harvest(Path(sandbox.folder) / "triton", self.destination, self.names, self._seen,
                                        self._budget)

    def _helper(self) -> None:
        helper = _Helper(self)
        try:
            while self._more():
                if helper.preempted.is_set():
                    helper.end()  # killed by a timed turn just after its case ended
                with self.turn(helper.preempt):
                    # started inside the turn, so that no new process takes the card while a timed turn has it
                    if helper.sandbox is None and not helper.start():
                        return
                    if helper.preempted.is_set():
                        continue  # the card was taken while it started: ended at the loop's top
                    if (index := self._claim()) is None:
                        return
                    again = False
                    try:
                        helper.compile(index)
                    except (SandboxLost, CandidateFailure, OSError):
                        if not helper.preempted.is_set():
                            return  # a helper lost is only compilation the checking sandbox does itself
                        with self._lock:
                            self.preempted += 1
                        again = True  # compiled again after the timed turn; the sandbox ends at the loop's top
                    finally:
                        self._finish(index, again)  # copied or not, the checking sandbox waits no longer
        except (SandboxLost, CandidateFailure, OSError):
            return
        finally:
            helper.end()

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
                "preempted": self.preempted, "waited_s": round(self.waited, 3)}


class _Helper:
    """One helper thread's sandbox, started again after each preemption."""

    def __init__(self, ahead: CompileAhead):
        self.ahead = ahead
        self.sandbox: Sandbox | None = None
        self.loaded = False
        self.preempted = threading.Event()
        self._guard = threading.Lock()  # the sandbox is killed from the timed turn's thread

    def start(self) -> bool:
        sandbox = self.ahead.spawn()
        with self.ahead._lock:
            if self.ahead._stopping.is_set():
                sandbox.close()
                return False
            self.ahead._live.append(sandbox)
        with self._guard:
            self.sandbox, self.loaded = sandbox, False
        return True

    def compile(self, index: int) -> None:
        ahead, sandbox = self.ahead, self.sandbox
        if not self.loaded:
            if ahead.load is not None:
                ahead.load(sandbox)
            self.loaded = True
            # a sandbox started after a preemption begins from the kernels made so far (the checking
            # sandbox's cache holds all that any helper finished), so a case taken again compiles only the rest
            with ahead._lock:
                harvest(ahead.destination, Path(sandbox.folder) / "triton", ahead.names, set(), [HARVEST_BYTES])
        shape, dtype, variant, backward = ahead.cases[index]
        reply = sandbox.request({"kind": "compile", "phase": "compile", "shape": shape, "dtype": dtype,
                                 "variant": variant, "backward": backward, "seed": ahead.seed + index}, ahead.timeout)
        with ahead._lock:
            ahead.compiled += reply.get("kind") == "compiled" and not ahead._stopping.is_set()
        ahead._copy(sandbox)

    def preempt(self) -> None:
        """A timed turn wants the card: keep what this helper finished, then kill its sandbox, and with its
        process whatever it had queued on the GPU."""
        with self._guard:
            self.preempted.set()
            sandbox = self.sandbox
        if sandbox is not None:
            self.ahead._copy(sandbox)
            sandbox.kill()

    def end(self) -> None:
        with self._guard:
            sandbox, self.sandbox = self.sandbox, None
            self.preempted.clear()  # the next sandbox starts in a turn of its own
        if sandbox is not None:
            sandbox.close()
            with self.ahead._lock:
                if sandbox in self.ahead._live:
                    self.ahead._live.remove(sandbox)
