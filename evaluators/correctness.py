"""Dynamic correctness checks of one candidate, run inside a worker process.

Each check plants a condition that a cheat or a careless kernel would trip over: fresh random inputs for
every call, NaN-poisoned free memory before each call, the reference computed between candidate calls,
inputs compared with clones, storage overlap, layout, a second set of inputs, a repeat for determinism.
"""
from __future__ import annotations

import contextlib
import random
from typing import Callable

import torch

from kernels import DTYPES, OpSpec, Shape

from .checker import as_outputs, compare_outputs
from .verdict import CandidateFailure


class LaunchCounter:
    """Counts Triton kernel launches; the worker installs it on Triton's launch path before any candidate loads."""

    def __init__(self) -> None:
        self.count = 0


# a second poison, finite and representable in every dtype, to tell unwritten output from computed NaN
SENTINEL = 4096.0  # exact in float16 and bfloat16


def poison_free_memory(like: torch.Tensor, copies: int = 4, value: float = float("nan")) -> None:
    """Allocate blocks the size of the expected output, fill them with `value` (NaN) and free them.

    The allocator hands the same blocks back to the candidate's `torch.empty`, so an output element the
    kernel never writes reads as NaN instead of a plausible leftover (e.g. the reference's result).
    """
    blocks = [torch.empty_like(like).fill_(value) for _ in range(copies)]
    if like.is_cuda:
        torch.cuda.synchronize(like.device)
    del blocks


_ALLOCATORS = ("empty", "empty_like", "empty_strided")


