"""Memory of the kernel evolution: the rulebook, promoted winners and the archive of candidates.

Everything lives under one memory root folder. In a source checkout that is this package's own folder, so
the shipped seed lessons (lessons/) and what runs learn (learned/, evidence.jsonl, promoted/, archive/) sit
side by side; an installed evolve keeps a user's memory in a workspace folder whose layers.toml puts this
package's folder beneath it, read-only: its rules and kernels are the defaults, every write goes on top. This package imports nothing from agents/, evaluators/ or kernels/.

Several runs may share one memory root: every write is atomic (a rename, or one whole appended line) and
made under an inter-process lock (fcntl.flock), and promotions are journalled so that a writer killed at
any moment leaves the store readable (see _lock.py, _files.py and _journal.py).
"""

from __future__ import annotations

from pathlib import Path

from memory._files import LAYERS_FILE, mark_shipped_beneath, shipped_beneath
from memory.archive import CandidateArchive, source_sha
from memory.errors import MemoryStoreError
from memory.promoted import INTERPRETER_GPU, KernelStore, PromotedKernel, gpu_slug
from memory.rule import RULE_KINDS, VERDICTS, Evidence, Rule
from memory.rulebook import Rulebook

DEFAULT_MEMORY_ROOT: Path = Path(__file__).resolve().parent

__all__ = [
    "DEFAULT_MEMORY_ROOT",
    "LAYERS_FILE",
    "mark_shipped_beneath",
    "shipped_beneath",
    "INTERPRETER_GPU",
    "RULE_KINDS",
    "VERDICTS",
    "CandidateArchive",
    "Evidence",
    "KernelStore",
    "MemoryStoreError",
    "PromotedKernel",
    "Rule",
    "Rulebook",
    "gpu_slug",
    "source_sha",
]
