"""`evolve` against awkward input: config files that are not UTF-8 or carry a BOM, nonsensical numbers,
malformed --ops lists, candidate text full of rich markup, and SIGTERM in the middle of eval, run and bench."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from conftest import PROJECT_ROOT, render

EVOLVE = [sys.executable, "-m", "agents.app.cli"]
MARKUP = "[/] [bold red]x[/bold red] [link=file:///etc]y"


def evolve(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("EVOLVE_CONFIG", None)
    return subprocess.run([*EVOLVE, "--config", str(config), *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def assert_usage_error(proc: subprocess.CompletedProcess, needle: str = "") -> None:
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), describe(proc)
    assert needle in lines[0], describe(proc)


# ----------------------------------------------------------------------------- config files

def test_a_bom_prefixed_config_is_read(config_file: Path) -> None:
    from agents.config import load_config

    config_file.write_bytes(b"\xef\xbb\xbf" + config_file.read_bytes())
    assert load_config(config_file).run.budget == 3
    proc = evolve(config_file, "runs")
    assert proc.returncode == 0, describe(proc)


def test_a_config_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes('[run]\nruns_dir = "läufe"\n'.encode("latin-1"))
    assert_usage_error(evolve(config, "runs"), "not UTF-8")


@pytest.mark.parametrize("text,key", [
    ("[evaluator]\nstart_timeout_s = 0\n", "[evaluator].start_timeout_s"),
    ("[evaluator]\nload_timeout_s = -5\n", "[evaluator].load_timeout_s"),
    ("[evaluator]\ncompile_timeout_s = 0.0\n", "[evaluator].compile_timeout_s"),
    ("[evaluator]\ncheck_timeout_s = -1\n", "[evaluator].check_timeout_s"),
    ("[evaluator]\ntiming_timeout_s = nan\n", "[evaluator].timing_timeout_s"),
    ("[evaluator]\ntiming_timeout_s = inf\n", "[evaluator].timing_timeout_s"),
    ("[timing]\nrounds = 0\n", "[timing].rounds"),
    ("[timing]\nwarmup_ms = 0\n", "[timing].warmup_ms"),
    ("[timing]\nrep_ms = -100\n", "[timing].rep_ms"),
    ("[timing]\nrotate_mib = 0\n", "[timing].rotate_mib"),
    ("[timing]\nsearch_rounds = 0\n", "[timing].search_rounds"),
    ("[timing]\nsearch_rep_ms = 0\n", "[timing].search_rep_ms"),
    ("[evaluator]\ncompile_ahead = -1\n", "[evaluator].compile_ahead"),
    ("[evaluator]\nsearch_candidate_s = -5\n", "[evaluator].search_candidate_s"),
    ("[timing]\nfloor_slack = 0\n", "[timing].floor_slack"),
    ("[promotion]\nmargin = -0.01\n", "[promotion].margin"),
    ("[promotion]\nmargin = nan\n", "[promotion].margin"),
    ("[promotion]\nab_rounds = 1\n", "[promotion].ab_rounds"),
])
def test_nonsensical_numbers_are_refused_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    from agents.config import ConfigError, load_config

    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert key in str(info.value)


def test_a_search_times_its_candidates_briefly_and_its_promotion_in_full(tmp_path: Path) -> None:
    from agents.app.runner import evaluator_settings
    from agents.config import load_config

    config = tmp_path / "config.toml"
    config.write_text("[timing]\nrounds = 6\nrep_ms = 80\nsearch_rounds = 2\nsearch_warmup_ms = 4\nsearch_rep_ms = 30\n")
    loaded = load_config(config)
    search = evaluator_settings(loaded, "cuda", search=True)
    assert (search.timing.rounds, search.timing.warmup_ms, search.timing.rep_ms) == (2, 4, 30)
    assert (search.promotion_timing.rounds, search.promotion_timing.rep_ms) == (6, 80)
    # eval and bench: the full timing, and promotion's is the same
    other = evaluator_settings(loaded, "cuda")
    assert (other.timing.rounds, other.timing.rep_ms) == (6, 80) and other.promotion_timing is None
    assert search.compile_ahead == 2
    # only a search on a GPU limits a candidate's sandbox time; eval, bench and the interpreter do not
    assert search.candidate_seconds == 180 and other.candidate_seconds is None
    assert evaluator_settings(loaded, "cpu", search=True).candidate_seconds is None
    config.write_text("[evaluator]\nsearch_candidate_s = 0\n")
    assert evaluator_settings(load_config(config), "cuda", search=True).candidate_seconds is None


def test_a_nonsensical_number_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[evaluator]\nload_timeout_s = 0\n")
    assert_usage_error(evolve(config, "runs"), "[evaluator].load_timeout_s")


# ----------------------------------------------------------------------------- --ops and candidate files

@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize("ops,needle", [
    (",", "names no op"),
    ("", "names no op"),
    ("layer_norm,,attention", "empty op name"),
    ("layer_norm, attention ,layer_norm", "more than once"),
])
def test_malformed_ops_lists_are_usage_errors(config_file: Path, tmp_path: Path, command: str, ops: str,
                                              needle: str) -> None:
    assert_usage_error(evolve(config_file, command, "nanogpt", "--ops", ops, "--device", "cpu"), needle)
    assert not (tmp_path / "runs").exists() or not any(p.is_dir() for p in (tmp_path / "runs").iterdir())


def test_a_candidate_that_is_not_utf8_is_a_usage_error(config_file: Path, tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.py"
    candidate.write_bytes(render(tmp_path).read_bytes() + "# café\n".encode("latin-1"))
    assert_usage_error(evolve(config_file, "eval", "layer_norm", str(candidate)), "not UTF-8")


# ----------------------------------------------------------------------------- rich markup in candidate text

def raising_candidate(tmp_path: Path) -> Path:
    """tests/cheats/raises.py with an exception message full of markup."""
    source = (PROJECT_ROOT / "tests" / "cheats" / "raises.py").read_text()
    start = source.index("raise RuntimeError(")
    end = source.index("\n", start)
    path = tmp_path / "markup.py"
    path.write_text(source[:start] + f"raise RuntimeError({MARKUP!r})" + source[end:])
    return path


def test_eval_prints_markup_in_a_failure_literally(config_file: Path, tmp_path: Path) -> None:
    proc = evolve(config_file, "eval", "layer_norm", str(raising_candidate(tmp_path)), "--device", "cpu",
                  timeout=300)
    assert proc.returncode == 1, describe(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, describe(proc)
    assert MARKUP in proc.stdout, describe(proc)


def _console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=400, color_system=None, force_terminal=False), out


def test_printing_a_verdict_never_reads_its_detail_as_markup() -> None:
    from agents.app.cli import print_verdict
    from evaluators.verdict import Verdict

    out, text = _console()
    print_verdict(out, "layer_norm", Path("/tmp/[red]x[/].py"), Verdict.failed("layer_norm", "exception", MARKUP))
    assert f"failed layer_norm /tmp/[red]x[/].py: exception: {MARKUP}" in text.getvalue()


def test_the_run_display_and_report_print_markup_literally(tmp_path: Path) -> None:
    from agents.app.report import print_run
    from agents.run_folder import RunFolder
    from agents.app.runner import RunDisplay
    from evaluators.verdict import Verdict

    out, text = _console()
    verdict = Verdict.failed("layer_norm", "exception", MARKUP).to_dict()
    with RunDisplay(out) as display:
        display("plan", {"op": "layer_norm", "budget": 2, "rules": [{"id": "[/]rule"}], "planner": "llm",
                         "strategy": MARKUP})
        display("candidate", {"id": "c001", "origin": "[/]"})
        display("progress", {"message": ["phase", "[/]"]})
        display("verdict", {**verdict, "id": "c001"})
        display("lesson", {"rule": "[/]", "verdict": "refuted", "effect": MARKUP})
        display("promotion", {"op": "layer_norm", "promoted": False, "reason": MARKUP})
        display("llm", {"outcome": "error", "purpose": "coder", "op": "layer_norm", "error": MARKUP})
        display("reflection", {"op": "layer_norm", "rule": "[/]", "confidence": 0.2, "statement": MARKUP})
        display("reflection", {"op": "layer_norm", "error": MARKUP})
    printed = text.getvalue()
    assert printed.count(MARKUP) == 7 and "[/]rule" in printed, printed

    folder = RunFolder.create(tmp_path / "runs", "nanogpt", "", {"name": "[/]gpu", "arch": "interpreter"},
                              ["layer_norm"])
    o = folder.summary["ops"]["layer_norm"]
    o["failures"] = {"exception": 1}
    o["promotion"] = MARKUP
    o["lessons"] = [{"rule": "[/]", "verdict": "refuted", "effect": MARKUP}]
    o["reflections"] = [{"rule": "[/]", "confidence": 0.2, "statement": MARKUP}]
    folder.write_summary()
    out, text = _console()
    print_run(out, RunFolder.open(tmp_path / "runs", folder.run_id))
    assert text.getvalue().count(MARKUP) == 3 and "[/]gpu" in text.getvalue(), text.getvalue()


def test_the_bench_table_prints_markup_literally() -> None:
    from agents.app.bench import BenchRow, bench_table
    from evaluators.verdict import Verdict

    rows = [BenchRow("layer_norm", "promoted /m/[/]k.py", Verdict.failed("layer_norm", "exception", "[/] x"))]
    for device in ({"name": "[/]cpu", "arch": "interpreter"}, {"name": "[/]gpu", "arch": "sm_90"}):
        out, text = _console()
        out.print(bench_table(rows, device))
        assert "exception: [/] x" in text.getvalue() and device["name"] in text.getvalue(), text.getvalue()


# ----------------------------------------------------------------------------- SIGTERM

def _children(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for listing in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = {int(k) for k in listing.read_text().split()}
            except (OSError, ValueError):
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def _cmdline(pid: int) -> str | None:
    """The command line of a live (not zombie) process, else None."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "?")
    return None if state == "Z" else cmdline


