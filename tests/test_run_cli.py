"""`evolve` end to end, in real subprocesses: a CPU run of nanogpt's layer_norm, a second run that starts
from the promoted incumbent, a --no-memory run, then `runs`, `report` and `memory` over what they left,
and the usage errors that must be one line and exit code 2.

The three runs share one temporary workspace (module scope) and build on each other, in this order."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import HAS_GPU, PROJECT_ROOT
from evaluators.static import check_candidate

EVOLVE = [sys.executable, "-m", "agents.app.cli"]
RUN_TIMEOUT = 300
CLI_TIMEOUT = 120
WIDE = {"COLUMNS": "200"}  # rich wraps and truncates at 80 columns when output is not a terminal


def evolve(config: Path, *args: str, timeout: float = CLI_TIMEOUT, env: dict | None = None
           ) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(WIDE if env is None else env)}
    full_env.pop("EVOLVE_CONFIG", None)
    return subprocess.run([*EVOLVE, "--config", str(config), *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def flat(text: str) -> str:
    """Output with rich's line wrapping undone, lower-cased."""
    return " ".join(text.split()).lower()


def run_folders(runs: Path) -> list[Path]:
    return sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []


def events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines() if line.strip()]


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def assert_usage_error(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, describe(proc)
    assert lines[0].startswith("error:"), describe(proc)


# ----------------------------------------------------------------------------- the shared workspace

class Workspace:
    def __init__(self, root: Path):
        self.root = root
        self.memory = root / "memory"
        self.runs = root / "runs"
        self.config = root / "config.toml"
        self.results: dict[str, tuple[subprocess.CompletedProcess, Path]] = {}

    @property
    def promoted(self) -> Path:
        return self.memory / "promoted" / "layer_norm" / "interpreter"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """The same layout as conftest's memory_root and config_file, shared by the runs of this module."""
    root = tmp_path_factory.mktemp("cli")
    w = Workspace(root)
    (w.memory / "lessons").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "memory" / "lessons" / "seed.toml", w.memory / "lessons" / "seed.toml")
    w.config.write_text(
        '[model]\nassemble = false\n[run]\nruns_dir = "runs"\nmemory_dir = "memory"\nbudget = 3\ndevice = "auto"\ncoder = "template"\ntraining = false\n'
        '[evaluator]\nceilings_cache = "runs/ceilings.json"\n'
    )
    return w


