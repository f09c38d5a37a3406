"""The judge: every conclusion about a candidate, drawn in a process that never imports candidate code.

It makes the inputs and keeps them, computes the reference, sends the sandbox copies of the inputs
through the arena, and decides each check from plain data: the bytes the sandbox wrote back, the
metadata it reported (exact type, dtype, shape, strides, storage overlaps), the launch count, the
candidate's own refusals. A sandbox that lies can only lie about its outputs, and those must match.

What the candidate cannot predict: the order of shapes and dtypes, the number of calls, which calls are
poisoned and which are not, which inputs are adversarial or strided, when a buffer is refilled in place at
the same address, and that a call comes after thousands of timed ones.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from kernels import DTYPES, OpSpec, Shape

from . import wire
from .arena import dtype_name, layout, storage_bytes
from .checker import as_outputs, compare_outputs
from .sandboxes import Sandbox, Timeouts
from .verdict import CandidateFailure

# classes a sandbox may report for a candidate; anything else it claims is a broken protocol
SANDBOX_CLASSES = frozenset({"exception", "compile_error", "syntax_error", "out_of_memory", "illegal_address",
                             "escape"})
SENTINEL = 4096.0  # a second, finite poison (exact in float16 and bfloat16): unwritten output vs computed NaN
NAN = float("nan")
INTERPRETER_THOROUGH_NUMEL = 1 << 15  # above this, a CPU shape is checked once, in one call (see plan)


class JudgeError(RuntimeError):
    """The evaluator's own code failed (a baseline, a policy refusing our own work): never the candidate's."""


def fresh_seed() -> int:
    # never a fixed seed: each evaluation draws inputs no candidate could have seen
    return random.SystemRandom().randrange(2**31)


@contextlib.contextmanager
def untrusted(what: str):
    """Reading a sandbox's reply: a field of the wrong type or shape is a broken protocol, never a crash."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, wire.WireError) as exc:
        raise CandidateFailure("protocol", f"{what}: {type(exc).__name__}: {str(exc)[:200]}") from None


def sandbox_reply(reply: dict, expected_kind: str) -> dict:
    """A reply checked for refusals and reported failures; CandidateFailure or JudgeError otherwise."""
    with untrusted(f"the {expected_kind!r} reply"):
        return _checked_reply(reply, expected_kind)


def _checked_reply(reply: dict, expected_kind: str) -> dict:
    refusals = reply.get("refusals") or []
    if refusals:
        raise CandidateFailure("escape", f"the candidate tried what its sandbox refuses: {str(refusals[0])[:300]}")
    if reply.get("kind") == "failure":
        cls = reply.get("class")
        if cls == "baseline":
            raise JudgeError(str(reply.get("detail"))[:2000])
        if cls not in SANDBOX_CLASSES:
            raise CandidateFailure("protocol", f"the sandbox reported an unknown class {str(cls)[:40]!r}")
        raise CandidateFailure(cls, str(reply.get("detail", ""))[:400])
    if reply.get("kind") != expected_kind:
        raise CandidateFailure("protocol", f"expected a {expected_kind!r} reply, got {str(reply.get('kind'))[:40]!r}")
    return reply


