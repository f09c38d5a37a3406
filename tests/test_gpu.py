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
    # a rendered template point carries its backward: the re-timing measures forward+backward too
    assert again.backward is not None and again.backward["timing"]["candidate_ms"] > again.timing["candidate_ms"]
    decision = gpu_evaluator.ab("layer_norm", path, path, backward=True)
    assert not decision.promote and 0.8 < decision.mean_ratio < 1.25


def test_backward_is_checked_in_bf16_and_timed_with_peak_memory(gpu_evaluator):
    from backward_attacks import HONEST

    verdict = gpu_evaluator.evaluate_source("layer_norm", HONEST, "planted")
    assert verdict.accepted, verdict.reason() + verdict.stderr
    checked = {(c["shape"], c["dtype"]) for c in verdict.backward["checks"]}
    assert ("gpt2-B8-T1024", "bfloat16") in checked and ("odd-rows-383", "float16") in checked
    t = verdict.backward["timing"]
    assert t["headline"] == "gpt2-B8-T1024 bfloat16"
    for key in ("candidate_ms", "eager_ms", "compile_ms", "speedup_eager", "speedup_compile", "gbps"):
        assert t[key] > 0
    # forward and backward take longer than the forward alone, and allocate at least the gradient of x
    assert t["candidate_ms"] > verdict.timing["candidate_ms"]
    assert t["peak_mib"]["candidate"] >= 8192 * 768 * 2 / 2**20
    assert verdict.backward["deterministic"] is True


@pytest.mark.parametrize("name", ["last_row_wrong", "aliases_dy", "mutates_dy"])
def test_planted_backward_is_rejected_on_the_gpu(gpu_evaluator, name):
    from backward_attacks import PLANTED

    source, expected = PLANTED[name]
    verdict = gpu_evaluator.evaluate_source("layer_norm", source, "planted")
    assert verdict.failure_class == expected, verdict.reason()


def test_torch_in_a_backward_on_autograds_device_thread_is_refused(unguarded):
    """On a GPU autograd runs a backward on a thread of its own: the guard holds there too."""
    from backward_attacks import TORCH_IN_BACKWARD

    verdict = unguarded.evaluate_source("layer_norm", TORCH_IN_BACKWARD, "planted")
    assert verdict.failure_class == "escape", verdict.reason()


def test_the_compile_baseline_is_compiled_once_per_op(ceilings, tmp_path):
    # a fresh evaluator warms the baseline before its first candidate and never again; the second
    # candidate's timing finds it compiled, so its timing phase is the shorter
    with Evaluator(EvaluatorSettings(device="cuda", timing=FAST, ceilings_cache=ceilings)) as ev:
        first = ev.evaluate("bias_gelu", render(tmp_path, op="bias_gelu"), dtypes=("bfloat16",))
        second = ev.evaluate("bias_gelu", render(tmp_path, op="bias_gelu"), dtypes=("bfloat16",))
        cold = Evaluator(EvaluatorSettings(device="cuda", timing=FAST, ceilings_cache=ceilings, warm_baselines=False))
        with cold:
            unwarmed = cold.evaluate("bias_gelu", render(tmp_path, op="bias_gelu"), dtypes=("bfloat16",))
    for verdict in (first, second, unwarmed):
        assert verdict.accepted, verdict.reason() + verdict.stderr
    assert "warm" in first.phases and "warm" not in second.phases and "warm" not in unwarmed.phases
    print(f"\ntime phase: warm cache {second.phases['time']:.1f} s, none {unwarmed.phases['time']:.1f} s; "
          f"warm phase {first.phases['warm']:.1f} s")


def test_promotion_retiming_warms_the_baseline_inside_its_own_turn(ceilings, tmp_path):
    # re-timing holds the GPU's exclusive turn; the first worker has warmed nothing yet, so the baseline is
    # warmed inside that turn (this hung a two-worker run on the H200 until the turn was reentrant)
    from evaluators import EvaluationPool

    settings = EvaluatorSettings(device="cuda", timing=FAST, ceilings_cache=ceilings, backward=False)
    with EvaluationPool(settings, workers=2) as pool:
        again = pool.retime("bias_gelu", render(tmp_path, op="bias_gelu"))
    assert again.accepted, again.reason()


def test_a_comparison_on_the_gpu_agrees_with_one_on_the_cpu():
    # the judge compares where its reference lives; on a GPU that must count, measure and locate as the CPU
    import torch

    from evaluators.checker import compare
    gen = torch.Generator(device="cuda").manual_seed(0)
    ref = torch.randn(4099, 517, generator=gen, device="cuda", dtype=torch.float64)
    out = (ref + 1e-5 * torch.randn(ref.shape, generator=gen, device="cuda", dtype=torch.float64)).float()
    out[4098, 516] = float("nan")
    out[17, 3] += 1.0
    on_gpu, on_cpu = compare(out, ref, 1e-5, 1e-5), compare(out.cpu(), ref.cpu(), 1e-5, 1e-5)
    assert (on_gpu.mismatches, on_gpu.nonfinite, on_gpu.nans, on_gpu.worst_index) == \
        (on_cpu.mismatches, on_cpu.nonfinite, on_cpu.nans, on_cpu.worst_index)
    assert on_gpu.worst_index == (4098, 516) and on_gpu.mismatches >= 2


def test_compiled_ahead_kernels_reach_the_checking_sandbox(ceilings, tmp_path):
    # two helper sandboxes compile the seed's kernels for the checks (never running them) and the judge copies
    # them into the checking sandbox's cache: the same verdict as compiling alone, in less check time
    from backward_attacks import HONEST

    results = {}
    for count in (0, 2):
        settings = EvaluatorSettings(device="cuda", timing=FAST, ceilings_cache=ceilings, compile_ahead=count)
        with Evaluator(settings) as ev:
            results[count] = ev.evaluate_source("layer_norm", HONEST, "planted")
    alone, ahead = results[0], results[2]
    for verdict in (alone, ahead):
        assert verdict.accepted, verdict.reason() + verdict.stderr
    assert alone.compiled_ahead is None
    assert ahead.compiled_ahead["sandboxes"] == 2 and ahead.compiled_ahead["kernels"] > 0, ahead.compiled_ahead
    assert len(ahead.checks) == len(alone.checks) and len(ahead.backward["checks"]) == len(alone.backward["checks"])
    print(f"\ncompile ahead {ahead.compiled_ahead}: check {alone.phases['check']:.1f} -> {ahead.phases['check']:.1f} s, "
          f"backward {alone.phases['backward']:.1f} -> {ahead.phases['backward']:.1f} s, "
          f"prepare {alone.phases['prepare']:.1f} -> {ahead.phases['prepare']:.1f} s, "
          f"time {alone.phases['time']:.1f} -> {ahead.phases['time']:.1f} s")
