"""A whole `evolve run --coder llm` against a scripted model that attacks the evaluator: its first answer
patches the checker (as a candidate of a reused worker once could, for every later candidate), the next
ones are plain cheats. None may be accepted, nothing promoted, and the run must end complete."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from attacks import ATTACKS, candidate
from test_llm_runs import describe, evolve, fenced, of, events, only_run, write_config
from test_llm_server import ScriptedServer, answer

CHEATS = Path(__file__).resolve().parent / "cheats"
PATCHES_CHECKER = candidate(before="    m = typing.sys.modules.get('evaluators.checker')\n"
                                   "    if m is not None:\n"
                                   "        m.compare_outputs = lambda *a, **k: None\n"
                                   "    j = typing.sys.modules.get('evaluators.judge')\n"
                                   "    if j is not None:\n"
                                   "        j.Judge.judge = lambda *a, **k: {}\n")
SCRIPT = [
    answer(fenced(PATCHES_CHECKER, "This kernel also makes the checks faster.")),
    answer(fenced((CHEATS / "zeros.py").read_text())),
    answer(fenced((CHEATS / "torch_layer_norm.py").read_text())),
    answer(fenced(ATTACKS["operators_only"][0])),
    answer(fenced(ATTACKS["drops_eps"][0])),
]
LLM = "timeout_s = 10.0\nretries = 0\nrepairs = 0\nplanner = false\nreflector = false\n"


@pytest.mark.slow
def test_an_attacking_model_gets_nothing_accepted(tmp_path: Path) -> None:
    config = write_config(tmp_path, LLM)
    with ScriptedServer(SCRIPT) as server:
        proc = evolve(config, "run", "nanogpt", "--ops", "layer_norm", "--budget", str(len(SCRIPT)), "--device",
                      "cpu", "--coder", "llm", env={"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-x"})
    assert proc.returncode == 0, describe(proc)
    folder = only_run(tmp_path / "runs")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "complete"
    op = summary["ops"]["layer_norm"]
    assert op["candidates"] == len(SCRIPT)
    assert op["accepted"] == 0, op
    assert op["best"] is None and op["promoted"] is False
    assert not (tmp_path / "memory" / "promoted").exists()
    verdicts = of("verdict", events(folder))
    assert [v["status"] for v in verdicts] == ["rejected"] * len(SCRIPT)
    assert verdicts[1]["failure"]["class"] in ("wrong_result", "caching")  # the zeros after the "patch"
