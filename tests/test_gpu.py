"""Evaluator behaviour that needs a real GPU: timing against eager and torch.compile, bf16 at NanoGPT
shapes, the physical-floor check, and sticky CUDA errors. Skipped without a CUDA GPU."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import render
from evaluators import Evaluator, EvaluatorSettings, TimingSettings

pytestmark = pytest.mark.gpu

CHEATS = Path(__file__).parent / "cheats"


@pytest.fixture(scope="module")
def gpu_evaluator(tmp_path_factory):
    settings = EvaluatorSettings(device="cuda", timing=TimingSettings(rounds=2, warmup_ms=5, rep_ms=20),
                                 ceilings_cache=tmp_path_factory.mktemp("ceilings") / "ceilings.json")
    with Evaluator(settings) as evaluator:
        yield evaluator


def test_seed_is_checked_in_bf16_and_timed_against_both_baselines(gpu_evaluator, tmp_path):
    verdict = gpu_evaluator.evaluate("layer_norm", render(tmp_path, ROWS_PER_PROGRAM=2, NUM_WARPS=1))
    assert verdict.status == "accepted", verdict.reason()
    checked = {(c["shape"], c["dtype"]) for c in verdict.checks}
    assert ("gpt2-B8-T1024", "bfloat16") in checked and ("shakespeare-B64-T256", "bfloat16") in checked
    t = verdict.timing
    assert t["headline"] == "gpt2-B8-T1024 bfloat16"
    for key in ("candidate_ms", "eager_ms", "compile_ms", "speedup_eager", "speedup_compile", "gbps"):
        assert t[key] > 0
    assert 0 < t["roofline_fraction"] < 1.2
    assert t["copy_fraction"] is not None and t["copy_fraction"] > 0  # the same-size copy ran beside it
    assert verdict.device["arch"].startswith("sm_")


def test_replaying_cached_outputs_is_rejected_as_too_fast(gpu_evaluator):
    verdict = gpu_evaluator.evaluate("layer_norm", CHEATS / "gpu_replays_cache.py")
    assert verdict.failure_class == "too_fast", verdict.reason()


def test_illegal_address_is_classified_and_the_worker_replaced(gpu_evaluator, tmp_path):
    before = gpu_evaluator.pool.replaced
    verdict = gpu_evaluator.evaluate("layer_norm", CHEATS / "gpu_illegal_address.py")
    assert verdict.failure_class == "illegal_address", verdict.reason()
    assert gpu_evaluator.pool.replaced == before + 1
    honest = gpu_evaluator.evaluate("layer_norm", render(tmp_path))
    assert honest.status == "accepted", honest.reason()


def test_out_of_memory_is_classified_and_the_run_goes_on(gpu_evaluator, tmp_path):
    verdict = gpu_evaluator.evaluate("layer_norm", CHEATS / "out_of_memory.py")
    assert verdict.failure_class == "out_of_memory", verdict.reason()
    assert gpu_evaluator.evaluate("layer_norm", render(tmp_path)).status == "accepted"