@dataclass
class Expected:
    """The layout of PyTorch's own result: what every output must be."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    device: str

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty(0, dtype=self.dtype).element_size()

    def describe(self) -> str:
        return f"{dtype_name(self.dtype)} {self.shape} strides {self.strides}"


def expected_layout(spec: OpSpec, inputs: tuple) -> list[Expected]:
    with torch.no_grad():
        probe = as_outputs(spec.eager(*inputs))
    return [Expected(p.dtype, tuple(p.shape), tuple(p.stride()), p.device.type) for p in probe]


def read_outputs(sandbox: Sandbox, reply: dict, regions: list[dict], expected: list[Expected], device: str,
                 several: bool, inputs: tuple) -> list[torch.Tensor]:
    """The outputs the sandbox wrote, as the judge's own tensors, after every layout and aliasing rule."""
    outs = reply.get("outputs")
    count = reply.get("count")
    if not isinstance(outs, list):
        raise CandidateFailure("protocol", "the reply lists no outputs")
    if several and count != len(expected):
        got = f"{count} values" if isinstance(count, int) else "a single value"
        raise CandidateFailure("layout", f"returned {got}, expected a tuple of {len(expected)} tensors")
    if not several and count is not None:
        raise CandidateFailure("layout", f"returned a sequence of {count}, expected a tensor")
    if len(outs) < len(expected):
        raise CandidateFailure("protocol", "the reply lists fewer outputs than were returned")
    result = []
    for k, (meta, like, region) in enumerate(zip(outs, expected, regions)):
        what = f"output {k}" if several else "the output"
        if not isinstance(meta, dict) or meta.get("type") != "Tensor":
            got = meta.get("type") if isinstance(meta, dict) else "?"
            raise CandidateFailure("layout", f"{what} is {str(got)[:80]}, expected exactly torch.Tensor")
        if meta.get("overlaps_inputs"):
            raise CandidateFailure("aliasing", f"{what} shares storage with argument {meta['overlaps_inputs'][0]}")
        if meta.get("overlaps_outputs"):
            raise CandidateFailure("aliasing", f"{what} shares storage with output {meta['overlaps_outputs'][0]}")
        if meta.get("overlaps_previous"):
            raise CandidateFailure("caching", f"{what} reuses the storage of an earlier call's output")
        got = (meta.get("dtype"), tuple(meta.get("shape") or ()), tuple(meta.get("strides") or ()))
        if got != (dtype_name(like.dtype), like.shape, like.strides):
            raise CandidateFailure("layout", f"{what}: got {got[0]} {got[1]} strides {got[2]}, expected "
                                             f"{like.describe()}")
        if meta.get("device") != like.device:
            raise CandidateFailure("layout", f"{what} on {str(meta.get('device'))[:20]}, expected {like.device}")
        if not meta.get("written"):
            raise CandidateFailure("protocol", f"{what} was not written back")
        # a copy on the judge's device straight from the arena, which the sandbox may write again
        raw = sandbox.arena.view(region["offset"], region["nbytes"]).to(device, copy=True)
        result.append(raw.view(like.dtype).reshape(like.shape))
    return result


def timed_check(result: dict, started: float) -> dict:
    """A check's record with what it cost, so that the dearest can be found in a run's verdicts."""
    return {**result, "seconds": round(time.perf_counter() - started, 3)}


def failed_check(shape: Shape, dtype_key: str, variant: str | None, failure: CandidateFailure,
                 started: float) -> dict:
    return timed_check({"shape": shape.name, "dims": dict(shape.dims), "dtype": dtype_key, "passed": False,
                        "variant": variant, "failure": failure.failure_class, "detail": failure.detail}, started)


