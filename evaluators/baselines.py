"""torch.compile's baseline caches: made in a sandbox that loads no candidate, shared by the evaluators of
one pool that time on the same GPU, and kept across runs.

Each warm is a sandbox that compiles the op's baseline alone on the GPU (its autotuning times kernels), so
one per worker and op made every worker but the first wait for the card: on an H200 with three workers, the
layer_norm candidates' warm phases took 15 to 48 s where one warm takes about 15. Here the first worker to
need an op's caches makes them, the others wait for that file and copy it into their own fork server's
folder, where their sandboxes are offered it as before.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable

from .judge import fresh_seed, sandbox_reply
from .sandboxes import Sandbox, SandboxLost
from .verdict import CandidateFailure


class SharedBaselines:
    """The caches of each op's baseline, made once for the pool and kept in a folder of its own."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="evolve-baselines-")
        self._lock = threading.Lock()
        self._per_op: dict[str, threading.Lock] = {}
        self._files: dict[str, str | None] = {}
        self.warmed = 0  # warm sandboxes this pool ran

    def get(self, op: str, warm: Callable[[str], str | None]) -> str | None:
        """The file of op's caches; `warm(destination)` makes it the first time and returns the destination,
        or None where the warm failed: that answer is kept too, and each timing compiles its own baseline, as
        it would without caches."""
        with self._lock:
            lock = self._per_op.setdefault(op, threading.Lock())
        with lock:  # one warm per op; other ops' warms are not held up by it
            if op not in self._files:
                self.warmed += 1
                self._files[op] = warm(os.path.join(self.folder, f"baselines-{op}.bin"))
            return self._files[op]

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class BaselineCaches:
    """The Evaluator's side of the baseline caches (a mixin: it uses the evaluator's settings, spec, device,
    fork server, sandboxes and GPU turns). On a GPU each candidate's sandbox is offered the op's caches
    before the candidate loads; they come from the store kept across runs, else from a warm sandbox, made
    once per fork server, or once for the pool's workers on this GPU where they share `baselines`."""

    def baseline_cache(self, op: str) -> str | None:
        """The file of torch.compile's caches for the op's baseline at this evaluator's timed shapes and
        dtypes, compiled once in a fresh sandbox that loads no candidate (once per fork server, or once for
        the pool's workers on this GPU where they share `baselines`, each copying the file into its fork
        server's folder); None where that sandbox failed, and each timing then compiles the baseline itself,
        as it would without the cache."""
        server = self._fork_server()
        known = self._warm.get(op)
        if known is not None and known[0] is server:
            return known[1]
        own = str(Path(server.base) / f"baselines-{op}.bin")
        if self.baselines is None:
            path = self._stored_or_warmed(op, own)
        else:
            shared = self.baselines.get(op, lambda destination: self._stored_or_warmed(op, destination))
            try:
                path = shutil.copyfile(shared, own) if shared is not None else None
            except OSError:
                path = None
        self._warm[op] = (server, path)
        return path

    def stored_baseline(self, op: str) -> Path | None:
        """Where the caches of op's baseline are kept across runs for this device and software, the op's
        timed shapes (their sizes too: a target may name its own) and dtypes, and forward or forward+backward;
        None without a store."""
        folder = self.settings.baselines_cache
        if folder is None:
            return None
        spec = self.spec(op)
        info = self.device_info
        key = {"device": info.get("name"), "arch": info.get("arch"), "torch": info.get("torch"),
               "triton": info.get("triton"), "op": op, "dtypes": list(self.settings.timed_dtypes),
               "shapes": [[s.name, sorted(s.dims.items())] for s in spec.timed_shapes()],
               "backward": self.settings.backward and spec.has_backward}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return Path(folder) / f"{op}-{digest}.bin"

    def _stored_or_warmed(self, op: str, destination: str) -> str | None:
        """The op's baseline caches at `destination`: from the store kept across runs where it holds them,
        else compiled in a warm sandbox and then stored (written whole or not at all: a run killed meanwhile
        leaves no torn file for the next)."""
        stored = self.stored_baseline(op)
        if stored is not None and stored.is_file() and stored.stat().st_size > 0:
            try:
                return shutil.copyfile(stored, destination)
            except OSError:
                pass
        made = self._warm_baseline(op, destination)
        if made is not None and stored is not None:
            try:
                stored.parent.mkdir(parents=True, exist_ok=True)
                partial = stored.with_name(f".{stored.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                shutil.copyfile(made, partial)
                os.replace(partial, stored)
            except OSError:
                pass
        return made

    def _warm_baseline(self, op: str, destination: str) -> str | None:
        """Compile the op's baseline in a fresh sandbox and copy its caches to `destination`; None on failure."""
        spec = self.spec(op)
        shapes = [[shape.name, dtype] for shape in spec.timed_shapes() for dtype in self.settings.timed_dtypes]
        request = {"kind": "warm", "op": op, "shapes": shapes, "seed": fresh_seed(),
                   "backward": self.settings.backward and spec.has_backward}
        sandbox = self._sandbox()
        try:
            # alone on the GPU: the baseline's autotuning picks its kernels by timing them
            with self._turn(exclusive=True):
                reply = sandbox_reply(sandbox.request(request, self.settings.timeouts.time), "warmed")
            source = Path(sandbox.folder) / Path(str(reply["file"])).name
            shutil.copyfile(source, destination)
            return destination
        except (CandidateFailure, SandboxLost, OSError, KeyError):
            return None
        finally:
            sandbox.close()

    def _warms_baselines(self) -> bool:
        return self.settings.device == "cuda" and self.settings.warm_baselines  # only a GPU times baselines

    def _offer_baselines(self, sandbox: Sandbox, op: str) -> bool:
        """Before the candidate loads: the baseline's caches, where timing will run and they exist. True when
        the sandbox loaded some (its reply comes before any candidate code runs in it): its baseline will then
        find its autotuning choices made, and compiling it needs the GPU no more than a check does."""
        if not self._warms_baselines():
            return False
        path = self.baseline_cache(op)
        if path is None:
            return False
        reply = sandbox_reply(sandbox.request({"kind": "baselines", "path": path}, self.settings.timeouts.load),
                              "baselines")
        artifacts = reply.get("artifacts")
        return isinstance(artifacts, int) and artifacts > 0 and not reply.get("error")

