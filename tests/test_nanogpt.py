"""The NanoGPT build: nanoGPT's names and init, the Triton backend against the PyTorch backend (logits, loss,
every gradient), the custom ops' registrations, kernel choices, data, checkpoints and the train/sample CLI.

On the CPU the Triton backend runs in the interpreter, so the models here are tiny (2 layers, heads of 16).
"""
from __future__ import annotations

import math
import pickle
import subprocess

import numpy as np
import pytest
import torch

from kernels import get_spec
from kernels.nanogpt import checks, choice
from kernels.nanogpt import data as D
from kernels.nanogpt.model import GPT, GPTConfig, config_named
from kernels.nanogpt.train import (CheckpointError, Stepper, TrainConfig, load_checkpoint, lr_at, save_checkpoint)

from conftest import EVOLVE, HAS_GPU, PROJECT_ROOT

TINY = GPTConfig(block_size=16, vocab_size=29, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(autouse=True)
def seed_kernels():
    choice.install(None)
    yield
    choice.install(None)


def test_module_and_state_dict_names_are_nanogpts():
    model = GPT(TINY)
    keys = set(model.state_dict())
    for i in range(TINY.n_layer):
        for name in ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                     "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                     "mlp.c_proj.weight", "mlp.c_proj.bias"):
            assert f"transformer.h.{i}.{name}" in keys
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "transformer.ln_f.bias",
            "lm_head.weight"} <= keys
    # nothing else: no buffers of ours leak into checkpoints
    assert len(keys) == 12 * TINY.n_layer + 5
    assert set(GPTConfig.__dataclass_fields__) == {"n_layer", "n_head", "n_embd", "block_size", "vocab_size",
                                                  "dropout", "bias"}


def test_invariants_hold_and_catch_an_untied_model():
    model = GPT(config_named("shakespeare-char", n_layer=4), "triton")
    assert all(i.passed for i in checks.invariants(model)), checks.invariants(model)
    untied = GPT(config_named("shakespeare-char", n_layer=4))
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    torch.nn.init.normal_(untied.transformer.h[0].attn.c_proj.weight, std=0.02)
    failed = {i.name for i in checks.invariants(untied) if not i.passed}
    assert failed == {"weight tying", "residual projection init"}


def test_stability_floor_is_checked():
    choice.install({"attention": choice.from_params("attention", {"MASK_VALUE": float("-inf")}, "test")})
    failed = [i for i in checks.invariants(GPT(TINY, "triton")) if not i.passed]
    assert [i.name for i in failed] == ["stability floor"]


@pytest.mark.parametrize("bias", [True, False])
def test_triton_backend_matches_torch_backend(bias):
    config = GPTConfig(**{**TINY.__dict__, "bias": bias})
    result = checks.parity(config, "cpu", "float32", seed=3)
    assert result.passed, result.failures
    assert result.errors["logits"] < 1e-5
    assert len(result.errors) == 2 + len(list(GPT(config).parameters()))


def _wrong_layer_norm(x, weight, bias, eps):
    from kernels.layer_norm import SEED_PARAMS, _layer_norm_fwd

    # a plausible bug: the variance without eps's share of the rows (eps ten times too large)
    return _layer_norm_fwd(x, weight, bias, eps * 10 + 0.05, **SEED_PARAMS)


def test_parity_catches_a_wrong_kernel():
    choice.install({"layer_norm": choice.KernelChoice("layer_norm", "planted", None, _wrong_layer_norm)})
    result = checks.parity(TINY, "cpu", "float32")
    assert not result.passed
    assert result.errors["logits"] > 1e-3


