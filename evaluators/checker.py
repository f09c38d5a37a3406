"""The one numerical comparison used by the evaluator and the tests alike.

An output matches when every element satisfies |out - ref| <= atol + rtol * |ref| and it has no NaN or
Inf where the reference is finite. The report keeps max-abs and relative-L2 errors and counts, so a
failure says how wrong, not only that it is wrong.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch


# elements compared at a time: the float64 temporaries of a GPT-2 logits gradient (412M elements) would take
# ~20 GB at once; in chunks they stay near 1.5 GB wherever the comparison runs
CHUNK = 1 << 25


@dataclass(frozen=True)
class Comparison:
    ok: bool
    max_abs: float
    rel_l2: float
    mismatches: int       # elements outside atol + rtol * |ref|
    nonfinite: int        # NaN/Inf in the output where the reference is finite
    nans: int             # of those, NaN (NaN-poisoned memory that was never written shows up here)
    numel: int
    atol: float
    rtol: float
    output: int | None = None  # which output of an op with several, when this is about one of them
    # the mismatch farthest outside its tolerance: where it is, what came and what was expected
    worst_index: tuple[int, ...] | None = None
    worst_got: float | None = None
    worst_expected: float | None = None

    def summary(self) -> str:
        if self.ok:
            return f"max_abs {self.max_abs:.3g}, rel_l2 {self.rel_l2:.3g}"
        where = f"output {self.output}: " if self.output is not None else ""
        parts = [f"{where}{self.mismatches}/{self.numel} elements off (max_abs {self.max_abs:.3g}, rel_l2 {self.rel_l2:.3g}, "
                 f"atol {self.atol:g}, rtol {self.rtol:g})"]
        if self.nonfinite:
            parts.append(f"{self.nonfinite} non-finite where the reference is finite ({self.nans} NaN)")
        if self.worst_index is not None:
            parts.append(f"worst at {list(self.worst_index)}: {self.worst_got:.9g} where {self.worst_expected:.9g} "
                         "was expected")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        index.append(flat % size if size else 0)
        flat //= max(size, 1)
    return tuple(reversed(index))


def compare(out: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> Comparison:
    """Compare a candidate's output with a higher-precision reference of the same shape, in float64 on the
    reference's device (a GPU's in the judge: the CPU took a minute and a half for one logits gradient)."""
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"shape {tuple(out.shape)} differs from the reference's {tuple(ref.shape)}")
    device = ref.device
    o_all = out.detach().reshape(-1)
    r_all = ref.detach().reshape(-1)
    numel = r_all.numel()
    mismatches = nonfinite = nans = 0
    max_abs = err_sq = ref_sq = 0.0
    worst = None  # (excess, flat index, got, expected)
    for start in range(0, numel, CHUNK):
        o = o_all[start:start + CHUNK].to(device=device, dtype=torch.float64)
        r = r_all[start:start + CHUNK].to(torch.float64)
        ref_finite = torch.isfinite(r)
        nonfinite_mask = ~torch.isfinite(o) & ref_finite
        nonfinite += int(nonfinite_mask.sum())
        nans += int((torch.isnan(o) & ref_finite).sum())
        diff = (o - r).abs()
        allowed = atol + rtol * r.abs()
        # where the reference itself is not finite, the output must be the same non-finite value
        same_special = (o == r) | (torch.isnan(o) & torch.isnan(r))
        within = torch.where(ref_finite, diff <= allowed, same_special)
        off = int((~within).sum())
        if off:
            mismatches += off
            # non-finite answers and wrong specials rank above every finite excess
            excess = torch.where(within, torch.full_like(diff, -1.0),
                                 torch.where(ref_finite & torch.isfinite(o), diff - allowed, torch.full_like(diff, float("inf"))))
            at = int(excess.argmax())
            if worst is None or float(excess[at]) > worst[0]:
                worst = (float(excess[at]), start + at, float(o[at]), float(r[at]))
        finite_diff = torch.where(ref_finite & torch.isfinite(o), diff, torch.zeros_like(diff))
        if finite_diff.numel():
            max_abs = max(max_abs, float(finite_diff.max()))
        err_sq += float(finite_diff.pow(2).sum())
        ref_sq += float(torch.where(ref_finite, r, torch.zeros_like(r)).pow(2).sum())
    if nonfinite:
        max_abs = float("inf")
    rel_l2 = float("inf") if nonfinite else math.sqrt(err_sq) / max(math.sqrt(ref_sq), 1e-30)
    where = {}
    if worst is not None:
        where = {"worst_index": _unravel(worst[1], tuple(ref.shape)), "worst_got": worst[2], "worst_expected": worst[3]}
    return Comparison(ok=mismatches == 0, max_abs=max_abs, rel_l2=rel_l2, mismatches=mismatches,
                      nonfinite=nonfinite, nans=nans, numel=numel, atol=atol, rtol=rtol, **where)


def as_outputs(value) -> tuple:
    """An op's result as a tuple: ops with one output return a tensor, ops with several a tuple."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def compare_outputs(out, ref, atol: float, rtol: float) -> Comparison:
    """Compare every output of an op with its reference; the first failing one speaks for the call,
    otherwise the worst errors over all outputs."""
    outs, refs = as_outputs(out), as_outputs(ref)
    if len(outs) != len(refs):
        raise ValueError(f"{len(outs)} outputs, the reference has {len(refs)}")
    several = len(outs) > 1
    results = [replace(compare(o, r, atol, rtol), output=i if several else None)
               for i, (o, r) in enumerate(zip(outs, refs))]
    for result in results:
        if not result.ok:
            return result
    return Comparison(ok=True, max_abs=max(r.max_abs for r in results), rel_l2=max(r.rel_l2 for r in results),
                      mismatches=0, nonfinite=0, nans=0, numel=sum(r.numel for r in results), atol=atol, rtol=rtol)
