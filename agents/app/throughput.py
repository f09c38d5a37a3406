"""Where a run's time went, from its events alone: candidates judged a minute, the wall time of the search
and of the whole run, and the seconds of each evaluation phase (median over the verdicts).

A resumed run is counted over the stretches in which it ran: a `resume` event starts a new stretch, and the
time between the last event before it and the resume is not the run's.
"""
from __future__ import annotations

import statistics
from datetime import datetime

PHASE_ORDER = ("warm", "start", "load", "check", "backward", "prepare", "time", "recheck")


def _stamp(event: dict) -> float | None:
    try:
        return datetime.fromisoformat(str(event["ts"])).timestamp()
    except (KeyError, ValueError):
        return None


def _stretches(events: list[dict]) -> list[list[tuple[float, dict]]]:
    stretches: list[list[tuple[float, dict]]] = [[]]
    for event in events:
        ts = _stamp(event)
        if ts is None:
            continue
        if event.get("kind") == "resume" and stretches[-1]:
            stretches.append([])
        stretches[-1].append((ts, event))
    return [s for s in stretches if s]


def _span(stretches: list[list[tuple[float, dict]]], last_kinds: tuple[str, ...] | None) -> float:
    """Seconds from each stretch's first event to its last (of `last_kinds`, where given), summed."""
    total = 0.0
    for stretch in stretches:
        ends = [ts for ts, e in stretch if last_kinds is None or e.get("kind") in last_kinds]
        if ends:
            total += max(ends) - stretch[0][0]
    return total


def throughput(events: list[dict], workers: int | None = None) -> dict | None:
    """The run's throughput, or None before its first verdict."""
    verdicts = [e for e in events if e.get("kind") == "verdict"]
    if not verdicts:
        return None
    stretches = _stretches(events)
    search_s = _span(stretches, ("verdict", "promotion"))
    phases: dict[str, list[float]] = {}
    for v in verdicts:
        for name, seconds in (v.get("phases") or {}).items():
            if isinstance(seconds, (int, float)):
                phases.setdefault(str(name), []).append(float(seconds))
    ordered = [p for p in PHASE_ORDER if p in phases] + sorted(p for p in phases if p not in PHASE_ORDER)
    ahead = [v["compiled_ahead"] for v in verdicts if isinstance(v.get("compiled_ahead"), dict)]
    return {
        "candidates": len(verdicts),
        "workers": workers,
        "search_minutes": search_s / 60,
        "run_minutes": _span(stretches, None) / 60,
        "per_minute": len(verdicts) / (search_s / 60) if search_s > 0 else None,
        "phase_median_s": {p: statistics.median(phases[p]) for p in ordered},
        "phase_count": {p: len(phases[p]) for p in ordered},
        "kernels_compiled_ahead": sum(int(a.get("kernels") or 0) for a in ahead) if ahead else None,
        "cases_preempted": sum(int(a.get("preempted") or 0) for a in ahead) if ahead else None,
    }


def throughput_lines(result: dict | None) -> list[str]:
    if result is None:
        return []
    rate = f"{result['per_minute']:.1f} a minute" if result["per_minute"] else "under a second"
    on = f" on {result['workers']} worker{'s' if result['workers'] != 1 else ''}" if result["workers"] else ""
    lines = [f"Throughput: {result['candidates']} candidates judged in {result['search_minutes']:.1f} min "
             f"({rate}){on}; the whole run {result['run_minutes']:.1f} min."]
    if result["phase_median_s"]:
        lines.append("  median seconds per phase: " + ", ".join(
            f"{p} {s:.1f} ({result['phase_count'][p]})" for p, s in result["phase_median_s"].items()))
    if result["kernels_compiled_ahead"] is not None:
        lines.append(f"  kernels compiled ahead and copied into the checking sandboxes: "
                     f"{result['kernels_compiled_ahead']}"
                     + (f"; helper cases cut short by a timed turn: {result['cases_preempted']}"
                        if result.get("cases_preempted") else ""))
    return lines
