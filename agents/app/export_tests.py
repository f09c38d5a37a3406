"""Tests of the exported package PACKAGE_NAME, run where it is installed (on a CPU through Triton's interpreter:
TRITON_INTERPRET=1 must be set before triton is imported, which the first lines here do)."""
from __future__ import annotations

import hashlib
import json
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

import PACKAGE_NAME  # noqa: E402
from PACKAGE_NAME.nanogpt import checks, choice  # noqa: E402
from PACKAGE_NAME.nanogpt.model import GPT, GPTConfig  # noqa: E402
from PACKAGE_NAME.nanogpt.patch import patch  # noqa: E402

ROOT = os.path.dirname(PACKAGE_NAME.__file__)
TINY = GPTConfig(block_size=16, vocab_size=29, n_layer=2, n_head=2, n_embd=32)


def _manifest() -> dict:
    with open(os.path.join(ROOT, "MANIFEST.json")) as f:
        return json.load(f)


def test_manifest_matches_the_shipped_kernels():
    manifest = _manifest()
    assert manifest["package"] == "PACKAGE_NAME" and manifest["kernels"]
    for kernel in manifest["kernels"]:
        path = os.path.join(ROOT, "shipped", kernel["op"], kernel["slot"], "kernel.py")
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == kernel["sha256"], path


def test_every_shipped_kernel_loads_for_its_gpu():
    from pathlib import Path

    for kernel in _manifest()["kernels"]:
        chosen = choice.shipped_choices(Path(ROOT) / "shipped", kernel["gpu"])
        assert chosen[kernel["op"]].source.startswith("shipped"), kernel


def test_the_ops_are_registered_under_the_packages_own_name():
    assert hasattr(torch.ops.PACKAGE_NAME, "layer_norm") and hasattr(torch.ops.PACKAGE_NAME, "attention_train")


def test_the_model_matches_pytorch():
    result = checks.parity(TINY, "cpu", "float32")
    assert result.passed, result.failures


def test_patch_matches_the_unpatched_model():
    torch.manual_seed(0)
    reference = GPT(TINY, "torch")
    patched = GPT(TINY, "torch")
    patched.load_state_dict(reference.state_dict())
    report = patch(patched)
    assert (report.layer_norms, report.attentions, report.mlps) == (2 * TINY.n_layer + 1, TINY.n_layer, TINY.n_layer)
    idx = torch.randint(0, TINY.vocab_size, (2, 16))
    targets = torch.randint(0, TINY.vocab_size, (2, 16))
    outputs = []
    for model in (reference, patched):
        logits, loss = model(idx, targets)
        loss.backward()
        outputs.append((logits, [p.grad for p in model.parameters()]))
    assert torch.allclose(outputs[0][0], outputs[1][0], atol=1e-5)
    for a, b in zip(outputs[0][1], outputs[1][1]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