def test_a_points_backward_knobs_drive_the_models_backward():
    """A promoted point's backward knobs reach the model's backward (here: other tiles and strips, and the
    embedding's deterministic scatter), and the gradients stay PyTorch's."""
    points = {"layer_norm": {"BWD_TILE": 1024, "SUM_BLOCK_N": 64}, "add_layer_norm": {"BWD_PROGRAMS_PER_SM": 1},
              "embedding": {"BWD_ATOMIC": False}, "attention": {"DQ_BLOCK_M": 32, "DKDV_BLOCK_N": 32},
              "bias_gelu": {"BWD_BLOCK_M": 2}, "cross_entropy": {"FUSED_BLOCK_V": 256}}
    choice.install({op: choice.from_params(op, point, "test") for op, point in points.items()})
    for op, point in points.items():
        assert {k: choice.backward_of(op)[k] for k in point} == point
        assert set(choice.backward_of(op)) == set(get_spec(op).template.backward_knobs)
    result = checks.parity(TINY, "cpu", "float32", seed=5)
    assert result.passed, result.failures


def test_a_point_recorded_before_backward_knobs_keeps_the_seeds_backward():
    spec = get_spec("layer_norm")
    forward_only = spec.template.forward_point(spec.template.seed)
    chosen = choice.from_params("layer_norm", forward_only, "an older promotion")
    assert chosen.backward_params() == spec.template.backward_point(spec.template.seed)


def test_inference_returns_the_last_position_and_rejects_long_sequences():
    model = GPT(TINY, "triton").eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 10))
    with torch.no_grad():
        logits, loss = model(idx)
    assert logits.shape == (2, 1, TINY.vocab_size) and loss is None
    with pytest.raises(ValueError, match="block size is 16"):
        model(torch.zeros((1, 17), dtype=torch.long))


def test_generate_extends_the_sequence():
    model = GPT(TINY).eval()
    out = model.generate(torch.zeros((1, 3), dtype=torch.long), 20, top_k=5)
    assert out.shape == (1, 23) and int(out.max()) < TINY.vocab_size


def test_custom_ops_pass_opcheck():
    from kernels.nanogpt import ops

    x = torch.randn(5, 32, requires_grad=True)
    w, b = torch.randn(32, requires_grad=True), torch.randn(32, requires_grad=True)
    r = torch.randn(5, 32, requires_grad=True)
    qkv = torch.randn(2, 16, 96, requires_grad=True)
    logits = torch.randn(7, 29, requires_grad=True)
    for op, args in ((ops._layer_norm, (x, w, b, 1e-5)), (ops._add_layer_norm, (x, r, w, b, 1e-5)),
                     (ops._bias_gelu, (x, b)), (ops._attention_train, (qkv, 2)),
                     (ops._cross_entropy, (logits.detach(), torch.randint(0, 29, (7,))))):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_triton_backend_under_torch_compile_matches_eager():
    # aot_eager traces through the fake implementations and the registered backwards without codegen
    torch.manual_seed(0)
    model = GPT(TINY, "triton")
    idx = torch.randint(0, TINY.vocab_size, (2, 16))
    targets = torch.randint(0, TINY.vocab_size, (2, 16))
    _, eager_loss = model(idx, targets)
    eager_loss.backward()
    eager_grad = model.transformer.h[1].mlp.c_fc.weight.grad.clone()
    model.zero_grad(set_to_none=True)
    _, compiled_loss = torch.compile(model, backend="aot_eager", fullgraph=True)(idx, targets)
    compiled_loss.backward()
    assert torch.allclose(compiled_loss, eager_loss, atol=1e-6)
    assert torch.allclose(model.transformer.h[1].mlp.c_fc.weight.grad, eager_grad, atol=1e-6)


def test_kernel_choices_from_a_template_point_and_a_file(tmp_path):
    from kernels import get_spec

    with pytest.raises(choice.KernelChoiceError, match="outside its values"):
        choice.from_params("layer_norm", {"ROWS_PER_PROGRAM": 3}, "test")
    with pytest.raises(choice.KernelChoiceError, match="unknown op"):
        choice.install({"softmax": choice.seed("layer_norm")})
    space = get_spec("layer_norm").template
    path = tmp_path / "ln.py"
    path.write_text(space.render(space.validate({"ROWS_PER_PROGRAM": 8, "SINGLE_TILE": False})))
    choice.install({"layer_norm": choice.from_file("layer_norm", path, "layer_norm"),
                    "add_layer_norm": choice.from_params("add_layer_norm", {"ROWS_PER_PROGRAM": 8}, "test")})
    assert checks.parity(TINY, "cpu", "float32").passed
    broken = tmp_path / "broken.py"
    broken.write_text("def something_else():\n    pass\n")
    with pytest.raises(choice.KernelChoiceError, match="defines no layer_norm"):
        choice.from_file("layer_norm", broken, "layer_norm")