@contextlib.contextmanager
def poisoned_allocations(value: float):
    """While a candidate runs, torch's uninitialised allocations come back filled with `value`.

    The allocator poisoning above depends on which freed block the allocator hands out, which on the CPU
    (plain malloc) is not reliable; this makes every `torch.empty*` output the candidate leaves unwritten
    read as the poison on any device. Integer tensors are left alone: NaN has no integer form.
    """
    originals = {name: getattr(torch, name) for name in _ALLOCATORS}

    def poisoning(original):
        def allocate(*args, **kwargs):
            out = original(*args, **kwargs)
            if out.is_floating_point():
                out.fill_(value)
            return out
        return allocate

    for name, original in originals.items():
        setattr(torch, name, poisoning(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _storage_span(t: torch.Tensor) -> tuple[int, int]:
    start = t.untyped_storage().data_ptr()
    return start, start + t.untyped_storage().nbytes()


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    a0, a1 = _storage_span(a)
    b0, b1 = _storage_span(b)
    return a0 < b1 and b0 < a1


class CorrectnessSuite:
    def __init__(self, entry: Callable, spec: OpSpec, device: str, counter: LaunchCounter, rng: random.Random):
        self.entry = entry
        self.spec = spec
        self.device = device
        self.counter = counter
        self.rng = rng

    def fresh_inputs(self, shape: Shape, dtype: torch.dtype) -> tuple:
        # a new seed every call: a candidate cannot learn the inputs of a check
        return self.spec.make_inputs(shape, dtype, self.rng.randrange(2**31), self.device)

    def call(self, inputs: tuple, expected: tuple[torch.Tensor, ...], poison: float = float("nan")):
        """One candidate call with poisoned memory, launch counting and input-mutation checks.

        `expected` holds one empty tensor per output with PyTorch's layout; the result keeps the op's
        structure (a tensor, or a tuple for an op with several outputs)."""
        clones = [a.clone() if isinstance(a, torch.Tensor) else a for a in inputs]
        for like in expected:
            poison_free_memory(like, value=poison)
        before = self.counter.count
        with poisoned_allocations(poison):
            out = self.entry(*inputs)
            _sync(self.device)
        if self.counter.count == before:
            raise CandidateFailure("no_kernel", "the call returned without launching a Triton kernel")
        for i, (arg, clone) in enumerate(zip(inputs, clones)):
            if isinstance(arg, torch.Tensor) and not torch.equal(arg, clone):
                raise CandidateFailure("input_mutation", f"argument {i} changed during the call")
        outs = self._structure(out, expected)
        for k, (o, like) in enumerate(zip(outs, expected)):
            what = f"output {k}" if len(expected) > 1 else "the output"
            for i, arg in enumerate(inputs):
                if isinstance(arg, torch.Tensor) and _overlaps(o, arg):
                    raise CandidateFailure("aliasing", f"{what} shares storage with argument {i}")
            for j in range(k):
                if _overlaps(o, outs[j]):
                    raise CandidateFailure("aliasing", f"{what} shares storage with output {j}")
            if o.dtype != like.dtype or o.shape != like.shape or o.stride() != like.stride():
                raise CandidateFailure(
                    "layout", f"{what}: got {o.dtype} {tuple(o.shape)} strides {o.stride()}, expected "
                              f"{like.dtype} {tuple(like.shape)} strides {like.stride()}")
            if o.device.type != like.device.type:
                raise CandidateFailure("layout", f"{what} on {o.device}, expected {like.device}")
        return out

    @staticmethod
    def _structure(out, expected: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if len(expected) == 1:
            if not isinstance(out, torch.Tensor):
                raise CandidateFailure("layout", f"returned {type(out).__name__}, expected a tensor")
            return (out,)
        if not isinstance(out, (tuple, list)) or len(out) != len(expected):
            got = f"{len(out)} values" if isinstance(out, (tuple, list)) else type(out).__name__
            raise CandidateFailure("layout", f"returned {got}, expected a tuple of {len(expected)} tensors")
        for k, o in enumerate(out):
            if not isinstance(o, torch.Tensor):
                raise CandidateFailure("layout", f"output {k} is {type(o).__name__}, expected a tensor")
        return tuple(out)

    def judge(self, out, inputs: tuple, dtype_key: str, failure_class: str, what: str,
              expected: tuple[torch.Tensor, ...] | None = None) -> dict:
        tol = self.spec.tolerances[dtype_key]
        result = compare_outputs(out, self.spec.reference(*inputs), tol.atol, tol.rtol)
        if not result.ok:
            cls = failure_class
            if result.nans and failure_class == "wrong_result" and expected is not None:
                cls = "stale_memory" if self._nan_is_poison(inputs, expected) else "wrong_result"
            raise CandidateFailure(cls, f"{what}: {result.summary()}")
        return result.to_dict()

    def _nan_is_poison(self, inputs: tuple, expected: tuple[torch.Tensor, ...]) -> bool:
        """Call again with a finite poison: unwritten output now reads the sentinel instead of NaN,
        while NaN the kernel computes itself stays NaN."""
        again = as_outputs(self.call(inputs, expected, poison=SENTINEL))
        return (not any(bool(torch.isnan(o).any()) for o in again)
                and any(bool((o == SENTINEL).any()) for o in again))

    def check_shape(self, shape: Shape, dtype_key: str) -> dict:
        dtype = DTYPES[dtype_key]
        tol = self.spec.tolerances[dtype_key]
        inputs_a = self.fresh_inputs(shape, dtype)
        # the expected layout is PyTorch's own op's, probed on other inputs so that the first candidate
        # call below runs before any reference of its inputs exists
        with torch.no_grad():
            probe = as_outputs(self.spec.eager(*self.fresh_inputs(shape, dtype)))
            expected_like = tuple(torch.empty_strided(p.shape, p.stride(), dtype=p.dtype, device=p.device)
                                  for p in probe)
            del probe
        out_a = self.call(inputs_a, expected_like)
        first = self.judge(out_a, inputs_a, dtype_key, "wrong_result", f"{shape} {dtype_key}", expected_like)
        # second inputs whose PyTorch result was just computed and freed: a candidate that returns stale
        # memory or a cached result fails here (the poisoning overwrites what the reference left)
        inputs_b = self.fresh_inputs(shape, dtype)
        with torch.no_grad():
            self.spec.eager(*inputs_b)
        out_b = self.call(inputs_b, expected_like)
        self.judge(out_b, inputs_b, dtype_key, "caching", f"{shape} {dtype_key}, second inputs")
        # the same inputs again must give the same output within rounding
        out_b2 = self.call(inputs_b, expected_like)
        again = compare_outputs(out_b2, out_b, tol.atol / 10, tol.rtol / 10)
        if not again.ok:
            raise CandidateFailure("nondeterminism", f"{shape} {dtype_key}, repeated call: {again.summary()}")
        return {"shape": shape.name, "dims": dict(shape.dims), "dtype": dtype_key, "passed": True,
                "max_abs": first["max_abs"], "rel_l2": first["rel_l2"]}
