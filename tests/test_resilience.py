"""A run survives its candidates: hangs and crashes are classified, workers replaced, nothing lost."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

import agents.search.graph
from agents.search.coder import Proposal
from agents.config import load_config
from agents.app.runner import run_target
from kernels import get_spec

CHEATS = Path(__file__).parent / "cheats"


class MixedCoder:
    """Two of every six candidates hang or crash the worker; the rest are honest template points."""

    def __init__(self, spec, plan, explore, rng, training=True):
        space = get_spec("layer_norm").template
        honest = [space.validate(p) for p in ({}, {"ROWS_PER_PROGRAM": 2}, {"ROWS_PER_PROGRAM": 4},
                                               {"NUM_WARPS": 2})]
        self.queue = [
            Proposal((CHEATS / "hangs.py").read_text(), "planted-hang", None),
            Proposal(space.render(honest[0]), "seed", honest[0]),
            Proposal((CHEATS / "segfaults.py").read_text(), "planted-crash", None),
            *[Proposal(space.render(p), "mutation", p) for p in honest[1:]],
        ]

    def propose(self, history, remaining):
        return self.queue.pop(0) if self.queue else None


@pytest.mark.slow
def test_a_third_of_candidates_hanging_or_crashing_loses_nothing(config_file, monkeypatch):
    config_file.write_text(config_file.read_text() + "compile_timeout_s = 8\ncheck_timeout_s = 60\n")
    monkeypatch.setattr(agents.search.graph, "TemplateCoder", MixedCoder)
    config = load_config(config_file).with_run(device="cpu", budget=6)
    folder = run_target(config, "nanogpt", "layer_norm", True, Console(file=io.StringIO()))

    summary = json.loads((folder.path / "summary.json").read_text())
    op = summary["ops"]["layer_norm"]
    assert summary["status"] == "complete"
    assert op["candidates"] == 6 and op["accepted"] == 4
    assert op["failures"] == {"timeout": 1, "crash": 1}
    assert op["best"] is not None and op["promoted"]
    verdicts = [e for e in folder.events() if e["kind"] == "verdict"]
    assert [v["status"] for v in verdicts] == ["failed", "accepted", "failed", "accepted", "accepted", "accepted"]
    assert sorted(p.name for p in (folder.path / "candidates" / "layer_norm").iterdir()) == \
        [f"c00{i}.py" for i in range(1, 7)]
