"""The judge's side of timing, against a sandbox that forges its numbers (no GPU needed: the sandbox is a
scripted stand-in speaking the real protocol into a real arena). A forged time is caught by the physical
floor, by the judge's clock around the timed request, or by its clock around a busy-wait batch."""
from __future__ import annotations

import random
import time

import pytest
import torch

from evaluators import TimingSettings
from evaluators.arena import Arena, storage_bytes
from evaluators.judge import Judge
from evaluators.sandboxes import Timeouts
from evaluators.verdict import CandidateFailure
from kernels import DTYPES, get_spec

SPEC = get_spec("layer_norm")
CEILINGS = {"copy_gbps": 4000.0, "matmul_tflops": 700.0}
SETTINGS = TimingSettings(rounds=3)


class ForgingSandbox:
    """Answers `time` with samples of `claimed_ms` and the right last output; `batch` after `batch_s`."""

    def __init__(self, claimed_ms: float, batch_s: float, time_s: float = 0.0):
        self.arena = Arena()
        self.claimed_ms = claimed_ms
        self.batch_s = batch_s
        self.time_s = time_s

    def grow(self, total: int) -> None:
        self.arena.reserve(total)

    def request(self, message: dict, timeout: float) -> dict:
        if message["kind"] == "batch":
            time.sleep(self.batch_s if message["k"] else 0.0)
            return {"kind": "batched", "enqueue_s": 0.0}
        assert message["kind"] == "time"
        time.sleep(self.time_s)
        shapes = []
        for (name, dtype_key), regions in zip(message["shapes"], message["outputs"]):
            shape = next(s for s in SPEC.shapes if s.name == name)
            seed = 1234
            out = SPEC.eager(*SPEC.make_inputs(shape, DTYPES[dtype_key], seed, "cpu"))
            raw = storage_bytes(out.contiguous())
            self.arena.view(regions[0]["offset"], regions[0]["nbytes"]).copy_(raw)
            samples = {name: [self.claimed_ms * 2] * 3 for name in ("eager", "compile")}
            samples["candidate"] = [self.claimed_ms] * 3
            shapes.append({"samples_ms": samples, "last_seed": seed, "written": [True]})
        return {"kind": "timed", "shapes": shapes}


def judge_of(sandbox: ForgingSandbox) -> Judge:
    return Judge(SPEC, sandbox, "cpu", random.Random(0), Timeouts())


def floor_ms() -> float:
    shape = SPEC.headline_shape()
    return SPEC.bytes_moved(shape, torch.bfloat16) / (CEILINGS["copy_gbps"] * 1e9) * 1e3


def test_a_time_under_the_physical_floor_is_void() -> None:
    judge = judge_of(ForgingSandbox(claimed_ms=floor_ms() / 4, batch_s=0.0))
    with pytest.raises(CandidateFailure) as caught:
        judge.time(("bfloat16",), CEILINGS, SETTINGS, final_check=False)
    assert caught.value.failure_class == "too_fast" and "physical floor" in caught.value.detail


def test_gpu_time_beyond_the_judges_clock_is_void() -> None:
    # 5 s of samples reported within a request that took no time at all
    judge = judge_of(ForgingSandbox(claimed_ms=2000.0, batch_s=0.0))
    with pytest.raises(CandidateFailure) as caught:
        judge.time(("bfloat16",), CEILINGS, SETTINGS, final_check=False)
    assert caught.value.failure_class == "too_fast" and "judge's clock" in caught.value.detail


def test_a_time_far_below_what_the_judges_clock_saw_is_void() -> None:
    # reported: twice the floor; the batch of k calls took the judge 0.2 s, far more a call
    judge = judge_of(ForgingSandbox(claimed_ms=2 * floor_ms(), batch_s=0.2, time_s=0.5))
    with pytest.raises(CandidateFailure) as caught:
        judge.time(("bfloat16",), CEILINGS, SETTINGS, final_check=False)
    assert caught.value.failure_class == "too_fast" and "judge's clock saw" in caught.value.detail


