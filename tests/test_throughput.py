"""A run's throughput from its events: candidates a minute over the stretches it ran (a resume starts a new
one), the whole run's wall time, and the median seconds of each evaluation phase."""
from __future__ import annotations

from agents.app.throughput import throughput, throughput_lines


def _at(seconds: int, kind: str, **data) -> dict:
    minutes, rest = divmod(seconds, 60)
    return {"ts": f"2026-12-02T10:{minutes:02d}:{rest:02d}+00:00", "kind": kind, **data}


def _verdict(seconds: int, check: float, ahead: int | None = None, preempted: int = 0) -> dict:
    extra = ({"compiled_ahead": {"sandboxes": 2, "cases": 9, "kernels": ahead, "preempted": preempted}}
             if ahead is not None else {})
    return _at(seconds, "verdict", phases={"load": 1.0, "check": check, "time": 5.0}, **extra)


def test_candidates_a_minute_over_the_stretches_the_run_ran():
    events = [_at(0, "plan"), _verdict(30, 4.0, 3), _verdict(60, 6.0, 5, preempted=2), _at(90, "promotion"),
              _at(120, "error", error="interrupted by the user"),
              # twenty minutes later, resumed: the gap is not the run's
              _at(1320, "resume"), _verdict(1350, 8.0, 4), _at(1380, "promotion"), _at(1500, "assembly")]
    result = throughput(events, workers=2)
    assert result["candidates"] == 3
    assert result["search_minutes"] == (90 + 60) / 60
    assert result["run_minutes"] == (120 + 180) / 60
    assert result["per_minute"] == 3 / 2.5
    assert result["phase_median_s"] == {"load": 1.0, "check": 6.0, "time": 5.0}
    assert result["kernels_compiled_ahead"] == 12
    lines = throughput_lines(result)
    assert lines[0] == "Throughput: 3 candidates judged in 2.5 min (1.2 a minute) on 2 workers; the whole run 5.0 min."
    assert result["cases_preempted"] == 2
    assert "check 6.0 (3)" in lines[1] and "12" in lines[2] and "timed turn: 2" in lines[2]


def test_a_run_without_verdicts_has_no_throughput():
    assert throughput([_at(0, "plan")]) is None and throughput_lines(None) == []


def test_a_cpu_run_reports_no_compiled_kernels():
    result = throughput([_at(0, "plan"), _verdict(45, 2.0)], workers=None)
    assert result["kernels_compiled_ahead"] is None and result["workers"] is None
    assert len(throughput_lines(result)) == 2
