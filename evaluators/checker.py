"""The one numerical comparison used by the evaluator and the tests alike.

An output matches when every element satisfies |out - ref| <= atol + rtol * |ref| and it has no NaN or
Inf where the reference is finite. The report keeps max-abs and relative-L2 errors and counts, so a
failure says how wrong, not only that it is wrong.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch


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

    def summary(self) -> str:
        if self.ok:
            return f"max_abs {self.max_abs:.3g}, rel_l2 {self.rel_l2:.3g}"
        where = f"output {self.output}: " if self.output is not None else ""
        parts = [f"{where}{self.mismatches}/{self.numel} elements off (max_abs {self.max_abs:.3g}, rel_l2 {self.rel_l2:.3g}, "
                 f"atol {self.atol:g}, rtol {self.rtol:g})"]
        if self.nonfinite:
            parts.append(f"{self.nonfinite} non-finite where the reference is finite ({self.nans} NaN)")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def compare(out: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> Comparison:
    """Compare a candidate's output with a higher-precision reference of the same shape."""
    if tuple(out.shape) != tuple(ref.shape):
        raise ValueError(f"shape {tuple(out.shape)} differs from the reference's {tuple(ref.shape)}")
    o = out.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    ref_finite = torch.isfinite(r)
    nonfinite_mask = ~torch.isfinite(o) & ref_finite
    nonfinite = int(nonfinite_mask.sum())
    nans = int((torch.isnan(o) & ref_finite).sum())
    diff = (o - r).abs()
    # where the reference itself is not finite, the output must be the same non-finite value
    same_special = (o == r) | (torch.isnan(o) & torch.isnan(r))
    within = torch.where(ref_finite, diff <= atol + rtol * r.abs(), same_special)
    mismatches = int((~within).sum())
    finite_diff = torch.where(ref_finite & torch.isfinite(o), diff, torch.zeros_like(diff))
    max_abs = float(finite_diff.max()) if finite_diff.numel() else 0.0
    if nonfinite:
        max_abs = float("inf")
    ref_norm = float(torch.where(ref_finite, r, torch.zeros_like(r)).norm())
    err_norm = float(finite_diff.norm())
    rel_l2 = float("inf") if nonfinite else err_norm / max(ref_norm, 1e-30)
    return Comparison(ok=mismatches == 0, max_abs=max_abs, rel_l2=rel_l2, mismatches=mismatches,
                      nonfinite=nonfinite, nans=nans, numel=o.numel(), atol=atol, rtol=rtol)


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
