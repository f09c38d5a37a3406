"""The evaluator on an op with two outputs (add_layer_norm returns the sum and its LayerNorm): each output is
checked for layout, aliasing, unwritten memory and values, and a wrong structure is a layout failure.

The cheats wrap the honest seed: its entry is renamed and a new entry tampers with what it returns."""
from __future__ import annotations

from pathlib import Path

import pytest

from evaluators import Evaluator, EvaluatorSettings
from evaluators.checker import compare_outputs
from kernels import get_spec

import torch

OP = "add_layer_norm"
SPEC = get_spec(OP)
ARGS = "x, residual, weight, bias, eps"

TAMPER = {
    # returns only the normalised output
    "one_output": ("s, y = _honest({args})\n    return y", "layout"),
    # three values where the op has two
    "three_outputs": ("s, y = _honest({args})\n    return s, y, y", "layout"),
    # the two outputs swapped: both have the right layout, the values are wrong
    "swapped": ("s, y = _honest({args})\n    return y, s", "wrong_result"),
    # the second output is the first one again: the same storage
    "same_storage": ("s, y = _honest({args})\n    return s, s", "aliasing"),
    # the second output is fresh memory the kernel never wrote
    "unwritten_second": ("s, y = _honest({args})\n    return s, torch.empty_like(y)", "stale_memory"),
    # the sum aliases an input: the residual stream written in place is not the contract
    "sum_is_input": ("s, y = _honest({args})\n    return x, y", "aliasing"),
}


def cheat_source(body: str) -> str:
    space = SPEC.template
    honest = space.render(space.validate({}))
    # the honest entry keeps working under another name; the tampering entry calls it
    honest = honest.replace(f"def {SPEC.entry}(", "def _honest(")
    return honest + f"\n\ndef {SPEC.entry}({ARGS}):\n    " + body.format(args=ARGS) + "\n"


@pytest.fixture(scope="module")
def evaluator():
    with Evaluator(EvaluatorSettings(device="cpu")) as ev:
        yield ev


def test_honest_two_output_candidate_is_accepted(evaluator, tmp_path: Path):
    path = tmp_path / "honest.py"
    space = SPEC.template
    path.write_text(space.render(space.validate({})))
    verdict = evaluator.evaluate(OP, path, dtypes=("float32",))
    assert verdict.accepted, verdict.reason()


@pytest.mark.parametrize("name", sorted(TAMPER))
def test_tampered_outputs_are_caught(evaluator, tmp_path: Path, name: str):
    body, expected = TAMPER[name]
    path = tmp_path / f"{name}.py"
    path.write_text(cheat_source(body))
    verdict = evaluator.evaluate(OP, path, dtypes=("float32",))
    assert not verdict.accepted
    assert verdict.failure_class == expected, verdict.reason()


def test_compare_outputs_names_the_failing_output():
    ref = (torch.ones(4), torch.zeros(3))
    ok = compare_outputs((torch.ones(4), torch.zeros(3)), ref, 1e-6, 1e-6)
    assert ok.ok and ok.numel == 7 and ok.output is None
    bad = compare_outputs((torch.ones(4), torch.full((3,), 0.5)), ref, 1e-6, 1e-6)
    assert not bad.ok and bad.output == 1 and bad.mismatches == 3
    assert bad.summary().startswith("output 1:")
    with pytest.raises(ValueError):
        compare_outputs((torch.ones(4),), ref, 1e-6, 1e-6)


def test_compare_outputs_single_tensor_is_unchanged():
    one = compare_outputs(torch.ones(5), torch.ones(5) * 2, 0.1, 0.0)
    assert not one.ok and one.output is None and not one.summary().startswith("output")