def _terminate_when(proc: subprocess.Popen, ready, timeout: float = 240) -> dict[int, str]:
    """Wait for `ready()` (while noting every descendant seen), send SIGTERM, return the descendants."""
    seen: dict[int, str] = {}
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never got to the point of interrupting it"
        for pid in _children(proc.pid):
            seen.setdefault(pid, _cmdline(pid) or "")
        time.sleep(0.2)
    for pid in _children(proc.pid):
        seen.setdefault(pid, _cmdline(pid) or "")
    proc.send_signal(signal.SIGTERM)
    return seen


def _assert_nothing_left(proc: subprocess.Popen, seen: dict[int, str], tmp_path: Path) -> None:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    assert "Traceback" not in out + err, f"{out[-3000:]}\n{err[-3000:]}"
    time.sleep(5)
    left = {pid: cmd for pid, cmd in seen.items() if _cmdline(pid) is not None and _cmdline(pid) == cmd}
    assert not left, f"processes left behind: {left}"
    mentions = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                if str(tmp_path) in (_cmdline(pid) or "") and pid != os.getpid()]
    assert not mentions, f"processes still naming {tmp_path}: {[_cmdline(p) for p in mentions]}"


def _start(config: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("EVOLVE_CONFIG", None)
    return subprocess.Popen([*EVOLVE, "--config", str(config), *args], cwd=PROJECT_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_sigterm_interrupts_a_run_cleanly(config_file: Path, tmp_path: Path) -> None:
    proc = _start(config_file, "run", "nanogpt", "--ops", "layer_norm", "--budget", "50", "--device", "cpu")
    runs = tmp_path / "runs"

    def a_verdict_is_logged() -> bool:
        for log in runs.glob("*/events.jsonl") if runs.is_dir() else []:
            for line in log.read_text().splitlines():
                try:
                    if json.loads(line).get("kind") == "verdict":
                        return True
                except json.JSONDecodeError:
                    pass  # a line being written
        return False

    seen = _terminate_when(proc, a_verdict_is_logged)
    assert seen, "the run started no worker process"
    _assert_nothing_left(proc, seen, tmp_path)
    (summary,) = runs.glob("*/summary.json")
    assert json.loads(summary.read_text())["status"] == "interrupted"


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_sigterm_interrupts_eval_and_bench_cleanly(config_file: Path, tmp_path: Path, command: str) -> None:
    hanging = PROJECT_ROOT / "tests" / "cheats" / "hangs.py"
    args = ["eval", "layer_norm", str(hanging)] if command == "eval" else ["bench", "nanogpt", "--ops", "layer_norm"]
    proc = _start(config_file, *args, "--device", "cpu")
    started = []

    def a_worker_runs_for_a_while() -> bool:
        if _children(proc.pid) and not started:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] > 3

    seen = _terminate_when(proc, a_worker_runs_for_a_while)
    _assert_nothing_left(proc, seen, tmp_path)


def test_an_interrupted_bench_reports_the_ops_it_measured(config_file: Path, tmp_path: Path) -> None:
    # a bench stopped by a time limit (SIGTERM) must not lose the ops already measured
    err_path = tmp_path / "bench.err"
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("EVOLVE_CONFIG", None)
    with err_path.open("w") as err:
        proc = subprocess.Popen([*EVOLVE, "--config", str(config_file), "bench", "nanogpt", "--ops",
                                 "layer_norm,bias_gelu", "--json", "--device", "cpu"], cwd=PROJECT_ROOT, env=env,
                                text=True, stdout=subprocess.PIPE, stderr=err)
        # one worker: layer_norm's verdict is printed, bias_gelu's judging has begun
        seen = _terminate_when(proc, lambda: "layer_norm: accepted" in err_path.read_text())
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, err_path.read_text()[-3000:]
    data = json.loads(out)
    assert data["interrupted"] is True
    assert [row["op"] for row in data["rows"]] == ["layer_norm"]
    assert data["rows"][0]["verdict"]["status"] == "accepted"
    assert "judged in" in err_path.read_text()
    time.sleep(5)
    left = {pid: cmd for pid, cmd in seen.items() if _cmdline(pid) is not None and _cmdline(pid) == cmd}
    assert not left, f"processes left behind: {left}"
