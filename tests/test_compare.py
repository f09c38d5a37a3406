"""`evolve compare COLD WARM`: per op, the candidates and seconds each run needed to come within 2% of the
better run's best, read from the runs' own verdicts."""
from __future__ import annotations

import json
import subprocess

from conftest import EVOLVE, PROJECT_ROOT

from agents.run_folder import RunFolder


def _run(runs, name: str, training: bool, verdicts: list[tuple[str, float | None, float]],
         status: str = "complete") -> RunFolder:
    folder = RunFolder.create(runs, name, f"[run]\ntraining = {str(training).lower()}\n", {"name": "NVIDIA H200"},
                              ["layer_norm", "attention"])
    for i, (op, speed, seconds) in enumerate(verdicts, start=1):
        timing = {"speedup_eager": speed} if speed is not None else None
        backward = {"timing": {"speedup_eager": speed}} if speed is not None else None
        folder.log("verdict", id=f"c{i:03d}", op=op, status="accepted" if speed else "rejected", timing=timing,
                   backward=backward, seconds=seconds)
    folder.finish(status)
    return folder


def test_compare_counts_candidates_and_seconds_to_within_two_percent(tmp_path, config_file):
    runs = tmp_path / "runs"
    cold = _run(runs, "cold", True, [("layer_norm", 1.0, 10), ("layer_norm", None, 5), ("layer_norm", 1.5, 20),
                                     ("layer_norm", 2.0, 30), ("attention", 1.1, 60)])
    warm = _run(runs, "warm", True, [("layer_norm", 1.97, 12), ("layer_norm", 1.9, 11), ("attention", 1.0, 50)])
    done = subprocess.run([*EVOLVE, "--config", str(config_file), "compare", cold.run_id, warm.run_id, "--json"],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    ln = result["ops"]["layer_norm"]
    assert ln["best"] == 2.0
    assert (ln["cold"]["candidates"], ln["cold"]["seconds"]) == (4, 65.0)  # the rejected one's time counts
    assert (ln["warm"]["candidates"], ln["warm"]["seconds"]) == (1, 12.0)  # 1.97 is within 2% of 2.0
    at = result["ops"]["attention"]
    assert at["cold"]["candidates"] == 1 and at["warm"]["candidates"] is None  # never within 2% of 1.1
    table = subprocess.run([*EVOLVE, "--config", str(config_file), "compare", cold.run_id, warm.run_id],
                           capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert table.returncode == 0 and "0.25" in table.stdout and "never" in table.stdout


def test_compare_refuses_runs_without_speed(tmp_path, config_file):
    runs = tmp_path / "runs"
    a = _run(runs, "a", False, [("layer_norm", None, 1)])
    b = _run(runs, "b", False, [("layer_norm", None, 1)])
    done = subprocess.run([*EVOLVE, "--config", str(config_file), "compare", a.run_id, b.run_id],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert done.returncode == 2 and "measured no speed" in done.stderr


def test_an_interrupted_run_is_named_and_its_nevers_cover_what_it_judged(tmp_path, config_file):
    runs = tmp_path / "runs"
    cold = _run(runs, "cold", True, [("layer_norm", 1.3, 100), ("layer_norm", 0.9, 120)])
    warm = _run(runs, "warm", True, [("layer_norm", 0.85, 110)], status="interrupted")
    done = subprocess.run([*EVOLVE, "--config", str(config_file), "compare", cold.run_id, warm.run_id, "--json"],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == {"cold": "complete", "warm": "interrupted"}
    assert result["ops"]["layer_norm"]["warm"]["candidates"] is None
    table = subprocess.run([*EVOLVE, "--config", str(config_file), "compare", cold.run_id, warm.run_id],
                           capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    text = " ".join(table.stdout.split())
    assert "not in 1" in text and "never" not in text
    assert f"The warm run {warm.run_id} is interrupted" in text and f"--resume {warm.run_id}" in text


def test_candidates_count_in_the_order_proposed_not_the_order_they_finished(tmp_path, config_file):
    runs = tmp_path / "runs"
    cold = _run(runs, "cold", True, [("layer_norm", 1.0, 10), ("layer_norm", 1.2, 10)])
    warm = RunFolder.create(runs, "warm", "[run]\ntraining = true\n", {"name": "NVIDIA H200"}, ["layer_norm"])
    # three workers: c003 and c002 finished before c001, the incumbent's point and the best
    for ident, speed in (("c003", 0.8), ("c002", 0.9), ("c001", 1.2)):
        warm.log("verdict", id=ident, op="layer_norm", status="accepted", timing={"speedup_eager": speed},
                 backward={"timing": {"speedup_eager": speed}}, seconds=100)
    warm.finish("complete")
    done = subprocess.run([*EVOLVE, "--config", str(config_file), "compare", cold.run_id, warm.run_id, "--json"],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ops"]["layer_norm"]["warm"]["candidates"] == 1
