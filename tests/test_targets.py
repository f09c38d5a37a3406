"""Targets as data: the shipped fmha, microgpt and nanogpt files, a target file of one's own, and the
one-line errors a bad one gets."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import EVOLVE, PROJECT_ROOT


def _evolve(config_file, *args, timeout=600):
    return subprocess.run([*EVOLVE, "--config", str(config_file), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=PROJECT_ROOT)


def test_the_chain_is_shipped_as_data():
    from kernels import OPS, TARGET_FILES, TARGETS

    assert TARGETS["fmha"] == ("attention",)
    assert TARGETS["microgpt"] == ("embedding", "rms_norm", "attention", "cross_entropy")
    assert TARGETS["nanogpt"] == ("embedding", "layer_norm", "attention", "add_layer_norm", "bias_gelu",
                                  "cross_entropy")
    assert [TARGET_FILES[t].follows for t in ("fmha", "microgpt", "nanogpt")] == ["", "fmha", "microgpt"]
    assert TARGET_FILES["nanogpt"].model == "gpt2" and not TARGET_FILES["fmha"].model
    assert "rms_norm" in OPS


@pytest.mark.parametrize("target", ["fmha", "microgpt"])
def test_fmha_and_microgpt_run_on_the_cpu(config_file, tmp_path, target):
    from kernels import TARGETS

    done = _evolve(config_file, "run", target, "--budget", "1", "--device", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.name.endswith(target)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "complete" and list(summary["ops"]) == list(TARGETS[target])
    assert all(o["accepted"] == 1 for o in summary["ops"].values())
    assert "model" not in summary  # no model of their own to assemble


def test_a_target_file_of_ones_own_times_the_shapes_it_names(config_file, tmp_path):
    from agents.app.runner import evaluator_settings, resolve_target
    from agents.config import load_config

    path = tmp_path / "mine.toml"
    path.write_text('[target]\nname = "mine"\nops = ["rms_norm"]\n[shapes]\nrms_norm = ["gpt2-B8-T1024"]\n')
    target = resolve_target(str(path))
    assert target.ops == ("rms_norm",) and target.shapes == {"rms_norm": ("gpt2-B8-T1024",)}
    settings = evaluator_settings(load_config(config_file, check_llm=False), "cpu", target)
    from evaluators import Evaluator

    spec = Evaluator(settings).spec("rms_norm")
    assert spec.headline_shape().name == "gpt2-B8-T1024" and [s.name for s in spec.timed_shapes()] == ["gpt2-B8-T1024"]
    assert len(spec.shapes) == len(Evaluator(evaluator_settings(load_config(config_file), "cpu")).spec("rms_norm").shapes)
    done = _evolve(config_file, "run", str(path), "--budget", "1", "--device", "cpu")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("text,message", [
    ('[target]\nops = ["softmax"]\n', "unknown op(s) softmax"),
    ('[target]\nops = ["rms_norm"]\ncolour = "red"\n', "unknown key(s) in [target]: colour"),
    ('[target]\nops = ["rms_norm"]\n[shapes]\nrms_norm = ["no-such-shape"]\n', "unknown shape(s) no-such-shape"),
    ('[target]\nops = []\n', "non-empty list"),
    ('ops = [', "not a readable target file"),
])
def test_a_bad_target_file_is_one_line(config_file, tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    done = _evolve(config_file, "run", str(path), "--budget", "1", "--device", "cpu")
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_missing_target_file_is_one_line(config_file, tmp_path):
    missing = _evolve(config_file, "run", str(tmp_path / "absent.toml"))
    assert missing.returncode == 2 and "no target file" in missing.stderr


def test_a_training_run_checks_and_records_the_backward(config_file, tmp_path):
    done = _evolve(config_file, "run", "fmha", "--budget", "1", "--device", "cpu", "--training")
    assert done.returncode == 0, done.stdout + done.stderr
    (run,) = [p for p in (tmp_path / "runs").iterdir() if p.name.endswith("fmha")]
    summary = json.loads((run / "summary.json").read_text())
    best = summary["ops"]["attention"]["best"]
    assert best["backward"] is True and best["deterministic"] is True  # the seed's dq kernel has no atomics
    verdicts = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()
                if '"kind": "verdict"' in line]
    assert verdicts and all(v["backward"]["checks"] for v in verdicts)
    assert "determ." in done.stdout
