"""The gradient tolerance where the exact gradient is 0: LayerNorm's weight gradient over constant rows.

A kernel that computes the mean in float32 is off by a rounding there, and relative to a zero reference any
error is infinite; it passes when it is no larger than the reference's own change at inputs moved by
rounding. A wrong gradient, or one off by far more than rounding, still fails.
"""
from __future__ import annotations

import torch

from evaluators.gradients import GRAD_TOLERANCES, autograd_of, compare_gradient, perturbed
from kernels import get_spec

SPEC = get_spec("layer_norm")
TOL = GRAD_TOLERANCES["float32"]


def _inputs(constant: bool):
    gen = torch.Generator().manual_seed(3)
    x = torch.full((2, 768), 0.7) if constant else torch.randn(2, 768, generator=gen)
    w, b = torch.randn(768, generator=gen), torch.randn(768, generator=gen)
    dy = torch.randn(2, 768, generator=gen)
    return (x, w, b, 1e-5), [dy]


def _grads(inputs, dys, seed: int):
    wanted = [0, 1, 2]
    return autograd_of(SPEC.reference, perturbed(inputs, wanted, torch.Generator().manual_seed(seed)), dys, wanted)


def _decide(grad, ref, inputs, dys, n):
    sticks = [autograd_of(SPEC.eager, inputs, dys, [0, 1, 2])[n], _grads(inputs, dys, 0)[n]]
    return compare_gradient(grad, ref, sticks, TOL)


def test_rounding_of_a_zero_weight_gradient_passes():
    inputs, dys = _inputs(constant=True)
    refs = autograd_of(SPEC.reference, inputs, dys, [0, 1, 2])
    assert float(refs[1].abs().max()) < 1e-12  # xhat is 0 on a constant row, to float64 rounding
    rounded = _grads(inputs, dys, seed=1)[1]  # what a float32 kernel may give: nonzero
    assert float(rounded.abs().max()) > 0
    result, _ = compare_gradient(rounded, refs[1], [], TOL)
    assert not result.ok  # the tolerance alone refuses it ...
    _, yardstick = _decide(rounded, refs[1], inputs, dys, 1)
    assert yardstick is not None  # ... the conditioning yardstick accepts it


def test_a_wrong_zero_weight_gradient_still_fails():
    inputs, dys = _inputs(constant=True)
    refs = autograd_of(SPEC.reference, inputs, dys, [0, 1, 2])
    wrong = refs[1] + 0.05 * dys[0][0]  # dw that counts dy once more
    _, yardstick = _decide(wrong, refs[1], inputs, dys, 1)
    assert yardstick is None


def test_the_yardstick_is_no_excuse_on_well_conditioned_rows():
    inputs, dys = _inputs(constant=False)
    refs = autograd_of(SPEC.reference, inputs, dys, [0, 1, 2])
    off = refs[0].clone()
    off[-1] *= 1.001  # the last row's dx a thousandth off
    _, yardstick = _decide(off, refs[0], inputs, dys, 0)
    assert yardstick is None
