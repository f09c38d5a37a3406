"""The evaluator against planted candidates (tests/cheats/): the honest one is accepted, each cheat is caught
under its own failure class, and a hang or a crash ends only its own sandbox.

Everything runs on the CPU through Triton's interpreter. One evaluator (one fork server) serves most tests;
each file is evaluated once per module and its verdict shared by the tests that look at it. Cheats the
static policy stops are also evaluated with it skipped, so the checks behind it are shown to hold alone.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
import triton

from conftest import render
from evaluators import FAILURE_CLASSES, Evaluator, EvaluatorSettings, Timeouts, Verdict, compare
from evaluators.sandboxes import SandboxLost
from evaluators.static import check_candidate
from kernels import get_spec

CHEATS = Path(__file__).resolve().parent / "cheats"
OP = "layer_norm"
SPEC = get_spec(OP)

# Short phase limits for the fault tests, so that a hang costs seconds; still ample for an honest
# candidate on the interpreter (about a second for every check together).
FRAGILE = Timeouts(start=120, load=10, compile=8, check=30, time=10, task=10)

# cheat file -> the failure class it must be given
EXPECTED = {
    "zeros": "wrong_result",
    "mutates_input": "input_mutation",
    "torch_layer_norm": "static",
    "torch_math": "static",
    "no_launch": "escape",  # operators on tensors in the wrapper: refused by the sandbox's torch guard
    "skips_the_launch": "no_kernel",
    "half_rows": "stale_memory",
    "returns_input": "aliasing",
    "wrong_dtype": "layout",
    "caches": "static",  # module-level state
    "flaky": "static",
    "syntax_error": "syntax_error",
    "raises": "exception",
    "bad_kernel": "compile_error",
    "out_of_memory": "out_of_memory",
    "segfaults": "crash",
    "makes_nan": "wrong_result",
    "late_compile_error": "compile_error",  # first met in a later check, not the first (compiling) call  # NaN it computes is not mistaken for memory it never wrote
}
# the same cheats with the static policy skipped: the class the checks behind it give
EXPECTED_DYNAMIC = {
    "caches": "caching",
    "flaky": "nondeterminism",
    "torch_layer_norm": "escape",
    "torch_math": "escape",
    "crash_on_import": "escape",  # import os: refused by the candidate's own builtins
}
# classes the judge's checks raise (CandidateFailure): the failing check is recorded in `checks`
CHECK_CLASSES = {"wrong_result", "input_mutation", "no_kernel", "stale_memory", "aliasing", "layout", "caching",
                 "nondeterminism"}
FIXED_KEYS = {"op", "status", "failure", "checks", "timing", "device"}


@pytest.fixture(scope="module")
def evaluator(cpu_evaluator):
    return cpu_evaluator


@pytest.fixture(scope="module")
def unguarded(cpu_unguarded):
    return cpu_unguarded


@pytest.fixture(scope="module")
def verdict_of(evaluator, unguarded):
    """(name, dynamic=False) -> the Verdict of tests/cheats/<name>.py, evaluated once per module."""
    seen: dict[tuple[str, bool], Verdict] = {}

    def get(name: str, dynamic: bool = False) -> Verdict:
        if (name, dynamic) not in seen:
            seen[name, dynamic] = (unguarded if dynamic else evaluator).evaluate(OP, CHEATS / f"{name}.py")
        return seen[name, dynamic]

    return get


def sandbox_processes(ev: Evaluator) -> list[int]:
    """Live sandboxes of an evaluator: the children of its fork server."""
    if ev._server is None:
        return []
    server = str(ev._server.process.pid)
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == server and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


# ----------------------------------------------------------------------------- the honest candidate

def test_cheat_files_are_what_the_tests_think() -> None:
    # every planted file says in one line what it tries; every expected class is a real class
    for path in sorted(CHEATS.glob("*.py")):
        text = path.read_text()
        assert text.startswith('"""') and text.splitlines()[0].endswith('"""'), path.name
    assert set(EXPECTED.values()) <= set(FAILURE_CLASSES)
    for name in [*EXPECTED, "honest", "hangs", "kernel_spins", "crash_on_import"]:
        assert (CHEATS / f"{name}.py").is_file(), name


def test_honest_candidate_is_accepted(verdict_of) -> None:
    verdict = verdict_of("honest")
    assert verdict.failure is None, verdict.reason()
    assert verdict.status == "accepted" and verdict.accepted
    # one passed check per interpreter shape and CPU dtype, each with its errors
    from evaluators.judge import INTERPRETER_THOROUGH_NUMEL

    large = {s.name for s in SPEC.shapes_for("cpu") if math.prod(s.dims.values()) > INTERPRETER_THOROUGH_NUMEL}
    assert large, "no interpreter shape of thousands of rows"
    expected = {(s.name, d) for s in SPEC.shapes_for("cpu") for d in SPEC.dtypes_for("cpu") if s.name not in large}
    assert {(c["shape"], c["dtype"]) for c in verdict.checks if c["shape"] not in large} == expected
    # the large shapes once each, in one dtype (seconds a call under the interpreter)
    assert sorted(c["shape"] for c in verdict.checks if c["shape"] in large) == sorted(large)
    # every adversarial or strided variant of the inputs met in every dtype
    for dtype in SPEC.dtypes_for("cpu"):
        assert {c["variant"] for c in verdict.checks if c["dtype"] == dtype} == {None, *SPEC.variants}
    for check in verdict.checks:
        assert check["passed"] is True
        tol = SPEC.tolerances[check["dtype"]]
        assert 0 <= check["max_abs"] <= tol.atol + tol.rtol * 10
        assert math.isfinite(check["rel_l2"])


def test_accepted_cpu_verdict_says_speed_was_not_measured(verdict_of) -> None:
    verdict = verdict_of("honest")
    assert verdict.timing is None
    assert "speed not measured" in verdict.reason()


def test_rendered_template_point_is_accepted(evaluator, tmp_path: Path) -> None:
    # the chunked two-pass loop on a persistent grid, several rows per program
    path = render(tmp_path, SINGLE_TILE=False, PERSISTENT=True, ROWS_PER_PROGRAM=4)
    assert check_candidate(path.read_text(), SPEC.entry) == []
    verdict = evaluator.evaluate(OP, path)
    assert verdict.accepted, verdict.reason()
    assert all(c["passed"] for c in verdict.checks)


# ----------------------------------------------------------------------------- planted cheats

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cheat_is_caught_under_its_class(verdict_of, name: str) -> None:
    verdict = verdict_of(name)
    cls = EXPECTED[name]
    assert verdict.failure_class == cls, f"{name}: {verdict.reason()}"
    assert verdict.status == FAILURE_CLASSES[cls][0]
    assert not verdict.accepted
    assert isinstance(verdict.failure["detail"], str) and verdict.failure["detail"].strip()
    if cls in CHECK_CLASSES and cls != "no_kernel":
        # the check that caught it is recorded as failed, with the class; the ones before it passed
        *passed, failed = verdict.checks
        assert failed["passed"] is False and failed["failure"] == cls
        assert all(c["passed"] for c in passed)
    if cls in ("static", "syntax_error"):
        # caught from the text alone: nothing ran
        assert verdict.checks == []
        assert verdict.failure["detail"].startswith("line ")


@pytest.mark.parametrize("name", sorted(EXPECTED_DYNAMIC))
def test_static_cheat_is_caught_behind_the_static_policy_too(verdict_of, name: str) -> None:
    assert verdict_of(name).failure_class == "static"
    verdict = verdict_of(name, dynamic=True)
    assert verdict.failure_class == EXPECTED_DYNAMIC[name], f"{name}: {verdict.reason()}"


def test_static_cheats_name_the_torch_computation(verdict_of) -> None:
    assert "layer_norm" in verdict_of("torch_layer_norm").failure["detail"]
    rules = {v.rule for v in check_candidate((CHEATS / "torch_math.py").read_text(), SPEC.entry)}
    assert rules == {"torch-math"}
    assert "more" in verdict_of("torch_math").failure["detail"]  # several violations, the count shown


def test_wrong_dtype_passes_float32_and_fails_at_float16(verdict_of) -> None:
    checks = verdict_of("wrong_dtype").checks
    assert {c["dtype"] for c in checks if c["passed"]} <= {"float32"}
    assert checks[-1]["dtype"] != "float32" and not checks[-1]["passed"]
    assert checks[-1]["dtype"] in checks[-1]["detail"]


def test_half_rows_reports_the_nan_poison(verdict_of) -> None:
    detail = verdict_of("half_rows").failure["detail"]
    assert "NaN" in detail and "non-finite" in detail


def test_cache_is_caught_on_the_second_inputs(verdict_of) -> None:
    verdict = verdict_of("caches", dynamic=True)
    # it hands back the storage it returned before: seen before its values are even compared
    assert "earlier call's output" in verdict.failure["detail"]
    # right on its first inputs, caught on the next call of the same shape: the first shape checked with more
    # than one call (a shape of many rows is checked with one)
    from evaluators.judge import INTERPRETER_THOROUGH_NUMEL

    *before, failed = verdict.checks
    assert not failed["passed"]
    assert all(math.prod(c["dims"].values()) > INTERPRETER_THOROUGH_NUMEL for c in before)


def test_flaky_output_is_within_tolerance_but_not_repeatable(verdict_of) -> None:
    verdict = verdict_of("flaky", dynamic=True)
    # both single outputs passed the tolerance; the repeat on the same inputs gave it away
    assert "repeated call" in verdict.failure["detail"]


def test_compile_error_is_a_fault_not_a_rejection(verdict_of) -> None:
    verdict = verdict_of("bad_kernel")
    assert verdict.status == "failed"
    assert "power of 2" in verdict.failure["detail"]


def test_exception_detail_keeps_the_message(verdict_of) -> None:
    detail = verdict_of("raises").failure["detail"]
    assert detail.startswith("RuntimeError:") and "no kernel configuration" in detail


# ----------------------------------------------------------------------------- the verdict contract

@pytest.mark.parametrize("name", ["honest", *sorted(EXPECTED)])
def test_verdict_json_has_the_fixed_shape(verdict_of, name: str) -> None:
    verdict = verdict_of(name)
    data = json.loads(verdict.to_json())
    assert FIXED_KEYS <= set(data)
    assert data["op"] == OP
    assert data["status"] in ("accepted", "rejected", "failed")
    assert data["timing"] is None  # CPU: speed is not measured
    assert isinstance(data["checks"], list)
    device = data["device"]
    assert device["arch"] == "interpreter"
    assert device["torch"] == torch.__version__ and device["triton"] == triton.__version__
    assert device["name"]
    if data["status"] == "accepted":
        assert data["failure"] is None
    else:
        assert set(data["failure"]) == {"class", "detail"}
        assert data["status"] == FAILURE_CLASSES[data["failure"]["class"]][0]
    assert Verdict.from_dict(data).to_dict() == verdict.to_dict()


def test_failure_classes_each_have_a_status() -> None:
    for cls, (status, meaning) in FAILURE_CLASSES.items():
        assert status in ("rejected", "failed"), cls
        assert meaning
        verdict = Verdict.failed(OP, cls, "detail")
        assert verdict.status == status and not verdict.accepted
        assert verdict.reason() == f"{cls}: detail"


# ----------------------------------------------------------------------------- faults end only their sandbox

@pytest.mark.parametrize("cheat", ["hangs.py", "kernel_spins.py"])  # a Python loop, a loop in the kernel
def test_hang_times_out_and_only_its_sandbox_ends(cheat: str) -> None:
    with Evaluator(EvaluatorSettings(device="cpu", timeouts=FRAGILE)) as ev:
        assert ev.evaluate(OP, CHEATS / "honest.py").accepted  # the fork server starts outside the timing
        started = time.monotonic()
        verdict = ev.evaluate(OP, CHEATS / cheat)
        elapsed = time.monotonic() - started
        assert verdict.failure_class == "timeout", verdict.reason()
        assert verdict.status == "failed"
        assert elapsed < 60, "the hang was not cut off (this bound detects a hang; it is not a speed check)"
        assert sandbox_processes(ev) == [], "the hung sandbox is still running"
        after = ev.evaluate(OP, CHEATS / "honest.py")
        assert after.accepted, after.reason()
        server = ev._server.process
    assert server.poll() is not None, "close() left the fork server behind"


def test_a_candidate_slow_in_every_call_is_cut_off_by_its_limit_in_all() -> None:
    # correct, but each call burns a second of Python first, well within its own timeout: only the limit on the
    # whole sandbox ends it
    from attacks import candidate

    slow = candidate(before="    for _ in range(20_000_000):\n        pass\n")
    with Evaluator(EvaluatorSettings(device="cpu", timeouts=FRAGILE, candidate_seconds=6)) as ev:
        started = time.monotonic()
        verdict = ev.evaluate_source(OP, slow)
        elapsed = time.monotonic() - started
        assert verdict.failure_class == "timeout", verdict.reason()
        assert "used up its 6 s in all" in verdict.reason()
        assert verdict.checks and all(c["passed"] for c in verdict.checks), "it was slow, not wrong"
        assert elapsed < 60, "the slow candidate was not cut off (this bound detects it; it is not a speed check)"
        assert sandbox_processes(ev) == []


def test_only_the_sandboxs_own_requests_use_its_limit(evaluator) -> None:
    sandbox = evaluator._sandbox()
    try:
        sandbox.limit(2)
        time.sleep(3)  # a wait for the GPU's turn happens outside any request
        assert sandbox.request({"kind": "arena"}, 10)["kind"] == "ok"
        # a module that never finishes loading: the limit ends it, not the request's own 30 s (whose message differs)
        with pytest.raises(SandboxLost, match="used up its 2 s in all"):
            sandbox.request({"kind": "load", "op": OP, "source": "while True:\n    pass\n"}, 30)
    finally:
        sandbox.close()


def test_a_fresh_sandbox_for_every_candidate(unguarded, tmp_path: Path) -> None:
    # the first candidate leaves a mark in its process; the second fails if it finds one
    from attacks import candidate

    marks = candidate(before="    typing.sys.modules['torch'].evolve_was_here = 1\n")
    looks = candidate(before="    if 'evolve_was_here' in typing.sys.modules['torch'].__dict__:\n"
                             "        raise RuntimeError('a mark of an earlier candidate')\n")
    started = unguarded.sandboxes_started
    assert unguarded.evaluate_source(OP, marks).accepted
    second = unguarded.evaluate_source(OP, looks)
    assert second.accepted, second.reason()
    assert unguarded.sandboxes_started == started + 2
    assert sandbox_processes(unguarded) == []


def test_a_crash_is_classified_and_the_next_candidate_runs(verdict_of, evaluator) -> None:
    assert verdict_of("segfaults").failure_class == "crash"
    assert "SIGSEGV" in verdict_of("segfaults").failure["detail"]
    verdict = evaluator.evaluate(OP, CHEATS / "honest.py")
    assert verdict.accepted, verdict.reason()


# ----------------------------------------------------------------------------- checker.compare

def test_compare_exact_match() -> None:
    ref = torch.randn(4, 8, dtype=torch.float64)
    result = compare(ref.clone(), ref, 1e-4, 1e-4)
    assert result.ok
    assert result.mismatches == 0 and result.nonfinite == 0 and result.nans == 0
    assert result.max_abs == 0.0 and result.rel_l2 == 0.0
    assert result.numel == 32


def test_compare_within_tolerance_and_lower_precision_output() -> None:
    ref = torch.randn(16, 32, dtype=torch.float64)
    assert compare(ref + 5e-5, ref, 1e-4, 0.0).ok
    assert compare(ref.to(torch.float16), ref, 1e-2, 1e-2).ok


def test_compare_counts_one_element_off() -> None:
    ref = torch.randn(4, 8, dtype=torch.float64)
    out = ref.clone()
    out[1, 2] += 1.0
    result = compare(out, ref, 1e-4, 1e-4)
    assert not result.ok
    assert result.mismatches == 1
    assert result.nonfinite == 0 and result.nans == 0
    assert result.max_abs == pytest.approx(1.0)
    assert "1/32 elements off" in result.summary()


def test_compare_names_the_element_farthest_outside_its_tolerance() -> None:
    ref = torch.randn(4, 8, dtype=torch.float64)
    out = ref.clone()
    out[0, 1] += 1e-3
    out[2, 5] += 0.5
    result = compare(out, ref, 1e-4, 1e-4)
    assert result.mismatches == 2
    assert result.worst_index == (2, 5)
    assert result.worst_got == pytest.approx(float(out[2, 5])) and result.worst_expected == float(ref[2, 5])
    assert "worst at [2, 5]" in result.summary()
    assert compare(ref.clone(), ref, 1e-4, 1e-4).worst_index is None


def test_compare_in_chunks_counts_and_measures_as_in_one_piece(monkeypatch) -> None:
    from evaluators import checker
    gen = torch.Generator().manual_seed(3)
    ref = torch.randn(37, 41, generator=gen, dtype=torch.float64)
    out = (ref + 1e-4 * torch.randn(37, 41, generator=gen, dtype=torch.float64)).float()
    out[5, 7] += 2.0
    with_nan = out.clone()
    with_nan[36, 40] = float("nan")
    whole = [compare(o, ref, 1e-4, 1e-4) for o in (out, with_nan)]
    monkeypatch.setattr(checker, "CHUNK", 100)
    chunked = [compare(o, ref, 1e-4, 1e-4) for o in (out, with_nan)]
    for w, c in zip(whole, chunked):
        assert c.mismatches == w.mismatches > 2
        assert (c.nonfinite, c.nans, c.worst_index) == (w.nonfinite, w.nans, w.worst_index)
        assert c.max_abs == w.max_abs
    assert chunked[0].worst_index == (5, 7) and chunked[1].worst_index == (36, 40)
    assert chunked[0].rel_l2 == pytest.approx(whole[0].rel_l2, rel=1e-12)


def test_compare_nan_where_reference_is_finite() -> None:
    ref = torch.randn(4, 8, dtype=torch.float64)
    out = ref.clone()
    out[0, 0] = float("nan")
    out[3, 7] = float("nan")
    result = compare(out, ref, 1e-4, 1e-4)
    assert not result.ok
    assert result.nonfinite == 2 and result.nans == 2
    assert result.mismatches == 2
    assert math.isinf(result.max_abs) and math.isinf(result.rel_l2)
    assert "NaN" in result.summary()


def test_compare_inf_where_reference_is_finite() -> None:
    ref = torch.randn(4, 8, dtype=torch.float64)
    out = ref.clone()
    out[2, 2] = float("inf")
    result = compare(out, ref, 1e-4, 1e-4)
    assert not result.ok
    assert result.nonfinite == 1 and result.nans == 0


def test_compare_inf_in_both_is_ok_but_its_sign_matters() -> None:
    ref = torch.randn(4, 8, dtype=torch.float64)
    ref[0, 1] = float("inf")
    ref[2, 3] = float("-inf")
    result = compare(ref.clone(), ref, 1e-4, 1e-4)
    assert result.ok
    assert result.nonfinite == 0 and result.mismatches == 0
    assert math.isfinite(result.max_abs)
    flipped = ref.clone()
    flipped[0, 1] = float("-inf")
    assert not compare(flipped, ref, 1e-4, 1e-4).ok


def test_compare_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        compare(torch.zeros(4, 8), torch.zeros(8, 4), 1e-4, 1e-4)
    with pytest.raises(ValueError):
        compare(torch.zeros(32), torch.zeros(4, 8), 1e-4, 1e-4)


@pytest.mark.parametrize("n", [1, 1023, 1024, 3 * 1024 + 96])
def test_the_copy_ceiling_copies_every_word(n):
    # the same-size copy timed beside memory-bound ops is a Triton kernel; sizes off its block included
    from evaluators.timing import copy_words
    src = torch.randint(-2**31, 2**31 - 1, (n,), dtype=torch.int32)
    dst = torch.full((n,), 7, dtype=torch.int32)
    assert copy_words(src, dst) is dst
    assert torch.equal(dst, src)
