"""`evolve eval OP FILE --json` as a user runs it: one JSON verdict on stdout, exit 0 accepted / 1 rejected or
failed / 2 usage error with one clear line on stderr and never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import EVOLVE, PROJECT_ROOT

CHEATS = Path(__file__).resolve().parent / "cheats"
FIXED_KEYS = {"op", "status", "failure", "checks", "timing", "device"}


def evolve(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # a plain terminal's width: a message that the console wraps shows up as more than one line
    env["COLUMNS"] = "80"
    return subprocess.run([*EVOLVE, "--config", str(config), *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def single_json_object(stdout: str) -> dict:
    """stdout holds exactly one JSON object and nothing else (json.loads rejects extra data)."""
    data = json.loads(stdout)
    assert isinstance(data, dict)
    return data


# ----------------------------------------------------------------------------- verdicts

@pytest.mark.parametrize("name, code, status, cls", [
    ("honest", 0, "accepted", None),
    ("zeros", 1, "rejected", "wrong_result"),
    ("mutates_input", 1, "rejected", "input_mutation"),
    ("torch_layer_norm", 1, "rejected", "static"),
])
def test_eval_json_verdict_and_exit_code(config_file: Path, name: str, code: int, status: str,
                                         cls: str | None) -> None:
    result = evolve(config_file, "eval", "layer_norm", str(CHEATS / f"{name}.py"), "--json", "--device", "cpu")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    data = single_json_object(result.stdout)
    assert FIXED_KEYS <= set(data)
    assert data["op"] == "layer_norm"
    assert data["status"] == status
    assert data["timing"] is None and data["device"]["arch"] == "interpreter"
    if cls is None:
        assert data["failure"] is None
        assert data["checks"] and all(c["passed"] for c in data["checks"])
    else:
        assert data["failure"]["class"] == cls and data["failure"]["detail"]


def test_candidate_prints_do_not_corrupt_the_json(config_file: Path) -> None:
    result = evolve(config_file, "eval", "layer_norm", str(CHEATS / "prints.py"), "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert single_json_object(result.stdout)["status"] == "accepted"


# ----------------------------------------------------------------------------- usage errors

def bad_config(config_file: Path) -> Path:
    # config_file ends in its [evaluator] table: the key lands there
    config_file.write_text(config_file.read_text() + "bogus_key = 1\n")
    return config_file


USAGE_ERRORS = {
    # case -> (args after --config, a fragment the message must hold)
    "unknown-op": (["eval", "no_such_op", str(CHEATS / "honest.py"), "--json", "--device", "cpu"],
                   "unknown op 'no_such_op'"),
    "missing-file": (["eval", "layer_norm", "tests/cheats/no_such_candidate.py", "--json", "--device", "cpu"],
                     "no such candidate file"),
    "device-cuda": (["eval", "layer_norm", str(CHEATS / "honest.py"), "--json", "--device", "cuda"],
                    "--device cuda"),
    "config-unknown-key": (["eval", "layer_norm", str(CHEATS / "honest.py"), "--json", "--device", "cpu"],
                           "bogus_key"),
}


def run_usage_error(case: str, config_file: Path) -> tuple[subprocess.CompletedProcess, str]:
    if case == "device-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    args, fragment = USAGE_ERRORS[case]
    config = bad_config(config_file) if case == "config-unknown-key" else config_file
    return evolve(config, *args), fragment


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_usage_error_exits_2_without_traceback(config_file: Path, case: str) -> None:
    result, fragment = run_usage_error(case, config_file)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stdout == ""
    message = " ".join(result.stderr.split())  # the message, however the console wrapped it
    assert message.startswith("error:")
    assert fragment in message




@pytest.mark.parametrize("case", [
    "unknown-op", "missing-file", "device-cuda",
    "config-unknown-key",
])
def test_usage_error_is_one_line(config_file: Path, case: str) -> None:
    result, _ = run_usage_error(case, config_file)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_missing_file_with_a_long_path_is_one_line(config_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "a_candidate_file_that_does_not_exist_with_a_long_descriptive_name.py"
    result = evolve(config_file, "eval", "layer_norm", str(missing), "--json", "--device", "cpu")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unknown_config_key_names_its_table(config_file: Path) -> None:
    result = evolve(bad_config(config_file), "eval", "layer_norm", str(CHEATS / "honest.py"), "--json",
                    "--device", "cpu")
    assert result.returncode == 2
    assert "[evaluator].bogus_key" in " ".join(result.stderr.split())
