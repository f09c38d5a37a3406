"""`evolve run --coder llm|mixed` end to end: a scripted OpenAI-compatible server on loopback, the real
openai client in a real `python -m agents.app.cli run` subprocess (OPENAI_BASE_URL pointing at the server, as
a user would), then the run folder: exchanges, ledger, failure classes, and a replay without a server.

Run A (--coder llm, budget 4) meets: broken code then its repair, HTTP 500 then prose with no
code, a slow answer past the timeout then (retried) good code, and the reflector's lesson. Run B
(--coder mixed) meets: several files, a timeout with no retries left, a forbidden
import, then the token budget spent, so the template coder takes the last slot."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT
from test_llm_server import ScriptedServer, answer, error

EVOLVE = [sys.executable, "-m", "agents.app.cli"]
RUN_TIMEOUT = 300
SECRET = "sk-test-not-a-real-key-4242"


def template_source(**params) -> str:
    from kernels import get_spec

    space = get_spec("layer_norm").template
    return space.render(space.validate(params))


def fenced(source: str, prose: str = "Here is the kernel.") -> str:
    return f"{prose}\n\n```python\n{source}```\n"


GOOD = template_source()
GOOD_ROWS2 = template_source(ROWS_PER_PROGRAM=2)
BROKEN = GOOD.replace("def layer_norm(x, weight, bias, eps):", "def layer_norm(x, weight, bias, eps)")
FORBIDDEN = "import os\n" + template_source(NUM_WARPS=2)
LESSONS = json.dumps({"lessons": [
    {"name": "one tile suffices", "statement": "c002 and c004 (one masked tile) were correct at every width",
     "when": {"row_wise": True}, "suggests": {"SINGLE_TILE": True}},
    {"name": "bad knob", "statement": "not a knob", "when": {}, "suggests": {"BLOCK_Q": 3}},
]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(root: Path, llm: str) -> Path:
    (root / "memory" / "lessons").mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "memory" / "lessons" / "seed.toml", root / "memory" / "lessons" / "seed.toml")
    path = root / "config.toml"
    path.write_text('[model]\nassemble = false\n[run]\nruns_dir = "runs"\nmemory_dir = "memory"\nbudget = 3\ndevice = "auto"\ntraining = false\n'
                    '[evaluator]\nceilings_cache = "runs/ceilings.json"\n[llm]\nmodel = "test-model"\n' + llm)
    return path


def evolve(config: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_") and k != "EVOLVE_CONFIG"}
    full.update({"COLUMNS": "200", **env})
    return subprocess.run([*EVOLVE, "--config", str(config), *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, env=full)


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-5000:]}\n--- stderr\n{proc.stderr[-5000:]}"


def only_run(runs: Path, before: set[Path] = frozenset()) -> Path:
    new = [p for p in sorted(runs.iterdir()) if p.is_dir() and p not in before] if runs.is_dir() else []
    assert len(new) == 1, new
    return new[0]


def events(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines() if line.strip()]


def of(kind: str, evs: list[dict]) -> list[dict]:
    return [e for e in evs if e["kind"] == kind]


def assert_one_line_usage_error(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 2, describe(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), describe(proc)


# ============================================================================ run A: llm coder

LLM_A = "timeout_s = 2.0\nretries = 2\nprice_in_per_1k = 0.5\nprice_out_per_1k = 1.5\nrepairs = 2\n"
SCRIPT_A = [
    answer(fenced(BROKEN), 1000, 800),                    # c001: does not parse
    answer(fenced(GOOD, "Fixed the signature."), 1200, 700),  # c002: its repair
    error(500),                                           # c003: a server error, retried by the client...
    answer("I would rather not write a kernel today.", 300, 20),  # ...then prose: no code
    answer(fenced(GOOD_ROWS2), 10, 10, delay_s=6.0),      # c004 (repair of c003): too slow, retried...
    answer(fenced(GOOD_ROWS2), 1100, 600),                # ...and answered
    answer(LESSONS, 500, 200),                            # reflector
]
# what the ledger must hold: usage of the answers that arrived (the late one never did)
TOKENS_A = {"prompt": 1000 + 1200 + 300 + 1100 + 500, "completion": 800 + 700 + 20 + 600 + 200}


class RunA:
    def __init__(self, root: Path):
        self.root = root
        self.config = write_config(root, LLM_A)
        self.runs = root / "runs"


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    ws = RunA(tmp_path_factory.mktemp("llm-a"))
    with ScriptedServer(SCRIPT_A) as server:
        proc = evolve(ws.config, "run", "nanogpt", "--ops", "layer_norm", "--budget", "4", "--device", "cpu",
                      "--coder", "llm", env={"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": SECRET})
        ws.proc, ws.server = proc, server
    ws.folder = only_run(ws.runs)
    return ws


@pytest.fixture(scope="module")
def replay_a(run_a):
    before = set(run_a.runs.iterdir())
    dead = f"http://127.0.0.1:{free_port()}/v1"   # nothing listens: a replay must not need the server
    proc = evolve(run_a.config, "run", "nanogpt", "--device", "cpu", "--llm-replay", run_a.folder.name,
                  env={"OPENAI_BASE_URL": dead})
    return proc, only_run(run_a.runs, before)


@pytest.mark.slow
def test_run_a_completes(run_a):
    assert run_a.proc.returncode == 0, describe(run_a.proc)
    summary = json.loads((run_a.folder / "summary.json").read_text())
    assert summary["status"] == "complete"
    op = summary["ops"]["layer_norm"]
    assert op["candidates"] == 4 and op["accepted"] == 2
    assert op["failures"] == {"syntax_error": 1, "no_code": 1}
    assert op["best"]["origin"] == "llm-repair"


@pytest.mark.slow
def test_run_a_talks_to_the_server_with_the_key(run_a):
    chats = run_a.server.chats
    assert len(chats) == len(SCRIPT_A), "every scripted step was used: the 500 and the timeout were retried"
    for chat in chats:
        headers = {k.lower(): v for k, v in chat["headers"].items()}
        assert headers["authorization"] == f"Bearer {SECRET}"
        assert chat["body"]["model"] == "test-model"


@pytest.mark.slow
def test_run_a_candidates_and_repairs(run_a):
    evs = events(run_a.folder)
    candidates = of("candidate", evs)
    assert [c["origin"] for c in candidates] == ["llm", "llm-repair", "llm", "llm-repair"]
    assert candidates[1]["parents"] == ["c001"] and candidates[3]["parents"] == ["c003"]
    files = run_a.folder / "candidates" / "layer_norm"
    assert (files / "c001.py").read_text() == BROKEN
    assert (files / "c002.py").read_text() == GOOD
    assert not (files / "c003.py").exists(), "an answer without code is no candidate file"
    assert (files / "c004.py").read_text() == GOOD_ROWS2
    verdicts = {v["id"]: v for v in of("verdict", evs)}
    assert verdicts["c001"]["failure"]["class"] == "syntax_error"
    assert verdicts["c003"]["status"] == "rejected" and verdicts["c003"]["failure"]["class"] == "no_code"
    assert verdicts["c002"]["status"] == verdicts["c004"]["status"] == "accepted"
    # the repair prompt carried the evaluator's class and message, and the broken source
    repair = json.loads((run_a.folder / candidates[1]["exchange"]).read_text())
    last = repair["request"]["messages"][-1]["content"]
    assert "syntax_error" in last and verdicts["c001"]["failure"]["detail"] in last
    assert "def layer_norm(x, weight, bias, eps)\n" in last


@pytest.mark.slow
def test_run_a_prompt_holds_the_contract(run_a):
    first = json.loads((run_a.folder / "llm" / "0001-coder.json").read_text())
    system, task = (m["content"] for m in first["request"]["messages"])
    assert "triton.language" in system and "one fenced code block" in system.lower()
    assert "layer_norm(x: [M, N], weight: [N], bias: [N], eps: float)" in task
    assert "width-1025" in task and "float16: atol 0.01" in task
    assert "def _reference(x, weight, bias, eps)" in task                # the reference's source
    assert "rowwise.pow2-masking" in task and "confidence 0.90" in task  # lessons, with confidence...
    assert "RTX 5070" in task                                            # ...and where they were learned
    # a later prompt shows the best so far with its numbers
    later = json.loads((run_a.folder / "llm" / "0003-coder.json").read_text())
    assert "c002 of this run" in later["request"]["messages"][1]["content"]
    assert "speed not measured" in later["request"]["messages"][1]["content"]


@pytest.mark.slow
def test_run_a_planner_and_reflector(run_a):
    evs = events(run_a.folder)
    plan = of("plan", evs)[0]
    # one op: nothing for the LLM planner to choose, so the model is not asked and the rules plan
    assert plan["planner"] == "rules" and not plan.get("fallback")
    assert plan["suggestions"] == {"SINGLE_TILE": True, "PERSISTENT": True}
    reflections = of("reflection", evs)
    learned = [r for r in reflections if "rule" in r]
    assert [r["rule"] for r in learned] == ["learned.layer_norm.one-tile-suffices"]
    assert any("BLOCK_Q" in r.get("error", "") for r in reflections), "the bad lesson was refused"
    path = Path(learned[0]["path"])
    assert path.parent == run_a.root / "memory" / "learned"
    rule = tomllib.loads(path.read_text())["rule"][0]
    assert rule["confidence"] == 0.2 and rule["kind"] == "rule" and rule["learned_on"] == "interpreter"
    assert rule["suggests"] == {"SINGLE_TILE": True} and run_a.folder.name in rule["origin"]
    assert "evidence" not in rule, "a new lesson has no evidence until a later run measures it"


@pytest.mark.slow
def test_run_a_ledger(run_a):
    evs = events(run_a.folder)
    calls = [e for e in of("llm", evs) if e["outcome"] in ("ok", "error")]
    assert [c["purpose"] for c in calls] == ["coder", "coder-repair", "coder", "coder-repair", "reflector"]
    assert all(c["outcome"] == "ok" for c in calls)
    assert sum(c["prompt_tokens"] for c in calls) == TOKENS_A["prompt"]
    cost = TOKENS_A["prompt"] / 1000 * 0.5 + TOKENS_A["completion"] / 1000 * 1.5
    assert sum(c["cost"] for c in calls) == pytest.approx(cost)
    summary = json.loads((run_a.folder / "summary.json").read_text())
    llm = summary["llm"]
    assert llm["calls"] == 5 and llm["failed_calls"] == 0
    assert llm["prompt_tokens"] == TOKENS_A["prompt"] and llm["completion_tokens"] == TOKENS_A["completion"]
    assert llm["cost"] == pytest.approx(cost)
    op = summary["ops"]["layer_norm"]["llm"]
    assert op == {k: llm[k] for k in op}, "every call of this run was about layer_norm"
    report = evolve(run_a.config, "report", run_a.folder.name, env={})
    assert report.returncode == 0, describe(report)
    assert f"{TOKENS_A['prompt']:,} prompt" in report.stdout and f"cost {cost:.4f}" in report.stdout
    assert "no_code 1" in report.stdout


@pytest.mark.slow
def test_run_a_records_every_exchange_without_the_key(run_a):
    files = sorted((run_a.folder / "llm").glob("0*.json"))
    assert [f.name for f in files] == ["0001-coder.json", "0002-coder-repair.json", "0003-coder.json",
                                       "0004-coder-repair.json", "0005-reflector.json"]
    assert json.loads(files[2].read_text())["response"]["content"] == SCRIPT_A[3].content
    for path in run_a.folder.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    meta = json.loads((run_a.folder / "llm" / "run.json").read_text())
    assert meta["coder"] == "llm" and meta["budget"] == 4 and meta["ops"] == ["layer_norm"]


@pytest.mark.slow
def test_replay_reproduces_run_a(run_a, replay_a):
    proc, folder = replay_a
    assert proc.returncode == 0, describe(proc)
    original, again = run_a.folder / "candidates" / "layer_norm", folder / "candidates" / "layer_norm"
    assert sorted(p.name for p in again.iterdir()) == sorted(p.name for p in original.iterdir())
    for path in original.iterdir():
        assert (again / path.name).read_text() == path.read_text(), path.name
    keep = ("id", "status")
    first = [({k: v[k] for k in keep}, (v["failure"] or {}).get("class")) for v in of("verdict", events(run_a.folder))]
    second = [({k: v[k] for k in keep}, (v["failure"] or {}).get("class")) for v in of("verdict", events(folder))]
    assert first == second
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["llm"]["replay_of"] == run_a.folder.name
    assert summary["llm"]["prompt_tokens"] == TOKENS_A["prompt"]
    assert summary["ops"]["layer_norm"]["promoted"] is False, "a replay writes nothing to memory"
    # the replay records its own exchanges: the same answers
    for a, b in zip(sorted((run_a.folder / "llm").glob("0*.json")), sorted((folder / "llm").glob("0*.json"))):
        assert json.loads(a.read_text())["response"] == json.loads(b.read_text())["response"]


@pytest.mark.slow
def test_replay_refuses_other_settings(run_a):
    proc = evolve(run_a.config, "run", "nanogpt", "--device", "cpu", "--budget", "7", "--llm-replay",
                  run_a.folder.name, env={})
    assert_one_line_usage_error(proc)
    assert "budget" in proc.stderr


# ============================================================================ run B: mixed, failures, budget

LLM_B = ("timeout_s = 1.0\nretries = 0\nrepairs = 0\nmixed_share = 0.8\nrun_token_budget = 2500\n"
         "give_up_after = 5\n")
TWO_FILES = ("Two files:\n```python\n" + GOOD + "```\nand a helper:\n```python\nimport math\nX = 1\n```\n")
SCRIPT_B = [
    answer(TWO_FILES, 900, 100),                                          # c002: several files
    answer(fenced(GOOD), 5, 5, delay_s=4.0),                              # c003: past the timeout, no retry
    answer(fenced(FORBIDDEN), 1300, 200),                                 # c004: forbidden import
]


@pytest.fixture(scope="module")
def run_b(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-b")
    config = write_config(root, LLM_B)
    with ScriptedServer(SCRIPT_B, default=answer(fenced(GOOD), 1, 1)) as server:
        proc = evolve(config, "run", "nanogpt", "--ops", "layer_norm", "--budget", "5", "--device", "cpu",
                      "--coder", "mixed", env={"OPENAI_BASE_URL": server.base_url})
        chats = len(server.chats)
    return proc, only_run(root / "runs"), chats


@pytest.mark.slow
def test_run_b_survives_every_failure(run_b):
    proc, folder, chats = run_b
    assert proc.returncode == 0, describe(proc)
    assert chats == len(SCRIPT_B), "the model was asked again after its budget was spent"
    summary = json.loads((folder / "summary.json").read_text())
    op = summary["ops"]["layer_norm"]
    assert summary["status"] == "complete" and op["candidates"] == 5
    assert op["failures"] == {"several_files": 1, "llm_error": 1, "static": 1}
    assert op["accepted"] == 2
    evs = events(folder)
    origins = [c["origin"] for c in of("candidate", evs)]
    # mixed at 0.8: the template opens, the model takes the next four slots until its budget is spent
    assert origins[0] == "rules" and origins[1:4] == ["llm", "llm", "llm"]
    assert origins[4] not in ("llm", "llm-repair")
    verdict = {v["id"]: v for v in of("verdict", evs)}
    assert "import" in verdict["c004"]["failure"]["detail"]
    assert "timeout" in verdict["c003"]["failure"]["detail"]


@pytest.mark.slow
def test_run_b_budget_stops_the_model(run_b):
    _, folder, _ = run_b
    evs = events(folder)
    plan = of("plan", evs)[0]
    assert plan["planner"] == "rules"
    assert {r["id"] for r in plan["rules"]} == {"rowwise.pow2-masking", "rowwise.persistent-grid"}
    outcomes = [e["outcome"] for e in of("llm", evs)]
    assert outcomes == ["ok", "error", "ok", "budget_spent", "fallback"]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["llm"]["budget_spent"].startswith("token budget spent")
    assert summary["llm"]["tokens"] == 2500 and summary["llm"]["failed_calls"] == 1
    assert not of("reflection", evs), "the reflector was asked after the budget was spent"
    assert "tokens" in json.loads((folder / "summary.json").read_text())["ops"]["layer_norm"]["llm"]


# ============================================================================ before the run starts

def test_unreachable_server_is_one_line_exit_2(tmp_path):
    config = write_config(tmp_path, "")
    proc = evolve(config, "run", "nanogpt", "--ops", "layer_norm", "--budget", "2", "--device", "cpu",
                  "--coder", "llm", env={"OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"})
    assert_one_line_usage_error(proc)
    assert "cannot reach" in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_no_key_for_openai_is_one_line_exit_2(tmp_path):
    config = write_config(tmp_path, 'base_url = "https://api.openai.com/v1"\napi_key_env = "EVOLVE_TEST_KEY"\n')
    proc = evolve(config, "run", "nanogpt", "--budget", "2", "--device", "cpu", "--coder", "llm", env={})
    assert_one_line_usage_error(proc)
    assert "EVOLVE_TEST_KEY" in proc.stderr


def test_no_endpoint_at_all_is_one_line_exit_2(tmp_path):
    config = write_config(tmp_path, "")
    proc = evolve(config, "run", "nanogpt", "--budget", "2", "--device", "cpu", "--coder", "mixed", env={})
    assert_one_line_usage_error(proc)
    assert "OPENAI_BASE_URL" in proc.stderr


def test_refused_key_is_one_line_exit_2(tmp_path):
    config = write_config(tmp_path, "")
    with ScriptedServer([], api_key="the-right-key") as server:
        proc = evolve(config, "run", "nanogpt", "--budget", "2", "--device", "cpu", "--coder", "llm",
                      env={"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "a-wrong-key"})
        assert not server.chats, "no request was sent before the check"
    assert_one_line_usage_error(proc)
    assert "refused the key" in proc.stderr and "a-wrong-key" not in proc.stderr


@pytest.mark.slow
def test_unreachable_server_falls_back_to_template_when_configured(tmp_path):
    config = write_config(tmp_path, 'on_unavailable = "template"\n')
    proc = evolve(config, "run", "nanogpt", "--ops", "layer_norm", "--budget", "2", "--device", "cpu",
                  "--coder", "llm", env={"OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"})
    assert proc.returncode == 0, describe(proc)
    assert "template coder" in " ".join(proc.stdout.split())
    folder = only_run(tmp_path / "runs")
    assert [c["origin"] for c in of("candidate", events(folder))] == ["rules", "test:rowwise.persistent-grid"]
    assert "llm" not in json.loads((folder / "summary.json").read_text())
    assert not (folder / "llm").exists()
