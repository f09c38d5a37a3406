"""torch.compile's baseline caches shared by the evaluators of one pool that time on the same GPU.

Each warm is a sandbox that compiles the op's baseline alone on the GPU (its autotuning times kernels), so
one per worker and op made every worker but the first wait for the card: on an H200 with three workers, the
layer_norm candidates' warm phases took 15 to 48 s where one warm takes about 15. Here the first worker to
need an op's caches makes them, the others wait for that file and copy it into their own fork server's
folder, where their sandboxes are offered it as before.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from typing import Callable


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
