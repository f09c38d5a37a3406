"""The LangGraph state of a run: plain data only, so every step can be logged and inspected."""
from __future__ import annotations

from typing import Any, TypedDict


class Candidate(TypedDict, total=False):
    id: str                           # c001, c002, ... within the op
    op: str
    origin: str                       # incumbent | rules | seed | test:<rule id> | mutation | explore
    params: dict[str, Any] | None     # template point, None for a source that is not a template point
    parents: list[str]
    path: str                         # the candidate's source in the run folder
    status: str                       # accepted | rejected | failed (after evaluation)
    failure_class: str | None
    reason: str
    speedup_eager: float | None       # None when speed was not measured (CPU interpreter)
    speedup_compile: float | None
    roofline_fraction: float | None
    gbps: float | None
    candidate_ms: float | None
    eager_ms: float | None
    compile_ms: float | None
    backward: bool                    # its verdict checked a backward (a differentiable candidate)
    deterministic: bool | None        # that backward's gradients were bitwise equal on repeated calls
    train_speedup_eager: float | None  # forward+backward timings (train_<key> of graph.TRAIN_KEYS)
    train_speedup_compile: float | None
    score: float | None               # what the search maximises (see graph._candidate_from)
    unusable: dict                    # {"class", "detail"}: an LLM answer that is no candidate file
    exchange: str                     # the recorded LLM exchange it came from (llm/NNNN-coder.json)


class RunState(TypedDict):
    queue: list[str]                  # ops still to evolve, in order
    op: str | None                    # the op being evolved, None between ops
    proposed: int                     # candidates proposed for the current op
    pending: list[Candidate]          # proposed, not yet evaluated (one per worker of the pool)
    history: list[Candidate]          # evaluated candidates of the current op
    exhausted: bool                   # the coder has nothing untried left for this op
    done: list[str]                   # ops finished


def best_of(history: list[Candidate], template_only: bool = False) -> Candidate | None:
    """The accepted candidate of the highest score: its speedup over eager (a ratio measured in one process,
    so it compares across evaluations), of forward+backward in a training run; without scores (CPU
    interpreter) the first accepted one, preferring one with a checked backward.
    `template_only` skips candidates that are not template points (they cannot be mutated)."""
    accepted = [c for c in history if c["status"] == "accepted" and (c.get("params") is not None or not template_only)]
    if not accepted:
        return None
    timed = [c for c in accepted if _score(c) is not None]
    if timed:
        return max(timed, key=_score)
    return next((c for c in accepted if c.get("backward")), accepted[0])


def _score(candidate: Candidate) -> float | None:
    # candidates recorded before scores existed rank by their forward speed
    return candidate["score"] if "score" in candidate else candidate.get("speedup_eager")