def test_promoted_kernels_become_the_models_choices(memory_root):
    from agents.app.assembly import kernel_choices
    from kernels import get_spec
    from memory import INTERPRETER_GPU, KernelStore

    space = get_spec("bias_gelu").template
    point = space.validate({"BLOCK_M": 4})
    KernelStore(memory_root).promote("bias_gelu", INTERPRETER_GPU, space.render(point), {"speedup_eager": 1.0},
                                     {"run": "r", "candidate": "c1", "params": point})
    choices = kernel_choices(memory_root, INTERPRETER_GPU)
    assert choices["bias_gelu"].params == point and choices["bias_gelu"].source.startswith("promoted")
    assert choices["layer_norm"].source == "seed"
    assert kernel_choices(memory_root, "some other gpu")["bias_gelu"].source == "seed"


def test_patch_swaps_a_nanogpt_style_model_in_place_and_back():
    from kernels.nanogpt.patch import patch, unpatch

    torch.manual_seed(0)
    reference = GPT(TINY)
    patched = GPT(TINY)
    patched.load_state_dict(reference.state_dict())
    report = patch(patched)
    assert (report.layer_norms, report.attentions, report.mlps) == (5, 2, 2) and not report.skipped
    idx = torch.randint(0, TINY.vocab_size, (2, 16))
    targets = torch.randint(0, TINY.vocab_size, (2, 16))
    results = []
    for model in (reference, patched):
        logits, loss = model(idx, targets)
        loss.backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    for name, grad in results[0][1].items():
        assert torch.allclose(grad, results[1][1][name], atol=1e-5, rtol=1e-4), name
    assert set(patched.state_dict()) == set(reference.state_dict())
    # the kernels ran: a planted wrong LayerNorm shows in the patched model's output only
    choice.install({"layer_norm": choice.KernelChoice("layer_norm", "planted", None, _wrong_layer_norm)})
    with torch.no_grad():
        assert not torch.allclose(patched(idx)[0], reference(idx)[0], atol=1e-3)
        unpatch(patched)
        assert torch.allclose(patched(idx)[0], reference(idx)[0], atol=1e-6)
    exact = GPT(TINY)
    for block in exact.transformer.h:
        block.mlp.gelu = torch.nn.GELU()
    kept = patch(exact)
    assert kept.mlps == 0 and len(kept.skipped) == 2 and "exact GELU" in kept.skipped[0]


# ----------------------------------------------------------------------------- training

def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, learning_rate=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) < lr_at(9, cfg) < 1e-3
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(99, cfg) == pytest.approx(1e-4, rel=0.05)


def test_a_training_step_lowers_the_loss_and_checkpoints_round_trip(tmp_path):
    data = D.load_data()
    config = GPTConfig(**{**TINY.__dict__, "vocab_size": data.vocab_size})
    torch.manual_seed(0)
    model = GPT(config)
    cfg = TrainConfig(batch_size=8, block_size=16, steps=40, learning_rate=3e-3, warmup_steps=2, dtype="float32")
    from kernels.nanogpt.train import train

    history, stepper = train(model, data, cfg, "cpu")
    assert history[-1].loss < history[0].loss - 0.5
    path = save_checkpoint(tmp_path / "ckpt.pt", model, stepper.optimizer, 40, 1.0, cfg, data.itos)
    loaded, state = load_checkpoint(path, "triton", expect=config)
    assert state["iter_num"] == 40 and state["itos"] == data.itos
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # nanoGPT's compiled models save with a prefix; that loads too
    state["model"] = {f"_orig_mod.{k}": v for k, v in state["model"].items()}
    torch.save(state, tmp_path / "compiled.pt")
    load_checkpoint(tmp_path / "compiled.pt")
    with pytest.raises(CheckpointError, match="another config: n_embd 32 \\(not 64\\)"):
        load_checkpoint(path, expect=GPTConfig(**{**config.__dict__, "n_embd": 64}))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_float16_training_refuses_a_cuda_graph():
    with pytest.raises(ValueError, match="gradient scaler"):
        Stepper(GPT(TINY), TrainConfig(dtype="float16", cuda_graph=True), "cuda" if HAS_GPU else "cuda:0")


