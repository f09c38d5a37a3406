"""The evaluator as the rest of the program sees it: a candidate file in, a Verdict out.

Static policy in this process (it only parses text); everything that executes candidate code in a
worker process. Device ceilings are measured once per device and software stack and cached on disk.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from kernels import get_spec

from .promotion import ABDecision, decide
from .sandbox import Timeouts, WorkerLost, WorkerPool
from .static import check_candidate
from .timing import TimingSettings
from .verdict import Verdict


@dataclass(frozen=True)
class EvaluatorSettings:
    device: str                                  # "cuda" or "cpu" (resolved, never "auto")
    timeouts: Timeouts = field(default_factory=Timeouts)
    timing: TimingSettings = field(default_factory=TimingSettings)
    timed_dtypes: tuple[str, ...] = ("bfloat16",)
    ceilings_cache: Path | None = None
    promotion_margin: float = 0.02
    ab_rounds: int = 10


def _fresh_seed() -> int:
    # never a fixed seed: each evaluation draws inputs no candidate could have seen
    return random.SystemRandom().randrange(2**31)


class Evaluator:
    def __init__(self, settings: EvaluatorSettings):
        self.settings = settings
        self.pool = WorkerPool(settings.device, settings.timeouts)
        self._ceilings: dict | None = None

    @property
    def device_info(self) -> dict:
        return self.pool.device_info

    def _device_brief(self) -> dict:
        """What is known of the device without starting a worker (a rejected source needs none)."""
        if self.pool.started:
            return self.device_info
        import torch
        import triton

        return {"name": "cpu" if self.settings.device == "cpu" else None,
                "arch": "interpreter" if self.settings.device == "cpu" else None,
                "torch": torch.__version__, "triton": triton.__version__}

    def ceilings(self) -> dict | None:
        """Measured copy GB/s and bf16 matmul TFLOP/s of this GPU; None on the CPU interpreter."""
        if self.settings.device != "cuda":
            return None
        if self._ceilings is None:
            info = self.device_info
            key = f"{info['name']}|torch {info['torch']}|triton {info['triton']}"
            cache = self.settings.ceilings_cache
            stored = json.loads(cache.read_text()) if cache and cache.exists() else {}
            if key not in stored:
                result = self.pool.request({"kind": "ceilings"})
                if "error" in result:
                    raise RuntimeError(f"measuring the device ceilings failed: {result['error']}")
                stored[key] = {**result["ceilings"], "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
                if cache:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    cache.write_text(json.dumps(stored, indent=2))
            self._ceilings = stored[key]
        return self._ceilings

    def evaluate(self, op: str, path: Path, on_message: Callable[[tuple], None] | None = None,
                 dtypes: tuple[str, ...] | None = None) -> Verdict:
        spec = get_spec(op)
        started = time.perf_counter()
        path = Path(path)
        source = path.read_text()
        violations = check_candidate(source, spec.entry)
        if violations:
            device = self._device_brief()
            slugs = {v.rule for v in violations}
            if slugs == {"syntax"}:
                return Verdict.failed(op, "syntax_error", violations[0].detail, device=device, candidate=str(path),
                                      seconds=time.perf_counter() - started)
            detail = violations[0].detail + (f" (+{len(violations) - 1} more)" if len(violations) > 1 else "")
            return Verdict.failed(op, "static", detail, device=device, candidate=str(path),
                                  seconds=time.perf_counter() - started)
        try:
            device = self.device_info
        except WorkerLost as lost:
            return Verdict.failed(op, lost.failure_class, f"the evaluator's worker did not start: {lost.detail}",
                                  device=self._device_brief(), candidate=str(path))
        task = {
            "kind": "evaluate", "op": op, "path": str(path.resolve()), "device": self.settings.device,
            "seed": _fresh_seed(), "dtypes": list(dtypes) if dtypes else None,
            "timed_dtypes": list(self.settings.timed_dtypes), "ceilings": self.ceilings(),
            "timing": asdict(self.settings.timing),
        }
        try:
            result = self.pool.request(task, on_message)
        except WorkerLost as lost:
            return Verdict.failed(op, lost.failure_class, lost.detail, device=device, candidate=str(path),
                                  seconds=time.perf_counter() - started)
        if "error" in result:
            raise RuntimeError(f"the evaluator's worker failed on its own: {result['error']}")
        data = result["verdict"]
        verdict = Verdict.from_dict(data)
        verdict.seconds = time.perf_counter() - started
        return verdict

    def ab(self, op: str, challenger: Path, incumbent: Path) -> ABDecision:
        """Interleaved A/B rounds at the op's headline shape and first timed dtype (GPU only)."""
        if self.settings.device != "cuda":
            raise RuntimeError("A/B timing needs a GPU")
        spec = get_spec(op)
        task = {"kind": "ab", "op": op, "challenger": str(Path(challenger).resolve()),
                "incumbent": str(Path(incumbent).resolve()), "shape": spec.headline_shape().name,
                "dtype": self.settings.timed_dtypes[0], "rounds": self.settings.ab_rounds, "seed": _fresh_seed(),
                "timing": asdict(self.settings.timing)}
        result = self.pool.request(task)
        if "error" in result:
            raise RuntimeError(f"A/B timing failed: {result['error']}")
        return decide(result["ratios"], self.settings.promotion_margin)

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
