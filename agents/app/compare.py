"""`evolve compare COLD WARM`: what memory saved. Two runs of the same ops and budget, one without memory
(`evolve run --no-memory`) and one with it; per op, how many candidates and how many seconds of evaluation
each needed to come within 2% of the better run's best.

A candidate's score is what its run maximised (forward+backward speed over eager in a training run, the
forward's in an inference run); its seconds are the evaluation's wall time as its verdict recorded it, so
the count is of work done, not of waiting between candidates.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass

from rich.markup import escape
from rich.table import Table

from agents.run_folder import RunFolder

WITHIN = 0.02  # "came within 2% of the best"


class CompareError(ValueError):
    """Two runs that cannot be compared: other ops, no timings."""


@dataclass
class Reach:
    candidates: int | None    # candidates judged until the first within WITHIN of the best; None: never
    seconds: float | None     # evaluation seconds until then
    best: float | None        # the run's own best score
    judged: int               # candidates the run judged in all


def _training(folder: RunFolder) -> bool:
    try:
        return bool(tomllib.loads((folder.path / "config.toml").read_text()).get("run", {}).get("training", True))
    except (OSError, tomllib.TOMLDecodeError):
        return True


def _proposed(event: dict) -> tuple[int, str]:
    """A verdict's place in the order its candidate was proposed: c001 before c002, whichever finished first."""
    ident = str(event.get("id", ""))
    digits = "".join(ch for ch in ident if ch.isdigit())
    return (int(digits) if digits else 0, ident)


def scores(folder: RunFolder) -> dict[str, list[tuple[float | None, float]]]:
    """Per op, (score, seconds) of every judged candidate in the order proposed: with several workers the
    order verdicts arrive in is the schedule's, and the count would depend on which worker was faster."""
    training = _training(folder)
    out: dict[str, list[tuple[float | None, float]]] = {}
    verdicts = sorted((e for e in folder.events() if e.get("kind") == "verdict"), key=_proposed)
    for event in verdicts:
        if event.get("kind") != "verdict":
            continue
        timing = event.get("timing") or {}
        train = (event.get("backward") or {}).get("timing") or {}
        score = train.get("speedup_eager") if training else timing.get("speedup_eager")
        if event.get("status") != "accepted":
            score = None
        seconds = event.get("seconds")
        out.setdefault(event.get("op"), []).append((score if isinstance(score, (int, float)) else None,
                                                    float(seconds) if isinstance(seconds, (int, float)) else 0.0))
    return out


def reach(history: list[tuple[float | None, float]], target: float) -> Reach:
    spent = 0.0
    best = max((s for s, _ in history if s is not None), default=None)
    for i, (score, seconds) in enumerate(history, start=1):
        spent += seconds
        if score is not None and score >= target * (1 - WITHIN):
            return Reach(i, spent, best, len(history))
    return Reach(None, None, best, len(history))


def compare_runs(cold: RunFolder, warm: RunFolder) -> dict:
    """Per op shared by both runs: the better best, and what each run needed to come within 2% of it."""
    a, b = scores(cold), scores(warm)
    shared = [op for op in cold.summary.get("ops", {}) if op in warm.summary.get("ops", {})]
    if not shared:
        raise CompareError(f"runs {cold.run_id} and {warm.run_id} share no op")
    ops = {}
    for op in shared:
        best = max((s for s, _ in a.get(op, []) + b.get(op, []) if s is not None), default=None)
        if best is None:
            ops[op] = {"best": None, "cold": None, "warm": None}
            continue
        ops[op] = {"best": best, "cold": asdict(reach(a.get(op, []), best)), "warm": asdict(reach(b.get(op, []), best))}
    timed = [o for o in ops.values() if o["best"] is not None]
    if not timed:
        raise CompareError(f"runs {cold.run_id} and {warm.run_id} measured no speed (a CPU run checks correctness only)")
    # a run stopped early (Ctrl-C, a time limit, a lost process) has "never" only over what it judged
    return {"cold": cold.run_id, "warm": warm.run_id, "within": WITHIN, "ops": ops,
            "status": {"cold": cold.status(), "warm": warm.status()}}


def _cell(r: dict | None, key: str, fmt: str, complete: bool = True) -> str:
    if r is None:
        return "—"
    if r[key] is None:
        return "never" if complete else f"not in {r['judged']}"
    return format(r[key], fmt)


def compare_table(result: dict) -> Table:
    table = Table(title=escape(f"memory's effect: cold {result['cold']} vs warm {result['warm']}"), title_justify="left")
    for column in ("op", "best ×eager", "cold: candidates", "cold: seconds", "warm: candidates", "warm: seconds",
                   "warm / cold candidates"):
        table.add_column(column, justify="left" if column == "op" else "right", no_wrap=True)
    status = result.get("status", {})
    done = {side: status.get(side, "complete") == "complete" for side in ("cold", "warm")}
    for op, o in result["ops"].items():
        cold, warm = o["cold"], o["warm"]
        ratio = "—"
        if cold and warm and cold["candidates"] and warm["candidates"]:
            ratio = f"{warm['candidates'] / cold['candidates']:.2f}"
        table.add_row(escape(op), "—" if o["best"] is None else f"{o['best']:.2f}x",
                      _cell(cold, "candidates", "d", done["cold"]), _cell(cold, "seconds", ",.0f", done["cold"]),
                      _cell(warm, "candidates", "d", done["warm"]), _cell(warm, "seconds", ",.0f", done["warm"]),
                      ratio)
    table.caption = (f"Candidates and evaluation seconds each run needed to come within {result['within']:.0%} of the "
                     "better run's best (its score: forward+backward speed over eager in a training run).")
    for side in ("cold", "warm"):
        if not done[side]:
            run = result[side]
            table.caption += (f" The {side} run {run} is {status[side]}: its counts cover the candidates it judged "
                              f"(evolve run --resume {run} finishes it).")
    return table