# ----------------------------------------------------------------------------- data

def test_generated_corpus_is_deterministic_and_learnable_sized():
    a, b = D.generate_corpus(5000, seed=1), D.generate_corpus(5000, seed=1)
    assert a == b and a != D.generate_corpus(5000, seed=2)
    data = D.load_data()
    assert data.vocab_size <= 65 and len(data.train) > 300_000
    assert data.decode(data.encode("The king")) == "The king"


def test_text_files_prepared_folders_and_bad_paths(tmp_path):
    text = tmp_path / "play.txt"
    text.write_text("to be or not to be, that is the question\n" * 50)
    data = D.load_data(text)
    assert data.vocab_size == len(set(text.read_text()))
    folder = D.write_prepared(data, tmp_path / "prepared")
    again = D.load_data(folder)
    assert np.array_equal(again.train, data.train) and again.itos == data.itos
    with open(folder / "meta.pkl", "rb") as f:
        assert pickle.load(f)["vocab_size"] == data.vocab_size
    with pytest.raises(D.DataError, match="does not exist"):
        D.load_data(tmp_path / "nowhere")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(D.DataError, match="holds no text"):
        D.load_data(tmp_path / "empty.txt")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    with pytest.raises(D.DataError, match="not a text file"):
        D.load_data(tmp_path / "blob.bin")
    (tmp_path / "half").mkdir()
    with pytest.raises(D.DataError, match="no train.bin or val.bin"):
        D.load_data(tmp_path / "half")
    x, y = D.get_batch(data.train, 3, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1])


# ----------------------------------------------------------------------------- the commands

