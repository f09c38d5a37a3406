"""`evolve bench`: the kernels in use, one per op, through the full evaluator (CPU: correctness only)."""
from __future__ import annotations

import json
import os
import subprocess

from conftest import EVOLVE, PROJECT_ROOT, render


def bench(config_file, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([*EVOLVE, "--config", str(config_file), "bench", "nanogpt", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600, env=env)


def test_bench_uses_the_seed_without_a_promoted_kernel(config_file):
    done = bench(config_file, "--ops", "layer_norm", "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["device"]["arch"] == "interpreter"
    rows = data["rows"]
    assert [r["op"] for r in rows] == ["layer_norm"]
    assert rows[0]["kernel"] == "seed"
    verdict = rows[0]["verdict"]
    assert verdict["status"] == "accepted"
    assert verdict["timing"] is None  # the interpreter measures no speed
    assert verdict["checks"] and all(c["passed"] for c in verdict["checks"])


def test_bench_uses_the_promoted_kernel(config_file, tmp_path):
    from memory import INTERPRETER_GPU, KernelStore

    source = render(tmp_path, ROWS_PER_PROGRAM=2, NUM_WARPS=2).read_text()
    store = KernelStore(tmp_path / "memory")
    store.promote("layer_norm", INTERPRETER_GPU, source, metrics={}, lineage={"run": "r1", "candidate": "c001"})
    done = bench(config_file, "--ops", "layer_norm", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "promoted" in done.stdout and "accepted" in done.stdout
    assert "Speed not measured" in done.stdout


def test_bench_rejects_an_unknown_op(config_file):
    done = bench(config_file, "--ops", "no_such_op", "--device", "cpu")
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "no_such_op" in done.stderr


def test_bench_judges_ops_at_once_on_two_workers_in_the_order_asked(config_file):
    done = bench(config_file, "--ops", "bias_gelu,layer_norm", "--device", "cpu", "--workers", "2", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)["rows"]
    # the order asked for, whichever verdict came first
    assert [r["op"] for r in rows] == ["bias_gelu", "layer_norm"]
    assert all(r["verdict"]["status"] == "accepted" for r in rows)
    assert done.stderr.count("judged in") == 2


def test_bench_rejects_negative_workers(config_file):
    done = bench(config_file, "--ops", "layer_norm", "--device", "cpu", "--workers=-1")
    assert done.returncode == 2
    assert done.stderr.startswith("error:") and "workers" in done.stderr