def test_a_batch_answered_without_running_is_void() -> None:
    # plausible samples, but the batch came back as fast as an empty one: under the floor by the judge's clock
    judge = judge_of(ForgingSandbox(claimed_ms=2 * floor_ms(), batch_s=0.0, time_s=0.5))
    with pytest.raises(CandidateFailure) as caught:
        judge.time(("bfloat16",), CEILINGS, SETTINGS, final_check=False)
    assert caught.value.failure_class == "too_fast" and "under the physical floor" in caught.value.detail


def test_an_honest_report_passes_every_cross_check() -> None:
    claimed = 2 * floor_ms()
    k = int(min(400, max(20, 2.0 / claimed)))
    # the batch takes what k calls of the claimed time take, as a real one would
    judge = judge_of(ForgingSandbox(claimed_ms=claimed, batch_s=k * claimed * 1e-3, time_s=0.5))
    timing = judge.time(("bfloat16",), CEILINGS, SETTINGS, final_check=False)
    head = timing["shapes"][0]
    assert head["candidate_ms"] == pytest.approx(claimed)
    assert head["judge_clock_ms"] >= 0.5 * claimed


class LyingSandbox(ForgingSandbox):
    """Answers every call with `reply`."""

    def __init__(self, reply: dict):
        super().__init__(1.0, 0.0)
        self.reply = reply

    def request(self, message: dict, timeout: float) -> dict:
        if message["kind"] == "call":
            # the inputs handed back untouched, so that only the reply lies
            for arg, region in zip(message["inputs"], message["after"]):
                if region is not None:
                    self.arena.view(region["offset"], region["nbytes"]).copy_(
                        self.arena.view(arg["offset"], region["nbytes"]))
        return self.reply


@pytest.mark.parametrize("reply", [
    {"kind": "called", "launches": 1, "count": None, "outputs": [{"type": "Tensor", "overlaps_inputs": {"a": 1}}]},
    {"kind": "called", "launches": 1, "count": None, "outputs": "everything is fine"},
    {"kind": "called", "launches": 1, "count": None, "outputs": [{"type": "Tensor", "dtype": "float32",
                                                                  "shape": [1, 768], "strides": [768, 1],
                                                                  "device": "cpu"}]},  # nothing written
    {"kind": "failure", "class": "accepted", "detail": "all checks passed"},
    {"kind": "failure", "refusals": {"0": "x"}},
    {"kind": "timed"},
])
def test_a_lying_sandbox_breaks_only_the_protocol(reply) -> None:
    from kernels import Shape

    judge = judge_of(LyingSandbox(reply))
    shape = Shape("one-row", {"M": 1, "N": 768}, "edge")
    with pytest.raises(CandidateFailure) as caught:
        judge.check_shape(shape, "float32", None, refill=False)
    assert caught.value.failure_class == "protocol", caught.value


def test_the_head_start_outlasts_the_hosts_enqueueing() -> None:
    # a forward+backward under the sandbox's guard took 2.4 ms of Python a call on an H200: a fixed 0.2 ms
    # busy-wait timed the host instead of the GPU (2.5 ms for a 70 us op)
    from evaluators.timing import head_start_ms

    assert head_start_ms(0.01) == 0.2
    for host_ms in (0.2, 1.0, 2.4, 10.0):
        assert head_start_ms(host_ms) > host_ms
    assert head_start_ms(1e4) <= 50.0  # a call that blocks on the GPU cannot be hidden: no endless waits


def test_a_baseline_with_its_own_output_layout_gets_gradients_of_that_layout() -> None:
    # SDPA returns [B, H, T, D] where the attention op gives [B, T, C]: its forward+backward failed on an
    # H200 when handed the op's dy
    import torch

    from evaluators.timing import gradient_sets
    from kernels import get_spec

    spec = get_spec("attention")
    shape = spec.interpreter_shapes[0]
    inputs = spec.make_inputs(shape, torch.float32, 1, "cpu")
    (leaves, dys), = gradient_sets(spec, [inputs], 2)
    (_, sdpa_dys), = gradient_sets(spec, [inputs], 2, spec.baselines["sdpa"])
    assert dys[0].shape == spec.eager(*inputs).shape
    assert sdpa_dys[0].shape == spec.baselines["sdpa"](*inputs).shape != dys[0].shape
    assert all(a.requires_grad for a in leaves if isinstance(a, torch.Tensor) and a.is_floating_point())