def _evolve(config_file, *args, timeout=600):
    return subprocess.run([*EVOLVE, "--config", str(config_file), *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_train_and_sample_commands(config_file, tmp_path):
    out = tmp_path / "train"
    done = _evolve(config_file, "train", "shakespeare-char", "--backend", "torch", "--steps", "4", "--out", str(out),
                   "--device", "cpu")
    assert done.returncode == 0, done.stderr + done.stdout
    assert (out / "ckpt.pt").is_file() and "checkpoint" in done.stdout
    sampled = _evolve(config_file, "sample", str(out / "ckpt.pt"), "--tokens", "30", "--prompt", "The", "--device", "cpu")
    assert sampled.returncode == 0, sampled.stderr
    assert sampled.stdout.startswith("The") and len(sampled.stdout.rstrip("\n")) == 33


def test_train_both_backends_writes_their_curves(config_file, tmp_path):
    import json

    out = tmp_path / "both"
    done = _evolve(config_file, "train", "shakespeare-char", "--backend", "both", "--steps", "3", "--out", str(out),
                   "--device", "cpu")
    assert done.returncode == 0, done.stderr + done.stdout
    curves = json.loads((out / "curves.json").read_text())["convergence"]
    assert len(curves["torch"]) == len(curves["triton"]) == len(curves["logged"]) == 3
    assert curves["torch_repeat"] is None  # PyTorch on the CPU is deterministic: no second run
    assert "loss curves" in done.stdout


@pytest.mark.parametrize("args, message", [
    (("train", "gpt5"), "unknown model config 'gpt5'"),
    (("train", "shakespeare-char", "--data", "/no/such/file.txt"), "does not exist"),
    (("train", "shakespeare-char", "--backend", "jax"), "unknown backend 'jax'"),
    (("train", "shakespeare-char", "--steps", "0"), "--steps must be at least 1"),
    (("sample", "/no/such/ckpt.pt"), "does not exist"),
    (("bench", "nanogpt", "--model", "gpt5"), "unknown model config 'gpt5'"),
])
def test_bad_input_is_one_line(config_file, args, message):
    done = _evolve(config_file, *args, "--device", "cpu")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_checkpoint_of_another_config_and_a_prompt_longer_than_the_block(config_file, tmp_path):
    data = D.load_data()
    other = GPTConfig(**{**TINY.__dict__, "vocab_size": data.vocab_size, "n_embd": 64})
    path = save_checkpoint(tmp_path / "other.pt", GPT(other), None, 0, 0.0, TrainConfig(), data.itos)
    done = _evolve(config_file, "train", "shakespeare-char", "--init-from", str(path), "--steps", "1",
                   "--device", "cpu", "--out", str(tmp_path / "t"))
    assert done.returncode == 2 and "checkpoint of another config: n_embd 64 (not 32)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    ok = save_checkpoint(tmp_path / "ok.pt", GPT(GPTConfig(**{**other.__dict__, "n_embd": 32})), None, 0, 0.0,
                         TrainConfig(), data.itos)
    long = _evolve(config_file, "sample", str(ok), "--prompt", "The king " * 3, "--device", "cpu")
    assert long.returncode == 2 and "longer than the block size 16" in long.stderr


def test_model_bench_needs_a_gpu(config_file):
    if HAS_GPU:
        pytest.skip("a GPU is present")
    done = _evolve(config_file, "bench", "nanogpt", "--model", "shakespeare-char")
    assert done.returncode == 2 and "needs CUDA" in done.stderr


def test_convergence_allows_pytorchs_own_run_to_run_gap_and_no_more():
    base = [4.0, 2.0, 1.0]
    ours = [4.0, 2.0, 1.03]  # 3% off at the last step
    assert not checks.Convergence(3, [0, 1, 2], base, ours).passed
    assert checks.Convergence(3, [0, 1, 2], base, ours, torch_repeat_loss=[4.0, 2.0, 0.965]).passed
    assert not checks.Convergence(3, [0, 1, 2], base, ours, torch_repeat_loss=[4.0, 2.0, 0.99]).passed
    assert not checks.Convergence(3, [0, 1, 2], base, [4.0, 2.0, float("nan")]).passed


def test_run_ends_with_the_assembly_stage(config_file):
    """`evolve run nanogpt` builds the model from what it promoted: invariants, parity and 30 steps of both
    backends from one init on the same batches, within 2% of each other (on the CPU: a tiny model, float32)."""
    import json

    done = _evolve(config_file, "run", "nanogpt", "--ops", "bias_gelu", "--budget", "1", "--device", "cpu",
                   "--assemble", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = sorted((config_file.parent / "runs").glob("*-nanogpt"))
    summary = json.loads((runs[-1] / "summary.json").read_text())
    model = summary["model"]
    assert model["passed"], model
    assert model["kernels"]["bias_gelu"].startswith("promoted")
    assert model["convergence"]["steps"] == 30 and model["convergence"]["worst_relative_gap"] <= 0.02
    assert all(math.isfinite(v) for v in model["convergence"]["triton"])
    assert model["convergence"]["triton"][-1] < model["convergence"]["triton"][0]
    assert "assembly" in done.stdout
    report = _evolve(config_file, "report", "latest")
    assert report.returncode == 0 and "NanoGPT build: passed" in report.stdout
    assert "convergence: 30 steps" in report.stdout


# ----------------------------------------------------------------------------- on a GPU

@pytest.mark.gpu
def test_cuda_graph_step_trains_like_the_eager_step():
    data = D.load_data()
    config = config_named("shakespeare-char", vocab_size=data.vocab_size, n_layer=2)
    curves = {}
    for graph in (False, True):
        torch.manual_seed(0)
        model = GPT(config, "triton").cuda()
        cfg = TrainConfig(batch_size=8, block_size=64, steps=12, dtype="bfloat16", cuda_graph=graph, log_every=1)
        from kernels.nanogpt.train import train

        history, _ = train(model, data, cfg, "cuda")
        curves[graph] = [p.loss for p in history]
    assert np.allclose(curves[False], curves[True], rtol=2e-2), curves


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_parity_on_the_gpu(dtype):
    result = checks.parity(config_named("shakespeare-char", n_layer=2, block_size=128), "cuda", dtype)
    assert result.passed, result.failures
