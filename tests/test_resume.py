"""`evolve run --resume RUN`: a run killed at any moment (Ctrl-C, SIGTERM, SIGKILL) continues where it
stopped: every candidate it judged is kept and judged once, the ops it finished stay finished, and the run
ends as complete as an uninterrupted one. A run whose process died reads as interrupted, not running."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import EVOLVE, PROJECT_ROOT

BUDGET = 3


def _events(run: Path) -> list[dict]:
    path = run / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _only_run(tmp_path: Path) -> Path:
    runs = [p for p in (tmp_path / "runs").iterdir() if (p / "summary.json").exists()]
    assert len(runs) == 1
    return runs[0]


def _evolve(config_file: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*EVOLVE, "--config", str(config_file), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=PROJECT_ROOT)


def test_a_run_killed_with_sigkill_resumes_to_complete_with_every_candidate_once(config_file, tmp_path):
    command = [*EVOLVE, "--config", str(config_file), "run", "nanogpt", "--ops", "layer_norm,bias_gelu",
               "--budget", str(BUDGET), "--device", "cpu"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        run = None
        # killed in the middle of the second op: the first finished, the second half-judged
        while time.monotonic() < deadline:
            if (tmp_path / "runs").exists() and any((tmp_path / "runs").iterdir()):
                run = _only_run(tmp_path)
                verdicts = [e for e in _events(run) if e["kind"] == "verdict" and e["op"] == "bias_gelu"]
                if verdicts:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("the run judged nothing of its second op in time")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert json.loads((run / "summary.json").read_text())["status"] == "running"  # nothing could say otherwise

    listed = _evolve(config_file, "runs")
    assert listed.returncode == 0 and "interrupted" in listed.stdout, listed.stdout
    before = {(e["op"], e["id"]) for e in _events(run) if e["kind"] == "verdict"}

    resumed = _evolve(config_file, "run", "--resume", run.name)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["resumed"]
    events = _events(run)
    for op in ("layer_norm", "bias_gelu"):
        judged = [e["id"] for e in events if e["kind"] == "verdict" and e["op"] == op]
        assert sorted(judged) == [f"c{i:03d}" for i in range(1, BUDGET + 1)], (op, judged)  # each exactly once
        assert summary["ops"][op]["candidates"] == BUDGET
        assert all((run / "candidates" / op / f"{cid}.py").is_file() for cid in judged)
        assert "lessons" in summary["ops"][op]
    # what was judged before the kill was kept, not judged again; the finished op was not planned again
    after = [(e["op"], e["id"]) for e in events if e["kind"] == "verdict"]
    assert before <= set(after) and len(after) == len(set(after))
    plans = [e["op"] for e in events if e["kind"] == "plan" and "budget" in e]
    assert plans.count("layer_norm") == 1 and plans.count("bias_gelu") == 2
    assert any(e["kind"] == "resume" and e.get("op") == "bias_gelu" for e in events)

    again = _evolve(config_file, "run", "--resume", run.name)
    assert again.returncode == 2 and "complete" in again.stderr


def test_resume_refuses_other_settings_and_unknown_runs(config_file):
    flags = _evolve(config_file, "run", "--resume", "latest", "--budget", "5")
    assert flags.returncode == 2 and "leave out --budget" in flags.stderr
    missing = _evolve(config_file, "run", "--resume", "no-such-run")
    assert missing.returncode == 2 and "no run" in missing.stderr
    bare = _evolve(config_file, "run")
    assert bare.returncode == 2 and "TARGET" in bare.stderr


def test_recorded_candidates_pair_verdicts_and_keep_the_unjudged_one(tmp_path):
    from agents.search.graph import recorded_candidates

    path = tmp_path / "c003.py"
    path.write_text("# proposed, never judged\n")
    verdict = {"op": "layer_norm", "status": "accepted", "failure": None, "checks": [], "timing": None,
               "device": {}, "candidate": "", "backward": None}
    events = [
        {"kind": "candidate", "op": "layer_norm", "id": "c001", "origin": "seed", "params": {"A": 1}, "path": "x"},
        {"kind": "verdict", "id": "c001", **verdict},
        {"kind": "candidate", "op": "layer_norm", "id": "c002", "origin": "mutation", "params": {"A": 2}, "path": "y"},
        {"kind": "verdict", "id": "c002", **{**verdict, "status": "rejected",
                                             "failure": {"class": "wrong_result", "detail": "d"}}},
        {"kind": "verdict", "id": "c002", **verdict},  # a duplicate line: the first verdict stands
        {"kind": "candidate", "op": "layer_norm", "id": "c003", "origin": "explore", "params": {"A": 3},
         "path": str(path)},
    ]
    history, pending = recorded_candidates(events, training=False)["layer_norm"]
    assert [c["id"] for c in history] == ["c001", "c002"]
    assert [c["status"] for c in history] == ["accepted", "rejected"]
    assert history[1]["failure_class"] == "wrong_result"
    assert [c["id"] for c in pending] == ["c003"] and pending[0]["params"] == {"A": 3}
    path.unlink()  # its file gone (a kill between the event and the write): proposed afresh instead
    assert recorded_candidates(events, training=False)["layer_norm"][1] == []


def test_a_population_stopped_mid_way_resumes_with_its_unjudged_candidates(tmp_path):
    # a population of three proposed, one judged: the other two come back, up to the first whose file is gone
    from agents.search.graph import recorded_candidates

    verdict = {"op": "rms_norm", "status": "accepted", "failure": None, "checks": [], "timing": None,
               "device": {}, "candidate": "", "backward": None}
    paths = []
    events = []
    for i in (1, 2, 3, 4):
        paths.append(tmp_path / f"c00{i}.py")
        paths[-1].write_text("# proposed\n")
        events.append({"kind": "candidate", "op": "rms_norm", "id": f"c00{i}", "origin": "rules",
                       "params": {"A": i}, "path": str(paths[-1])})
    events.append({"kind": "verdict", "id": "c001", **verdict})
    history, pending = recorded_candidates(events, training=False)["rms_norm"]
    assert [c["id"] for c in history] == ["c001"]
    assert [c["id"] for c in pending] == ["c002", "c003", "c004"]
    paths[2].unlink()
    assert [c["id"] for c in recorded_candidates(events, training=False)["rms_norm"][1]] == ["c002"]


def test_a_population_killed_between_its_verdicts_keeps_the_one_it_reached(tmp_path):
    # two workers judge c001 and c002 at once; killed when one verdict is logged and the other is not, the
    # resumed run (on one worker: the worker count may change) judges c002's partner only, and goes on
    config = tmp_path / "config.toml"
    config.write_text('[model]\nassemble = false\n[run]\nruns_dir = "runs"\nmemory_dir = "memory"\nbudget = 4\n'
                      'device = "cpu"\ncoder = "template"\ntraining = false\nworkers = 2\npopulation = 2\n')
    process = subprocess.Popen([*EVOLVE, "--config", str(config), "run", "nanogpt", "--ops", "layer_norm",
                                "--no-memory"], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (tmp_path / "runs").exists() and any((tmp_path / "runs").iterdir()):
                run = _only_run(tmp_path)
                if [e for e in _events(run) if e["kind"] == "verdict"]:
                    break
            time.sleep(0.05)
        else:
            raise AssertionError("no verdict in time")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    before = [e["id"] for e in _events(run) if e["kind"] == "verdict"]
    assert len(before) == 1, before  # the other candidate of the population was still being judged

    resumed = _evolve(config, "run", "--resume", run.name, "--workers", "1")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    events = _events(run)
    judged = [e["id"] for e in events if e["kind"] == "verdict"]
    assert sorted(judged) == ["c001", "c002", "c003", "c004"] and judged[0] == before[0]  # each once, kept
    (resume,) = [e for e in events if e["kind"] == "resume" and e.get("op") == "layer_norm"]
    assert resume["evaluated"] == before and len(resume["pending"]) == 1


def test_a_resumed_run_hands_over_each_op_once_from_its_first_plan(tmp_path):
    from agents.app.report import handover_lines
    from agents.run_folder import RunFolder
    folder = RunFolder.create(tmp_path, "nanogpt", "", {}, ["attention", "layer_norm"])
    rule = {"id": "attention.tile-64x64", "confidence": 0.9}
    folder.log("plan", op="attention", budget=2, rules=[rule])
    folder.log("plan", op="layer_norm", budget=2, rules=[])
    # the resumed run plans the op it stopped in again, with the memory as it is by then
    folder.log("plan", op="attention", budget=2, rules=[{"id": "attention.load-pipelining", "confidence": 0.7}])
    lines = handover_lines(folder)
    assert lines == ["Handed over:", "  attention: rules attention.tile-64x64 (0.9)"]
