"""The judge of a differentiable candidate's backward, drawn like the forward's: in the judge's process, from
the bytes a sandbox wrote back.

A candidate is differentiable when its outputs require a gradient for inputs that do (its entry applies a
torch.autograd.Function whose backward launches Triton kernels). The judge then sends output gradients
(dy) of its own, asks the sandbox for the gradient of every floating input, and checks each one against
autograd of the op's float32/float64 reference: its layout (a tensor of the input's shape and dtype), its
storage (shared with no input, output or dy; gradients may share with each other, as autograd's own add
returns one tensor for both summands), its values (within the op's gradient tolerance, or within three
times PyTorch's own error in that dtype), that the inputs and dy are unchanged, that the backward launched a
Triton kernel, and that the same inputs give the same gradients again: bitwise makes it deterministic,
within rounding makes it a kernel with atomics, beyond rounding is nondeterminism.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch

from kernels import DTYPES, OpSpec, Shape, Tolerance

from .arena import dtype_name, layout, storage_bytes
from .checker import as_outputs, compare
from .judge import (INTERPRETER_THOROUGH_NUMEL, NAN, Expected, Judge, expected_layout, failed_check, sandbox_reply,
                    timed_check, untrusted)
from .verdict import CandidateFailure

# |g - ref| <= atol * rms(ref) + rtol * |ref|: the absolute part scales with the gradient's own size, since a
# weight's gradient sums thousands of rows and an activation's is a thousandth of the loss's
GRAD_TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(atol=1e-4, rtol=1e-4),
    "float16": Tolerance(atol=1e-2, rtol=1e-2),
    "bfloat16": Tolerance(atol=4e-2, rtol=2e-2),
}
# a gradient outside its tolerance still passes within this many times PyTorch's own error in the dtype, or
# the reference's own change when its inputs move by CONDITIONING_STEP (about two float32 roundings)
EAGER_FACTOR = 3.0
CONDITIONING_STEP = 2.0**-22


def floating(inputs: tuple) -> list[int]:
    """Positions of the inputs that get a gradient: every floating tensor."""
    return [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor) and a.is_floating_point()]


def output_gradients(expected: list[Expected], gen: torch.Generator) -> list[torch.Tensor | None]:
    """Random gradients for every floating output, in its dtype and shape; a loss's is a scalar of either
    sign, so a backward that ignores dy (or takes it as 1) is wrong."""
    dys = []
    for e in expected:
        if not e.dtype.is_floating_point:
            dys.append(None)
            continue
        if not e.shape:
            sign = 1.0 if torch.rand((), generator=gen) < 0.5 else -1.0
            dys.append(torch.tensor(sign * (0.5 + 1.5 * float(torch.rand((), generator=gen))), dtype=e.dtype))
        else:
            dys.append(torch.randn(e.shape, generator=gen).to(e.dtype))
    return dys


def autograd_of(fn, inputs: tuple, dys: list, wanted: list[int]) -> list[torch.Tensor]:
    """Gradients of fn's outputs (dotted with dys) for the inputs at `wanted`, by autograd, in their dtypes;
    an input the outputs do not depend on gets zeros."""
    leaves = list(inputs)
    for i in wanted:
        leaves[i] = inputs[i].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        outs = as_outputs(fn(*leaves))
    pairs = [(o, dy.to(o.device, o.dtype)) for o, dy in zip(outs, dys) if dy is not None and o.requires_grad]
    grads = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wanted], [d for _, d in pairs],
                                allow_unused=True)
    return [torch.zeros_like(leaves[i]) if g is None else g.detach() for i, g in zip(wanted, grads)]


def perturbed(inputs: tuple, wanted: list[int], gen: torch.Generator) -> tuple:
    """The inputs at `wanted` in float32, each element moved by CONDITIONING_STEP of itself, either way: where
    the answer changes that much, a kernel computing in float32 cannot be held to more."""
    out = list(inputs)
    for i in wanted:
        x = inputs[i].detach().float()
        signs = torch.randint(0, 2, x.shape, generator=gen).to(x.device, torch.float32) * 2 - 1
        out[i] = x * (1 + CONDITIONING_STEP * signs)
    return tuple(out)


def compare_gradient(grad: torch.Tensor, ref: torch.Tensor, yardsticks: list[torch.Tensor], tol: Tolerance):
    """The comparison that decides one gradient: within tolerance of the reference, or else no more than
    EAGER_FACTOR times the larger of two yardsticks' errors in max-abs and relative L2 (with no non-finite
    values): PyTorch's own, and the reference's at inputs moved by rounding (an ill-conditioned gradient,
    a weight's over constant rows whose exact value is 0, is as uncertain as that)."""
    rms = float(ref.double().pow(2).mean().sqrt()) if ref.numel() else 0.0
    result = compare(grad, ref, tol.atol * max(rms, 1e-30), tol.rtol)
    if result.ok or not yardsticks or result.nonfinite:
        return result, None
    sticks = [compare(y, ref, tol.atol * max(rms, 1e-30), tol.rtol) for y in yardsticks]
    sticks = [y for y in sticks if not y.nonfinite]
    if not sticks:
        return result, None
    widest = max(sticks, key=lambda y: (y.max_abs, y.rel_l2))
    within = result.max_abs <= EAGER_FACTOR * max(y.max_abs for y in sticks) and \
        result.rel_l2 <= EAGER_FACTOR * max(y.rel_l2 for y in sticks)
    return result, (widest if within else None)


def repeat_plan(large: list[bool], device: str, rng) -> list[bool]:
    """Which backward calls run twice, for the determinism verdict. On a GPU every one: an atomic scatter's
    order varies only where its adds contend (shakespeare's 65-token table, not a 9-position edge shape), so a
    sample of calls can call a kernel with atomics deterministic by luck, and two verdicts of one kernel would
    disagree. On the interpreter, whose programs run one after another and whose atomics are therefore in order,
    about a third of the calls and at least one, never a large one (each interpreted call is slow)."""
    if device == "cuda":
        return [True] * len(large)
    repeats = [rng.random() < 0.35 and not big for big in large]
    small = [i for i, big in enumerate(large) if not big]
    if small and not any(repeats):
        repeats[rng.choice(small)] = True
    return repeats


class GradientJudge:
    """The backward checks of one candidate, through the forward judge's sandbox and arena."""

    def __init__(self, judge: Judge):
        self.judge = judge
        self.spec: OpSpec = judge.spec
        self.deterministic = True
        self.differentiable: bool | None = None

    # ------------------------------------------------------------ one forward and backward

    def grad_call(self, inputs: tuple, expected: list[Expected], dys: list, poison: float | None,
                  reuse: bool = False) -> list[torch.Tensor] | None:
        """The gradients the sandbox computed for the floating inputs, as the judge's tensors; None when the
        candidate is forward-only."""
        judge, sandbox = self.judge, self.judge.sandbox
        tensors = [a for a in inputs if isinstance(a, torch.Tensor)]
        wanted = floating(inputs)
        # the judge's own host copies, written into the arena and held against it after the call
        storages = [storage_bytes(t).cpu() for t in tensors]
        dy_storages = [storage_bytes(d).cpu() for d in dys if d is not None]
        grad_sizes = [inputs[i].numel() * inputs[i].element_size() for i in wanted]
        sizes = ([s.numel() for s in storages] + [s.numel() for s in dy_storages] + grad_sizes
                 + [s.numel() for s in storages] + [s.numel() for s in dy_storages])
        offsets, total = layout(sizes)
        sandbox.grow(total)
        arena = sandbox.arena
        it = iter(offsets)
        args, t = [], 0
        for a in inputs:
            if isinstance(a, torch.Tensor):
                offset = next(it)
                arena.view(offset, storages[t].numel()).copy_(storages[t])
                args.append({"tensor": _meta(a, storages[t]), "offset": offset})
                t += 1
            else:
                args.append({"value": a})
        grad_outputs, k = [], 0
        for d in dys:
            if d is None:
                grad_outputs.append(None)
                continue
            offset = next(it)
            arena.view(offset, dy_storages[k].numel()).copy_(dy_storages[k])
            grad_outputs.append({"tensor": _meta(d, dy_storages[k]), "offset": offset})
            k += 1
        grads = [{"offset": next(it), "nbytes": n} for n in grad_sizes]
        after = iter([{"offset": next(it), "nbytes": s.numel()} for s in storages])
        after_regions = [next(after) if isinstance(a, torch.Tensor) else None for a in inputs]
        dys_after = [{"offset": next(it), "nbytes": s.numel()} for s in dy_storages]
        dys_after_regions, k = [], 0
        for d in dys:
            dys_after_regions.append(None if d is None else dys_after[k])
            k += d is not None
        timeout = judge.timeouts.compile if judge.phase == "compile" else judge.timeouts.check
        reply = sandbox.request({"kind": "grad", "phase": judge.phase, "inputs": args, "grad_outputs": grad_outputs,
                                 "grads": grads, "after": after_regions, "dys_after": dys_after_regions,
                                 "poison": poison, "reuse": reuse}, timeout)
        judge.phase = "check"
        judge.calls += 1
        reply = sandbox_reply(reply, "graded")
        with untrusted("the backward's reply"):
            return self._read(reply, inputs, dys, storages, dy_storages, after_regions, dys_after_regions, grads,
                              wanted)

    def _read(self, reply, inputs, dys, storages, dy_storages, after_regions, dys_after_regions, regions, wanted):
        differentiable = reply["differentiable"] is True
        if self.differentiable is None:
            self.differentiable = differentiable
        elif differentiable != self.differentiable:
            raise CandidateFailure("wrong_gradient", "the outputs need a gradient on some calls and not on others")
        if not differentiable:
            return None
        if not isinstance(reply.get("backward_launches"), int) or reply["backward_launches"] <= 0:
            raise CandidateFailure("no_kernel", "the backward returned without launching a Triton kernel")
        arena = self.judge.sandbox.arena
        metas = reply["grads"]
        if not isinstance(metas, list) or len(metas) < len(wanted):
            raise CandidateFailure("protocol", "the reply lists fewer gradients than inputs that need one")
        out = []
        for i, meta, region in zip(wanted, metas, regions):
            what = f"the gradient of argument {i}"
            a = inputs[i]
            if not isinstance(meta, dict) or meta.get("type") == "None":
                raise CandidateFailure("wrong_gradient", f"{what} is missing (None)")
            if meta.get("type") != "Tensor":
                raise CandidateFailure("layout", f"{what} is {str(meta.get('type'))[:80]}, expected exactly torch.Tensor")
            for group, word in (("inputs", "argument"), ("outputs", "output"), ("dys", "the gradient of output")):
                if meta.get(f"overlaps_{group}"):
                    raise CandidateFailure("aliasing", f"{what} shares storage with {word} {meta[f'overlaps_{group}'][0]}")
            if meta.get("overlaps_previous"):
                raise CandidateFailure("caching", f"{what} reuses the storage of an earlier call's result")
            got = (meta.get("dtype"), tuple(meta.get("shape") or ()))
            if got != (dtype_name(a.dtype), tuple(a.shape)):
                raise CandidateFailure("layout", f"{what}: got {got[0]} {got[1]}, expected {dtype_name(a.dtype)} "
                                                 f"{tuple(a.shape)}")
            if meta.get("device") != self.judge.device:
                raise CandidateFailure("layout", f"{what} on {str(meta.get('device'))[:20]}")
            if not meta.get("written"):
                raise CandidateFailure("protocol", f"{what} was not written back")
        t = 0
        for i, a in enumerate(inputs):
            if isinstance(a, torch.Tensor):
                region = after_regions[i]
                if not torch.equal(arena.view(region["offset"], region["nbytes"]), storages[t]):
                    raise CandidateFailure("input_mutation", f"argument {i} changed during the forward or backward")
                t += 1
        k = 0
        for j, d in enumerate(dys):
            if d is not None:
                region = dys_after_regions[j]
                if not torch.equal(arena.view(region["offset"], region["nbytes"]), dy_storages[k]):
                    raise CandidateFailure("input_mutation", f"the gradient of output {j} (dy) changed in the backward")
                k += 1
        for i, region in zip(wanted, regions):
            raw = arena.view(region["offset"], region["nbytes"]).to(self.judge.device, copy=True)
            out.append(raw.view(inputs[i].dtype).reshape(inputs[i].shape))
        return out

    # ------------------------------------------------------------ checks

    def decide(self, grads: list[torch.Tensor], inputs: tuple, dys: list, dtype_key: str, where: str,
               failure_class: str = "wrong_gradient") -> dict:
        wanted = floating(inputs)
        dys_here = [None if d is None else d.to(self.judge.device) for d in dys]
        refs = autograd_of(self.spec.reference, inputs, dys_here, wanted)
        tol = self.spec.grad_tolerances.get(dtype_key) if self.spec.grad_tolerances else None
        tol = tol or GRAD_TOLERANCES[dtype_key]
        yardsticks = None
        worst = {"max_abs": 0.0, "rel_l2": 0.0, "eager_rel_l2": None}
        for n, (i, g, r) in enumerate(zip(wanted, grads, refs)):
            result, yardstick = compare_gradient(g, r, [], tol)
            if not result.ok:
                if yardsticks is None:
                    gen = torch.Generator().manual_seed(0)
                    yardsticks = list(zip(autograd_of(self.spec.eager, inputs, dys_here, wanted),
                                          autograd_of(self.spec.reference, perturbed(inputs, wanted, gen),
                                                      dys_here, wanted)))
                result, yardstick = compare_gradient(g, r, list(yardsticks[n]), tol)
                if yardstick is None:
                    raise CandidateFailure(failure_class, f"{where}, gradient of argument {i}: {result.summary()}")
                worst["eager_rel_l2"] = max(worst["eager_rel_l2"] or 0.0, yardstick.rel_l2)
            worst["max_abs"] = max(worst["max_abs"], result.max_abs)
            worst["rel_l2"] = max(worst["rel_l2"], result.rel_l2)
        return worst

    def check_shape(self, shape: Shape, dtype_key: str, variant: str | None, repeat: bool, refill: bool) -> dict | None:
        judge = self.judge
        dtype = DTYPES[dtype_key]
        expected = expected_layout(self.spec, judge.fresh_inputs(shape, dtype))
        gen = torch.Generator().manual_seed(judge.rng.randrange(2**31))
        label = f"{shape} {dtype_key}{f' ({variant} inputs)' if variant else ''}"
        inputs = judge.fresh_inputs(shape, dtype, variant)
        dys = output_gradients(expected, gen)
        poison = NAN if judge.rng.random() < 0.7 else None
        grads = self.grad_call(inputs, expected, dys, poison)
        if grads is None:
            return None
        first = self.decide(grads, inputs, dys, dtype_key, f"backward at {label}")
        if repeat:
            # the same inputs and dy in the same buffers: bitwise the same is deterministic; within rounding is
            # a backward with atomics (the order of its float additions varies); beyond that, a race
            again = self.grad_call(inputs, expected, dys, NAN if judge.rng.random() < 0.5 else None, reuse=True)
            for i, (g, h) in zip(floating(inputs), zip(grads, again)):
                if torch.equal(g, h) or (torch.isnan(g).all() and torch.isnan(h).all()):
                    continue
                self.deterministic = False
                tol = GRAD_TOLERANCES[dtype_key]
                rms = float(g.double().pow(2).mean().sqrt())
                same = compare(h, g, tol.atol * max(rms, 1e-30) / 10, tol.rtol / 10)
                if not same.ok:
                    raise CandidateFailure("nondeterminism", f"backward at {label}, repeated call, gradient of "
                                                             f"argument {i}: {same.summary()}")
        if refill:
            # new values in the very same buffers: gradients cached by address are stale now
            inputs_c = judge.fresh_inputs(shape, dtype)
            dys_c = output_gradients(expected, gen)
            grads_c = self.grad_call(inputs_c, expected, dys_c, None, reuse=True)
            if grads_c is None:
                raise CandidateFailure("wrong_gradient", "the outputs need a gradient on some calls and not on others")
            self.decide(grads_c, inputs_c, dys_c, dtype_key, f"backward at {shape} {dtype_key}, buffers refilled",
                        "caching")
        return {"shape": shape.name, "dims": dict(shape.dims), "dtype": dtype_key, "passed": True,
                "variant": variant, "max_abs": first["max_abs"], "rel_l2": first["rel_l2"],
                "eager_rel_l2": first["eager_rel_l2"]}

    def run(self, dtypes: tuple[str, ...], checks: list[dict], plan: list | None = None,
            reached: Callable[[int], None] | None = None) -> dict | None:
        """Every shape in every dtype (the forward's plan, in a new random order, unless `plan` is given, with
        `reached` told of each check before its turn, as in Judge.run_checks); None for a forward-only
        candidate, else the backward block of the verdict without its timing."""
        plan = self.judge.plan(dtypes) if plan is None else plan
        # as in the forward's checks: the interpreter checks a shape of thousands of rows in one call
        large = [self.judge.device == "cpu" and math.prod(s.dims.values()) > INTERPRETER_THOROUGH_NUMEL
                 for _, s, _, _ in plan]
        repeats = repeat_plan(large, self.judge.device, self.judge.rng)
        for index, ((dtype_key, shape, variant, refill), repeat, big) in enumerate(zip(plan, repeats, large)):
            if reached is not None:
                reached(index)
            with self.judge.turn():
                started = time.perf_counter()
                try:
                    result = self.check_shape(shape, dtype_key, variant, repeat, refill and not big)
                except CandidateFailure as failure:
                    checks.append(failed_check(shape, dtype_key, variant, failure, started))
                    raise
            if result is None:
                return None
            checks.append(timed_check(result, started))
        return {"checks": checks, "deterministic": self.deterministic, "timing": None}


def _meta(t: torch.Tensor, storage: torch.Tensor) -> dict:
    return {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "strides": list(t.stride()),
            "storage_offset": t.storage_offset(), "storage_nbytes": storage.numel()}