class Judge:
    def __init__(self, spec: OpSpec, sandbox: Sandbox, device: str, rng: random.Random, timeouts: Timeouts,
                 turn: Callable[[], ContextManager] = contextlib.nullcontext):
        self.spec = spec
        self.sandbox = sandbox
        self.device = device
        self.rng = rng
        self.timeouts = timeouts
        self.phase = "compile"  # the first call compiles: it runs under the compile timeout
        self.calls = 0
        # the GPU's shared turn, taken for one check at a time: a worker waiting to time gets the card
        # between two checks, not after a candidate's whole minutes of them
        self.turn = turn

    # ------------------------------------------------------------ one call

    def fresh_inputs(self, shape: Shape, dtype: torch.dtype, variant: str | None = None) -> tuple:
        inputs = self.spec.make_inputs(shape, dtype, self.rng.randrange(2**31), self.device)
        if variant:
            inputs = self.spec.variants[variant](inputs, self.rng.randrange(2**31))
        return inputs

    def call(self, inputs: tuple, expected: list[Expected], poison: float | None, prime: bool = False,
             reuse: bool = False) -> list[torch.Tensor]:
        tensors = [a for a in inputs if isinstance(a, torch.Tensor)]
        # the judge's own host copies: written into the arena and kept to hold the inputs against after the call
        # (one device-to-host copy of each, where a GPT-2 logits tensor is 1.6 GB)
        storages = [storage_bytes(t).cpu() for t in tensors]
        sizes = [s.numel() for s in storages] + [e.nbytes for e in expected] + [s.numel() for s in storages]
        offsets, total = layout(sizes)
        self.sandbox.grow(total)
        arena = self.sandbox.arena
        args, t = [], 0
        for a in inputs:
            if isinstance(a, torch.Tensor):
                arena.view(offsets[t], storages[t].numel()).copy_(storages[t])
                args.append({"tensor": {"dtype": dtype_name(a.dtype), "shape": list(a.shape),
                                        "strides": list(a.stride()), "storage_offset": a.storage_offset(),
                                        "storage_nbytes": storages[t].numel()}, "offset": offsets[t]})
                t += 1
            else:
                args.append({"value": a})
        n = len(tensors)
        outputs = [{"offset": offsets[n + k], "nbytes": e.nbytes} for k, e in enumerate(expected)]
        after = iter([{"offset": offsets[n + len(expected) + i], "nbytes": storages[i].numel()} for i in range(n)])
        after_regions = [next(after) if isinstance(a, torch.Tensor) else None for a in inputs]
        timeout = self.timeouts.compile if self.phase == "compile" else self.timeouts.check
        reply = self.sandbox.request({"kind": "call", "phase": self.phase, "inputs": args, "outputs": outputs,
                                      "after": after_regions, "poison": poison, "prime": prime, "reuse": reuse},
                                     timeout)
        self.phase = "check"
        self.calls += 1
        reply = sandbox_reply(reply, "called")
        if not isinstance(reply.get("launches"), int) or reply["launches"] <= 0:
            raise CandidateFailure("no_kernel", "the call returned without launching a Triton kernel")
        t = 0
        for i, a in enumerate(inputs):
            if isinstance(a, torch.Tensor):
                region = after_regions[i]
                now = arena.view(region["offset"], region["nbytes"])
                if not torch.equal(now, storages[t]):
                    raise CandidateFailure("input_mutation", f"argument {i} changed during the call")
                t += 1
        with untrusted("the call's outputs"):
            return read_outputs(self.sandbox, reply, outputs, expected, self.device, len(expected) > 1, inputs)

    def judge(self, outs: list[torch.Tensor], inputs: tuple, dtype_key: str, failure_class: str, what: str,
              expected: list[Expected] | None = None, poisoned: bool = True) -> dict:
        tol = self.spec.tolerances[dtype_key]
        result = compare_outputs(tuple(outs), self.spec.reference(*inputs), tol.atol, tol.rtol)
        if not result.ok:
            cls = failure_class
            summary = result.summary()
            if failure_class == "wrong_result" and expected is not None and (result.nans or not poisoned):
                unwritten = self._unwritten(inputs, expected, tol)
                if unwritten is not None:
                    cls, summary = "stale_memory", unwritten
            raise CandidateFailure(cls, f"{what}: {summary}")
        return result.to_dict()

    def _unwritten(self, inputs: tuple, expected: list[Expected], tol) -> str | None:
        """Output the kernel never wrote reads as NaN under the NaN poison and as the sentinel under a finite
        one, where NaN the kernel computes itself stays NaN: the poisoned call's comparison if so, else None."""
        poisoned = self.call(inputs, expected, NAN)
        if not any(bool(torch.isnan(o).any()) for o in poisoned):
            return None
        again = self.call(inputs, expected, SENTINEL)
        if any(bool(torch.isnan(o).any()) for o in again) or not any(bool((o == SENTINEL).any()) for o in again):
            return None
        return compare_outputs(tuple(poisoned), self.spec.reference(*inputs), tol.atol, tol.rtol).summary()

    # ------------------------------------------------------------ one shape and dtype

    def check_shape(self, shape: Shape, dtype_key: str, variant: str | None, refill: bool) -> dict:
        dtype = DTYPES[dtype_key]
        tol = self.spec.tolerances[dtype_key]
        expected = expected_layout(self.spec, self.fresh_inputs(shape, dtype))
        label = f"{shape} {dtype_key}"
        # the first call: sometimes unpoisoned, so that the poison is no fingerprint of being checked
        poison = NAN if self.rng.random() < 0.7 else None
        inputs_a = self.fresh_inputs(shape, dtype, variant)
        where = f"{label}{f' ({variant} inputs)' if variant else ''}"
        first = self.judge(self.call(inputs_a, expected, poison), inputs_a, dtype_key, "wrong_result", where,
                           expected, poisoned=poison is not None)
        if self.device == "cpu" and _numel(shape) > INTERPRETER_THOROUGH_NUMEL:
            # the interpreter takes seconds a call at thousands of rows: one call checks them, and the
            # repeated, primed and refilled calls run on the smaller shapes
            return self._passed(shape, dtype_key, variant, first)
        # second inputs, PyTorch's result computed and freed in the sandbox just before: an output left
        # unwritten would read it, were the memory not poisoned
        inputs_b = self.fresh_inputs(shape, dtype)
        out_b = self.call(inputs_b, expected, NAN, prime=True)
        self.judge(out_b, inputs_b, dtype_key, "caching", f"{label}, second inputs")
        # the same inputs again, in the same buffers: the same result within rounding
        out_b2 = self.call(inputs_b, expected, NAN if self.rng.random() < 0.5 else None, reuse=True)
        again = compare_outputs(tuple(out_b2), tuple(out_b), tol.atol / 10, tol.rtol / 10)
        if not again.ok:
            raise CandidateFailure("nondeterminism", f"{label}, repeated call: {again.summary()}")
        if refill:
            # new values in the very same buffers: a result cached by address is stale now
            inputs_c = self.fresh_inputs(shape, dtype)
            out_c = self.call(inputs_c, expected, None, reuse=True)
            self.judge(out_c, inputs_c, dtype_key, "caching", f"{label}, buffers refilled in place")
        return self._passed(shape, dtype_key, variant, first)

    @staticmethod
    def _passed(shape: Shape, dtype_key: str, variant: str | None, first: dict) -> dict:
        return {"shape": shape.name, "dims": dict(shape.dims), "dtype": dtype_key, "passed": True,
                "variant": variant, "max_abs": first["max_abs"], "rel_l2": first["rel_l2"]}

    def plan(self, dtypes: tuple[str, ...]) -> list[tuple[str, Shape, str | None, bool]]:
        """Every shape in every dtype, in a random order; the variants spread so each dtype meets them all."""
        shapes = self.spec.shapes_for(self.device)
        variants = [None, *self.spec.variants]
        # under the interpreter a shape of thousands of rows takes seconds a call: it is checked once, in a
        # dtype the candidate cannot know in advance, and the other dtypes meet every other shape
        large = [s for s in shapes if self.device == "cpu" and _numel(s) > INTERPRETER_THOROUGH_NUMEL]
        large_dtype = {s.name: self.rng.choice(dtypes) for s in large}
        # on a GPU the timed shapes are the largest and float32 the costliest there (a GPT-2 logits tensor is
        # 1.6 GB, its float64 reference twice that): float32, which nothing times and the model never runs,
        # is checked at one of them, drawn so the candidate cannot know which, and at every smaller shape
        timed = [s for s in shapes if self.device == "cuda" and s.timed and "float32" in dtypes]
        float32_timed = self.rng.choice(timed) if timed else None
        pairs = []
        for dtype_key in dtypes:
            offset = self.rng.randrange(len(variants))
            for i, shape in enumerate(shapes):
                if shape in large and large_dtype[shape.name] != dtype_key:
                    continue
                if dtype_key == "float32" and shape in timed and shape is not float32_timed:
                    continue
                pairs.append((dtype_key, shape, variants[(i + offset) % len(variants)], self.rng.random() < 0.4))
            missing = [v for v in variants if v not in {p[2] for p in pairs if p[0] == dtype_key}]
            for variant in missing:  # fewer shapes than variants: extra checks on random shapes
                pairs.append((dtype_key, self.rng.choice(shapes), variant, False))
        self.rng.shuffle(pairs)
        return pairs

    def run_checks(self, dtypes: tuple[str, ...], checks: list[dict], plan: list | None = None,
                   reached: Callable[[int], None] | None = None) -> None:
        """Every check of `plan` (a fresh one of dtypes unless given: the evaluator draws it first where
        sandboxes compile the candidate's kernels ahead in the same order, and tells them with `reached`
        which check comes next, before its turn is taken)."""
        for index, (dtype_key, shape, variant, refill) in enumerate(plan if plan is not None else self.plan(dtypes)):
            if reached is not None:
                reached(index)
            with self.turn():
                started = time.perf_counter()
                try:
                    result = self.check_shape(shape, dtype_key, variant, refill)
                except CandidateFailure as failure:
                    checks.append(failed_check(shape, dtype_key, variant, failure, started))
                    raise
            checks.append(timed_check(result, started))

    # ------------------------------------------------------------ timing, GPU only

    def prepare_timing(self, dtypes: tuple[str, ...], backward: bool = False) -> None:
        """What the timing would do first without measuring anything (torch.compile's tracing of its baseline,
        the copy kernel's compilation), as a request of its own: the evaluator gives it the GPU's shared turn
        where it can, so that the exclusive turn that follows only measures."""
        pairs = [[shape.name, d] for shape in self.spec.timed_shapes() for d in dtypes]
        sandbox_reply(self.sandbox.request({"kind": "prepare", "phase": "prepare", "shapes": pairs,
                                            "seed": self.rng.randrange(2**31), "backward": backward},
                                           self.timeouts.time), "prepared")

    def time(self, dtypes: tuple[str, ...], ceilings: dict, settings, final_check: bool = True,
             backward: bool = False) -> dict:
        """The forward's timing block; with `backward`, forward+backward is timed in the same request and its
        block left in `self.backward_timing`."""
        from .timing import judge_backward_timing, judge_timing, summarise

        pairs = [(shape, d) for shape in self.spec.timed_shapes() for d in dtypes]
        layouts = [expected_layout(self.spec, self.fresh_inputs(s, DTYPES[d])) for s, d in pairs]
        regions, sizes = [], [e.nbytes for exp in layouts for e in exp]
        offsets, total = layout(sizes)
        self.sandbox.grow(total)
        it = iter(offsets)
        for exp in layouts:
            regions.append([{"offset": next(it), "nbytes": e.nbytes} for e in exp])
        seed = self.rng.randrange(2**31)
        started = time.monotonic()
        reply = sandbox_reply(self.sandbox.request(
            {"kind": "time", "shapes": [[s.name, d] for s, d in pairs], "outputs": regions, "seed": seed,
             "timing": settings.__dict__, "backward": backward}, self.timeouts.time * (3 if backward else 1)),
            "timed")
        wall = time.monotonic() - started
        per_shape, per_shape_bwd, claimed_ms = [], [], 0.0
        results = reply.get("shapes")
        if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
            raise CandidateFailure("protocol", "timing without a result per shape")
        for (shape, dtype_key), exp, region, result in zip(pairs, layouts, regions, results):
            samples = _samples(result)
            claimed_ms += sum(sum(v) for v in samples.values())
            timed = judge_timing(self.spec, shape, dtype_key, samples, ceilings, settings)
            if backward:
                with untrusted("the forward+backward timing"):
                    bwd = result["backward"]
                    bwd_samples = _samples(bwd)
                    peaks = {k: wire.number(bwd["peak_mib"], k, low=0.0) for k in ("candidate", "eager", "compile",
                                                                                       *self.spec.baselines)}
                claimed_ms += sum(sum(v) for v in bwd_samples.values())
                per_shape_bwd.append(judge_backward_timing(self.spec, shape, dtype_key,
                                                           {"samples_ms": bwd_samples, "peak_mib": peaks},
                                                           ceilings, settings))
            # the output of the last timed call must still be right: work skipped under repetition shows here
            if not isinstance(result.get("last_seed"), int) or not all(result.get("written") or [False]):
                raise CandidateFailure("caching", f"the timed calls at {shape} {dtype_key} left no output to check")
            inputs = self.spec.make_inputs(shape, DTYPES[dtype_key], result["last_seed"], self.device)
            outs = [self.sandbox.arena.view(r["offset"], r["nbytes"]).clone().view(e.dtype).reshape(e.shape)
                    .to(self.device) for r, e in zip(region, exp)]
            self.judge(outs, inputs, dtype_key, "caching", f"output of the timed call at {shape} {dtype_key}")
            per_shape.append(timed)
        if len(per_shape) != len(pairs):
            raise CandidateFailure("protocol", "the sandbox timed fewer shapes than asked")
        if claimed_ms > wall * 1e3 * 1.05 + 50:
            # medians of event times summed over every sample cannot exceed the judge's clock around them
            raise CandidateFailure("too_fast", f"the sandbox reported {claimed_ms:.0f} ms of GPU time within "
                                               f"{wall * 1e3:.0f} ms of the judge's clock")
        clock_started = time.monotonic()
        self.cross_check_clock(per_shape[0], settings)
        # where the timing's seconds went: the sandbox's request (and, as it says, its parts per shape:
        # inputs and first calls, the forward's samples, forward+backward) and the judge's clock check
        self.timing_seconds = {"request": round(wall, 3), "clock": round(time.monotonic() - clock_started, 3),
                               "sandbox": [_parts(r) for r in results]}
        if final_check:
            self.recheck_after_timing(dtypes[0])
        if backward:
            head = per_shape_bwd[0]
            self.backward_timing = {**{k: head[k] for k in ("candidate_ms", "eager_ms", "compile_ms", "speedup_eager",
                                                            "speedup_compile", "gbps", "tflops", "roofline_fraction",
                                                            "spread", "peak_mib")},
                                    "headline": f"{head['shape']} {head['dtype']}", "shapes": per_shape_bwd}
        return {**summarise(per_shape, ceilings), "seconds": self.timing_seconds}

    def recheck_after_timing(self, dtype_key: str) -> None:
        # after thousands of timed calls: a kernel honest only for its first calls fails here
        self.phase = "check"
        self.check_shape(self.spec.headline_shape(), dtype_key, None, refill=False)

    def cross_check_clock(self, headline: dict, settings) -> None:
        """The judge's own clock around k back-to-back calls queued behind a GPU busy-wait: the candidate's
        reported time may not be far below what the judge saw the GPU spend per call."""
        claimed = headline["candidate_ms"]
        k = int(min(400, max(20, 2.0 / max(claimed, 1e-4))))  # about 2 ms of the candidate's work
        base = {"kind": "batch", "shape": headline["shape"], "dtype": headline["dtype"],
                "seed": self.rng.randrange(2**31), "timing": settings.__dict__}
        sleep = 4_000_000  # GPU cycles (about 2 ms) in which the host enqueues the calls; grown if short
        for _ in range(4):
            walls, enqueue = {}, 0.0
            for count in (0, k):
                best = math.inf
                for _ in range(3):
                    started = time.monotonic()
                    reply = sandbox_reply(self.sandbox.request({**base, "k": count, "sleep_cycles": sleep},
                                                               self.timeouts.task), "batched")
                    best = min(best, time.monotonic() - started)
                    with untrusted("the batch reply"):
                        enqueue = max(enqueue, wire.number(reply, "enqueue_s"))
                walls[count] = best
            if enqueue < 0.5 * walls[0]:
                break
            # a busy-wait of several times the enqueue (at the ~2 GHz of a datacenter GPU's clock, or more)
            sleep = int(max(4 * sleep, 5 * enqueue * 2e9))
        else:
            return  # the host could not queue the batch inside any busy-wait tried: no verdict from the clock
        per_call_ms = (walls[k] - walls[0]) / k * 1e3
        headline["judge_clock_ms"] = per_call_ms
        if per_call_ms < settings.floor_slack * headline["floor_ms"]:
            # a sandbox that answered the batch without running it: what its clock saw cannot move the bytes
            raise CandidateFailure("too_fast", f"the judge's clock saw {per_call_ms * 1e3:.1f} us a call at "
                                               f"{headline['shape']}, under the physical floor")
        if per_call_ms > 0 and claimed < 0.5 * per_call_ms:
            raise CandidateFailure("too_fast", f"reported {claimed * 1e3:.1f} us a call at {headline['shape']}, but "
                                               f"the judge's clock saw {per_call_ms * 1e3:.1f} us a call")


def _parts(result: dict) -> list[float]:
    parts = result.get("seconds")
    return [float(p) for p in parts[:4] if isinstance(p, (int, float))] if isinstance(parts, list) else []


def _numel(shape: Shape) -> int:
    return math.prod(shape.dims.values())


def _samples(result: dict) -> dict[str, list[float]]:
    samples = result.get("samples_ms") if isinstance(result, dict) else None
    if not isinstance(samples, dict) or "candidate" not in samples or "eager" not in samples \
            or "compile" not in samples:
        raise CandidateFailure("protocol", "timing without the candidate's, eager's and compile's samples")
    clean = {}
    for name, values in samples.items():
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for v in values):
            raise CandidateFailure("protocol", f"timing samples of {str(name)[:30]} are not positive numbers")
        clean[str(name)[:30]] = [float(v) for v in values]
    return clean
