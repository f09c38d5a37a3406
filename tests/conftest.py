"""Shared fixtures. Tests run on the CPU through Triton's interpreter unless a CUDA GPU is present;
tests marked `gpu` are skipped without one."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    # must be set before triton is first imported, in this process and the workers it starts
    os.environ["TRITON_INTERPRET"] = "1"

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EVOLVE = [sys.executable, "-m", "agents.app.cli"]


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def device() -> str:
    return "cuda" if HAS_GPU else "cpu"


@pytest.fixture
def memory_root(tmp_path: Path) -> Path:
    """A fresh memory folder holding only the shipped seed lessons."""
    root = tmp_path / "memory"
    (root / "lessons").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "memory" / "lessons" / "seed.toml", root / "lessons" / "seed.toml")
    return root


@pytest.fixture
def config_file(tmp_path: Path, memory_root: Path) -> Path:
    """A config.toml whose runs and memory live in the test's temporary folder."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[model]\nassemble = false\n[run]\nruns_dir = "runs"\nmemory_dir = "memory"\nbudget = 3\ndevice = "auto"\ncoder = "template"\ntraining = false\n'
        '[evaluator]\nceilings_cache = "runs/ceilings.json"\n'
    )
    return path


def render(tmp_path: Path, op: str = "layer_norm", name: str = "candidate.py", **params) -> Path:
    """Write the op's template rendered at the seed point (with `params` overriding knobs)."""
    from kernels import get_spec

    space = get_spec(op).template
    path = tmp_path / name
    path.write_text(space.render(space.validate(params)))
    return path


@pytest.fixture(scope="module")
def cpu_evaluator():
    """One CPU evaluator (one fork server) per test module."""
    from evaluators import Evaluator, EvaluatorSettings

    with Evaluator(EvaluatorSettings(device="cpu")) as ev:
        yield ev


@pytest.fixture(scope="module")
def cpu_unguarded():
    """The same with the static policy skipped: the layers behind it are tested alone."""
    from evaluators import Evaluator, EvaluatorSettings

    with Evaluator(EvaluatorSettings(device="cpu"), skip_static=True) as ev:
        yield ev
