"""Verdicts and failure classes: what the evaluator concludes about one candidate.

Every way a candidate can go wrong is its own class, so a run's summary can count them and a report can
say which cheats and faults occurred. `rejected` means the candidate ran but broke a rule (a check or
the static policy); `failed` means it could not run to the end (a fault).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# class -> (status, what it means)
FAILURE_CLASSES: dict[str, tuple[str, str]] = {
    "static": ("rejected", "the source breaks the static policy (imports, builtins, torch math, monkeypatching)"),
    "no_kernel": ("rejected", "no Triton kernel launched for the op"),
    "wrong_result": ("rejected", "the output differs from the reference beyond tolerance"),
    "stale_memory": ("rejected", "the output holds NaN-poisoned memory that the kernel never wrote"),
    "input_mutation": ("rejected", "an input changed during the call"),
    "aliasing": ("rejected", "the output shares storage with an input"),
    "layout": ("rejected", "the output's type, dtype, shape or strides differ from the reference's"),
    "caching": ("rejected", "right once, wrong for other inputs or after timing (cached or lazy work)"),
    "nondeterminism": ("rejected", "the same inputs gave different outputs beyond rounding"),
    "wrong_gradient": ("rejected", "a gradient differs from autograd of the reference beyond tolerance, or is "
                                   "missing"),
    "too_fast": ("rejected", "faster than the physical floor: a measurement error or a cheat"),
    "escape": ("rejected", "the candidate tried what its sandbox refuses (files, processes, sockets, imports, "
                           "torch computing the op, patching the evaluator)"),
    "syntax_error": ("failed", "the source does not parse"),
    "compile_error": ("failed", "the Triton kernel does not compile"),
    "exception": ("failed", "a Python exception while running"),
    "timeout": ("failed", "compile or run exceeded its time limit; the worker was killed"),
    "crash": ("failed", "the worker process died"),
    "illegal_address": ("failed", "CUDA illegal memory access or another sticky device error"),
    "protocol": ("failed", "the sandbox broke the protocol (a malformed, oversized or impossible reply)"),
    "out_of_memory": ("failed", "the device ran out of memory"),
    # a proposal that never became a candidate file: the coder's answer held no code, or several files
    "no_code": ("rejected", "the coder's answer holds no code block"),
    "several_files": ("rejected", "the coder's answer holds several code blocks; a candidate is one file"),
    "llm_error": ("failed", "the coder got no answer from its model (server error, timeout) after retries"),
}


class CandidateFailure(Exception):
    """Raised inside the evaluation when a candidate fails; carries its class and one line of detail."""

    def __init__(self, failure_class: str, detail: str):
        if failure_class not in FAILURE_CLASSES:
            raise ValueError(f"unknown failure class {failure_class!r}")
        super().__init__(f"{failure_class}: {detail}")
        self.failure_class = failure_class
        self.detail = detail


def status_of(failure_class: str | None) -> str:
    return "accepted" if failure_class is None else FAILURE_CLASSES[failure_class][0]


@dataclass
class Verdict:
    op: str
    status: str                              # accepted | rejected | failed
    failure: dict | None                     # {"class": ..., "detail": ...}
    checks: list[dict] = field(default_factory=list)
    timing: dict | None = None               # null on CPU: speed not measured
    device: dict = field(default_factory=dict)
    candidate: str = ""                      # path of the source file evaluated
    seconds: float = 0.0                     # wall time of the evaluation
    # where that time went: seconds per phase (warm, start, load, check, backward, prepare, time, recheck),
    # as far as it got
    phases: dict = field(default_factory=dict)
    stderr: str = ""                         # what the sandbox printed (capped), for a failure's diagnosis
    # null for a forward-only candidate (or a run that checks no backward); else {"checks": [...],
    # "deterministic": bitwise-equal gradients on repeated calls, "timing": forward+backward on a GPU}
    backward: dict | None = None
    # on a GPU: the sandboxes that compiled the candidate's kernels ahead of its checks, the cases they
    # finished and the kernels the judge copied from them ({"sandboxes", "cases", "kernels"}); else null
    compiled_ahead: dict | None = None

    @classmethod
    def failed(cls, op: str, failure_class: str, detail: str, **kwargs: Any) -> "Verdict":
        return cls(op=op, status=status_of(failure_class), failure={"class": failure_class, "detail": detail},
                   **kwargs)

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @property
    def failure_class(self) -> str | None:
        return self.failure["class"] if self.failure else None

    def reason(self) -> str:
        """One line for humans."""
        if self.failure:
            return f"{self.failure['class']}: {self.failure['detail']}"
        grads = ""
        if self.backward is not None:
            kind = "deterministic" if self.backward.get("deterministic") else "with atomics" \
                if self.backward.get("deterministic") is False else "checked"
            grads = f", gradients too (backward {kind})"
        if self.timing is None:
            return f"correct on every shape and dtype{grads}; speed not measured (no GPU: Triton interpreter)"
        t = self.timing
        line = (f"{t['speedup_eager']:.2f}x eager, {t['speedup_compile']:.2f}x torch.compile, "
                f"{t['roofline_fraction']:.0%} of the roofline")
        train = (self.backward or {}).get("timing")
        if train:
            line += (f"; forward+backward {train['speedup_eager']:.2f}x eager, {train['speedup_compile']:.2f}x "
                     f"torch.compile, {train['peak_mib']['candidate']:.0f} MiB peak")
        return line

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    @classmethod
    def from_dict(cls, data: dict) -> "Verdict":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
