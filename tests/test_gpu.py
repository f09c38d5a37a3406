"""Evaluator behaviour that needs a real GPU: bf16 at NanoGPT shapes checked through the judge-owned buffers,
timing against eager and torch.compile with the judge's own cross-checks, a candidate that hides its work
from the timed stream, sticky CUDA errors and out of memory ending only their sandbox, A/B rounds and
re-timing in fresh sandboxes. Skipped without a CUDA GPU."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import render
from evaluators import Evaluator, EvaluatorSettings, TimingSettings

pytestmark = pytest.mark.gpu

CHEATS = Path(__file__).parent / "cheats"
FAST = TimingSettings(rounds=2, warmup_ms=5, rep_ms=20)


@pytest.fixture(scope="module")
def ceilings(tmp_path_factory):
    return tmp_path_factory.mktemp("ceilings") / "ceilings.json"


@pytest.fixture(scope="module")
def gpu_evaluator(ceilings):
    with Evaluator(EvaluatorSettings(device="cuda", timing=FAST, ceilings_cache=ceilings, ab_rounds=4)) as ev:
        yield ev


@pytest.fixture(scope="module")
def unguarded(ceilings):
    with Evaluator(EvaluatorSettings(device="cuda", timing=FAST, ceilings_cache=ceilings),
                   skip_static=True) as ev:
        yield ev


def test_seed_is_checked_in_bf16_and_timed_against_both_baselines(gpu_evaluator, tmp_path):
    verdict = gpu_evaluator.evaluate("layer_norm", render(tmp_path, ROWS_PER_PROGRAM=2, NUM_WARPS=1))
    assert verdict.status == "accepted", verdict.reason() + verdict.stderr
    checked = {(c["shape"], c["dtype"]) for c in verdict.checks}
    assert ("gpt2-B8-T1024", "bfloat16") in checked and ("shakespeare-B64-T256", "bfloat16") in checked
    t = verdict.timing
    assert t["headline"] == "gpt2-B8-T1024 bfloat16"
    for key in ("candidate_ms", "eager_ms", "compile_ms", "speedup_eager", "speedup_compile", "gbps"):
        assert t[key] > 0
    assert 0 < t["roofline_fraction"] < 1.2
    assert t["copy_fraction"] is not None and t["copy_fraction"] > 0  # the same-size copy ran beside it
    # the judge's own clock saw the candidate's calls, and they agree with the reported time
    head = t["shapes"][0]
    assert head["judge_clock_ms"] > 0
    assert verdict.device["arch"].startswith("sm_")
    print(f"\nsandbox: {verdict.device['sandbox']}; {verdict.seconds:.1f} s for the candidate; reported "
          f"{head['candidate_ms'] * 1e3:.1f} us, judge's clock {head['judge_clock_ms'] * 1e3:.1f} us a call")


def test_work_hidden_from_the_timed_stream_gains_nothing(unguarded):
    # its real work runs on a side stream the timed events do not wait for: either the judge's clock
    # sees the difference, or the contention it causes leaves it slower than eager anyway (an H200 run:
    # 0.40x eager, accepted as slow)
    verdict = unguarded.evaluate("layer_norm", CHEATS / "gpu_hides_work_on_a_stream.py")
    assert verdict.failure_class == "too_fast" or (
        verdict.accepted and verdict.timing["speedup_eager"] < 1.0), verdict.reason() + verdict.stderr
    print(f"\n{verdict.reason()}")


def test_replaying_cached_outputs_is_refused(gpu_evaluator, unguarded):
    assert gpu_evaluator.evaluate("layer_norm", CHEATS / "gpu_replays_cache.py").failure_class == "static"
    verdict = unguarded.evaluate("layer_norm", CHEATS / "gpu_replays_cache.py")
    # behind the policy: its cache by address meets a buffer refilled in place, or the physical floor
    assert verdict.failure_class in ("caching", "too_fast"), verdict.reason()


def test_illegal_address_is_classified_and_the_next_candidate_runs(gpu_evaluator, tmp_path):
    verdict = gpu_evaluator.evaluate("layer_norm", CHEATS / "gpu_illegal_address.py")
    assert verdict.failure_class == "illegal_address", verdict.reason()
    honest = gpu_evaluator.evaluate("layer_norm", render(tmp_path), dtypes=("bfloat16",))
    assert honest.status == "accepted", honest.reason()


def test_out_of_memory_is_classified_and_the_run_goes_on(gpu_evaluator, tmp_path):
    verdict = gpu_evaluator.evaluate("layer_norm", CHEATS / "out_of_memory.py")
    assert verdict.failure_class == "out_of_memory", verdict.reason()
    assert gpu_evaluator.evaluate("layer_norm", render(tmp_path), dtypes=("bfloat16",)).status == "accepted"


def test_ab_rounds_and_retiming_run_in_fresh_sandboxes(gpu_evaluator, tmp_path):
    path = render(tmp_path)
    started = gpu_evaluator.sandboxes_started
    decision = gpu_evaluator.ab("layer_norm", path, path)
    assert gpu_evaluator.sandboxes_started == started + 2
    assert not decision.promote and 0.8 < decision.mean_ratio < 1.25  # a kernel against itself
    again = gpu_evaluator.retime("layer_norm", path)
    assert again.accepted, again.reason()
    assert again.timing["candidate_ms"] > 0