def _new_run(w: Workspace, name: str, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    if name not in w.results:
        before = set(run_folders(w.runs))
        proc = evolve(w.config, "run", "nanogpt", "--ops", "layer_norm", "--budget", "3", "--device", "cpu",
                      *extra, timeout=RUN_TIMEOUT)
        new = [p for p in run_folders(w.runs) if p not in before]
        assert len(new) == 1, f"expected one new run folder, got {new}\n{describe(proc)}"
        w.results[name] = (proc, new[0])
    return w.results[name]


@pytest.fixture(scope="module")
def first_run(ws):
    return _new_run(ws, "first")


@pytest.fixture(scope="module")
def second_run(ws, first_run):
    return _new_run(ws, "second")


@pytest.fixture(scope="module")
def no_memory_run(ws, second_run):
    memory_before = snapshot(ws.memory)
    proc, folder = _new_run(ws, "no-memory", "--no-memory")
    return proc, folder, memory_before


# ----------------------------------------------------------------------------- first run

@pytest.mark.slow
def test_first_run_exits_cleanly(ws, first_run):
    proc, folder = first_run
    assert proc.returncode == 0, describe(proc)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert run_folders(ws.runs) == [folder], "exactly one run folder"
    assert "speed not measured" in flat(proc.stdout)
    assert f"run folder: {folder}" in proc.stdout


@pytest.mark.slow
def test_first_run_config_is_resolved(ws, first_run):
    _, folder = first_run
    config = tomllib.loads((folder / "config.toml").read_text())
    assert config["run"]["device"] == "cpu"          # "auto" resolved
    assert config["run"]["budget"] == 3
    assert Path(config["run"]["runs_dir"]) == ws.runs
    assert Path(config["run"]["memory_dir"]) == ws.memory
    assert Path(config["run"]["runs_dir"]).is_absolute()
    assert config["run"]["coder"] == "template"
    assert {"coder", "evaluator", "timing", "promotion"} <= set(config)


@pytest.mark.slow
def test_first_run_events(first_run):
    _, folder = first_run
    evs = events(folder)
    kinds = [e["kind"] for e in evs]
    for kind in ("plan", "candidate", "verdict", "promotion", "lesson"):
        assert kind in kinds, kind
    assert "error" not in kinds
    assert all("ts" in e for e in evs)
    assert kinds[0] == "plan"
    plan = evs[0]
    assert plan["op"] == "layer_norm" and plan["budget"] == 3
    assert {r["id"] for r in plan["rules"]} == {"rowwise.pow2-masking", "rowwise.persistent-grid"}
    candidates = [e for e in evs if e["kind"] == "candidate"]
    verdicts = [e for e in evs if e["kind"] == "verdict"]
    assert [c["id"] for c in candidates] == ["c001", "c002", "c003"]
    assert [v["id"] for v in verdicts] == ["c001", "c002", "c003"]
    assert all(v["status"] == "accepted" and v["timing"] is None for v in verdicts)
    assert candidates[0]["origin"] == "rules"
    assert candidates[0]["params"]["SINGLE_TILE"] is True and candidates[0]["params"]["PERSISTENT"] is True
    # each candidate is logged before its verdict
    for c, v in zip(candidates, verdicts):
        assert evs.index(c) < evs.index(v)
    lessons = [e for e in evs if e["kind"] == "lesson"]
    assert {e["rule"] for e in lessons} == {"rowwise.pow2-masking", "rowwise.persistent-grid"}
    assert all(e["verdict"] == "inconclusive" and e["recorded"] is False for e in lessons)


@pytest.mark.slow
def test_first_run_candidates_are_self_contained(first_run):
    _, folder = first_run
    files = sorted((folder / "candidates" / "layer_norm").iterdir())
    assert [f.name for f in files] == ["c001.py", "c002.py", "c003.py"]
    sources = [f.read_text() for f in files]
    for f, source in zip(files, sources):
        violations = check_candidate(source, "layer_norm")
        assert violations == [], f"{f.name}: {[v.detail for v in violations]}"
        assert "PARAMS = {" in source
    assert len(set(sources)) == 3, "three different candidates"


@pytest.mark.slow
def test_first_run_summary(first_run):
    _, folder = first_run
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["run_id"] == folder.name
    assert summary["target"] == "nanogpt"
    assert summary["status"] == "complete"
    assert summary["finished"] is not None
    assert summary["device"]["arch"] == "interpreter"
    op = summary["ops"]["layer_norm"]
    assert op["candidates"] == 3
    assert op["accepted"] == 3
    assert op["failures"] == {}
    best = op["best"]
    assert best is not None and best["candidate"] in ("c001", "c002", "c003")
    for k in ("speedup_eager", "speedup_compile", "roofline_fraction"):
        assert k in best and best[k] is None, k
    assert op["promoted"] is True


@pytest.mark.slow
def test_first_run_promotes_into_memory(ws, first_run):
    _, folder = first_run
    kernel = ws.promoted / "kernel.py"
    assert kernel.is_file()
    meta = tomllib.loads((ws.promoted / "meta.toml").read_text())
    assert meta["op"] == "layer_norm" and meta["gpu"] == "interpreter"
    assert meta["lineage"]["run"] == folder.name
    summary = json.loads((folder / "summary.json").read_text())
    best = summary["ops"]["layer_norm"]["best"]
    assert meta["lineage"]["candidate"] == best["candidate"]
    assert kernel.read_text() == (folder / "candidates" / "layer_norm" / f"{best['candidate']}.py").read_text()
    promotions = [e for e in events(folder) if e["kind"] == "promotion"]
    assert len(promotions) == 1 and promotions[0]["promoted"] is True
    # the CPU interpreter measures no speed, so no evidence about the rules is recorded
    assert not (ws.memory / "evidence.jsonl").exists()


# ----------------------------------------------------------------------------- second run

@pytest.mark.slow
def test_second_run_starts_from_the_incumbent(ws, first_run, second_run):
    proc, folder = second_run
    assert proc.returncode == 0, describe(proc)
    assert len(run_folders(ws.runs)) == 2
    evs = events(folder)
    plan = next(e for e in evs if e["kind"] == "plan")
    assert plan["incumbent"] == str(ws.promoted / "kernel.py")
    candidates = [e for e in evs if e["kind"] == "candidate"]
    assert candidates[0]["origin"] == "incumbent"
    first_source = (folder / "candidates" / "layer_norm" / "c001.py").read_text()
    assert first_source == (ws.promoted / "kernel.py").read_text()
    # the incumbent's point is not evaluated a second time in the run
    params = [tuple(sorted(c["params"].items())) for c in candidates if c["params"] is not None]
    assert len(set(params)) == len(params)


@pytest.mark.slow
def test_second_run_does_not_promote_the_incumbent_again(ws, first_run, second_run):
    _, first_folder = first_run
    _, folder = second_run
    summary = json.loads((folder / "summary.json").read_text())
    op = summary["ops"]["layer_norm"]
    assert summary["status"] == "complete"
    assert op["promoted"] is False
    assert op["promotion"] == "the incumbent is still the best"
    assert op["best"]["origin"] == "incumbent"
    promotions = [e for e in events(folder) if e["kind"] == "promotion"]
    assert len(promotions) == 1 and promotions[0]["promoted"] is False
    meta = tomllib.loads((ws.promoted / "meta.toml").read_text())
    assert meta["lineage"]["run"] == first_folder.name, "the incumbent was replaced"
    assert not (ws.promoted / "history").exists()


# ----------------------------------------------------------------------------- --no-memory

@pytest.mark.slow
def test_no_memory_run(ws, no_memory_run):
    proc, folder, memory_before = no_memory_run
    assert proc.returncode == 0, describe(proc)
    evs = events(folder)
    plan = next(e for e in evs if e["kind"] == "plan")
    assert plan["rules"] == [] and plan["suggestions"] == {} and plan["tests"] == []
    assert plan["incumbent"] is None
    candidates = [e for e in evs if e["kind"] == "candidate"]
    assert candidates[0]["origin"] == "seed"
    assert not [e for e in evs if e["kind"] == "lesson"]
    summary = json.loads((folder / "summary.json").read_text())
    op = summary["ops"]["layer_norm"]
    assert summary["status"] == "complete" and op["accepted"] == 3
    assert op["promoted"] is False
    assert "memory" in op["promotion"]
    assert snapshot(ws.memory) == memory_before, "a --no-memory run wrote to memory"


# ----------------------------------------------------------------------------- runs, report, memory

@pytest.mark.slow
def test_runs_lists_every_run(ws, first_run, second_run, no_memory_run):
    proc = evolve(ws.config, "runs")
    assert proc.returncode == 0, describe(proc)
    for _, folder, *rest in (first_run, second_run, no_memory_run):
        assert folder.name in proc.stdout
    assert proc.stdout.count("complete") >= 3


@pytest.mark.slow
def test_report_latest_json(ws, no_memory_run):
    _, folder, _ = no_memory_run
    proc = evolve(ws.config, "report", "latest", "--json")
    assert proc.returncode == 0, describe(proc)
    assert json.loads(proc.stdout) == json.loads((folder / "summary.json").read_text())


@pytest.mark.slow
def test_report_by_id_json(ws, first_run, no_memory_run):
    _, folder = first_run
    proc = evolve(ws.config, "report", folder.name, "--json")
    assert proc.returncode == 0, describe(proc)
    assert json.loads(proc.stdout)["run_id"] == folder.name


@pytest.mark.slow
def test_report_latest_table(ws, no_memory_run):
    _, folder, _ = no_memory_run
    proc = evolve(ws.config, "report", "latest")
    assert proc.returncode == 0, describe(proc)
    assert folder.name in proc.stdout
    assert "speed not measured" in flat(proc.stdout)
    assert "layer_norm" in proc.stdout
    assert "Throughput:" in proc.stdout and "a minute" in proc.stdout and "on 1 worker;" in proc.stdout


@pytest.mark.slow
def test_report_unknown_run(ws, first_run):
    assert_usage_error(evolve(ws.config, "report", "nosuchrun"))


@pytest.mark.slow
def test_memory_list(ws, first_run):
    proc = evolve(ws.config, "memory", "list")
    assert proc.returncode == 0, describe(proc)
    assert "rowwise.pow2-masking" in proc.stdout
    assert "rowwise.persistent-grid" in proc.stdout
    # the promoted kernel of the first run is listed too
    assert "promoted layer_norm on interpreter" in flat(proc.stdout)


def test_memory_show(config_file):
    proc = evolve(config_file, "memory", "show", "rowwise.pow2-masking")
    assert proc.returncode == 0, describe(proc)
    assert "rowwise.pow2-masking" in proc.stdout
    assert "next_pow2" in proc.stdout
    assert "SINGLE_TILE" in proc.stdout


@pytest.mark.parametrize("args", [("memory", "show", "nosuch"), ("memory", "show"), ("memory", "forget")],
                         ids=["unknown-rule", "no-id", "unknown-action"])
def test_memory_usage_errors(config_file, args):
    assert_usage_error(evolve(config_file, *args))


# ----------------------------------------------------------------------------- usage errors

USAGE_ERRORS = {
    "unknown-target": ("run", "nosuchtarget"),
    "unknown-op": ("run", "nanogpt", "--ops", "nosuchop"),
    "zero-budget": ("run", "nanogpt", "--budget", "0"),
    "unknown-device": ("run", "nanogpt", "--device", "tpu"),
    "llm-coder": ("run", "nanogpt", "--coder", "llm"),
}


@pytest.mark.parametrize("args", list(USAGE_ERRORS.values()), ids=list(USAGE_ERRORS))
def test_run_usage_errors(config_file, tmp_path, args):
    proc = evolve(config_file, *args)
    assert_usage_error(proc)
    assert run_folders(tmp_path / "runs") == [], "a refused run left a run folder"


@pytest.mark.skipif(HAS_GPU, reason="needs a machine without a GPU")
def test_run_cuda_without_gpu(config_file, tmp_path):
    proc = evolve(config_file, "run", "nanogpt", "--device", "cuda")
    assert_usage_error(proc)
    assert "cuda" in proc.stderr.lower()
    assert run_folders(tmp_path / "runs") == []


def test_malformed_config_is_a_usage_error(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[run]\nbudgett = 3\n")
    proc = evolve(config, "runs")
    assert_usage_error(proc)
    assert "budgett" in proc.stderr


# ----------------------------------------------------------------------------- output details

def test_usage_error_stays_one_line_with_a_long_path(tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 3) / "workspace"
    deep.mkdir(parents=True)
    config = deep / "config.toml"
    config.write_text('[model]\nassemble = false\n[run]\nruns_dir = "runs"\nmemory_dir = "memory"\ntraining = false\n')
    assert_usage_error(evolve(config, "report", "nosuchrun", env={"COLUMNS": "80"}))


def test_usage_error_quotes_the_bad_value(config_file):
    proc = evolve(config_file, "run", "nanogpt", "--device", "tpu")
    assert_usage_error(proc)
    assert "'tpu'" in proc.stderr


def test_runs_ids_readable_at_80_columns(ws, first_run):
    proc = evolve(ws.config, "runs", env={"COLUMNS": "80"})
    assert proc.returncode == 0, describe(proc)
    assert first_run[1].name in proc.stdout


# ----------------------------------------------------------------------------- every op of the target

@pytest.mark.slow
def test_a_whole_target_run_evolves_every_op(tmp_path, config_file):
    """`evolve run nanogpt --device cpu --budget 2`: each of the six ops gets an accepted, promoted best."""
    from kernels import TARGETS

    proc = evolve(config_file, "run", "nanogpt", "--budget", "2", "--device", "cpu", timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, describe(proc)
    (folder,) = run_folders(tmp_path / "runs")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert list(summary["ops"]) == list(TARGETS["nanogpt"])
    assert set(TARGETS["nanogpt"]) == {"embedding", "layer_norm", "attention", "add_layer_norm", "bias_gelu",
                                       "cross_entropy"}
    for op, result in summary["ops"].items():
        assert result["candidates"] == 2, op
        assert result["accepted"] >= 1 and result["best"] is not None, op
        assert result["promoted"], op
        assert (tmp_path / "memory" / "promoted" / op / "interpreter" / "kernel.py").is_file(), op
        assert len(list((folder / "candidates" / op).glob("*.py"))) == 2, op
