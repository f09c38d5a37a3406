"""Where memory lives: an installed evolve (no config file found) keeps a user's runs and memory in a
workspace folder ($EVOLVE_WORKSPACE or the user's data folder), reads the shipped rulebook and kernels
beneath it as read-only defaults, and writes only on top of them."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import EVOLVE, PROJECT_ROOT


def test_workspace_memory_reads_the_shipped_one_beneath_and_writes_on_top(tmp_path, monkeypatch):
    from agents.config import resolve_config
    from memory import DEFAULT_MEMORY_ROOT, KernelStore, Rulebook

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EVOLVE_CONFIG", raising=False)
    monkeypatch.setenv("EVOLVE_WORKSPACE", str(tmp_path / "ws"))
    config = resolve_config(None, check_llm=False)
    assert config.run.runs_dir == tmp_path / "ws" / "runs" and config.run.memory_dir == tmp_path / "ws" / "memory"
    assert (config.run.memory_dir / "layers.toml").is_file()
    shipped = Rulebook.load(DEFAULT_MEMORY_ROOT)
    book = Rulebook.load(config.run.memory_dir)
    assert {r.id for r in book.rules} == {r.id for r in shipped.rules}
    store = KernelStore(config.run.memory_dir)
    shipped_kernel = KernelStore(DEFAULT_MEMORY_ROOT).best("layer_norm", "NVIDIA H100 80GB HBM3")
    assert shipped_kernel is not None
    assert store.best("layer_norm", "NVIDIA H100 80GB HBM3").sha256 == shipped_kernel.sha256
    # a promotion lands in the workspace; the shipped slot stays as it was
    before = (shipped_kernel.path.parent / "meta.toml").read_text()
    store.promote("layer_norm", "NVIDIA H100 80GB HBM3", shipped_kernel.source() + "\n# mine\n", {}, {"run": "r"})
    assert store.best("layer_norm", "NVIDIA H100 80GB HBM3").path.is_relative_to(tmp_path)
    assert (shipped_kernel.path.parent / "meta.toml").read_text() == before
    assert KernelStore(DEFAULT_MEMORY_ROOT).best("layer_norm", "NVIDIA H100 80GB HBM3").sha256 == shipped_kernel.sha256


def test_a_run_from_any_folder_writes_into_the_workspace_only(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "EVOLVE_CONFIG"}
    env["EVOLVE_WORKSPACE"] = str(tmp_path / "ws")
    anywhere = tmp_path / "anywhere"
    anywhere.mkdir()
    shipped_before = sorted(p.name for p in (PROJECT_ROOT / "runs").iterdir()) if (PROJECT_ROOT / "runs").is_dir() else []
    done = subprocess.run([*EVOLVE, "run", "fmha", "--budget", "1", "--device", "cpu", "--inference",
                           "--no-assemble"], cwd=anywhere, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = list((tmp_path / "ws" / "runs").glob("*-fmha"))
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file()
    assert not any(anywhere.iterdir())  # nothing written where it ran
    after = sorted(p.name for p in (PROJECT_ROOT / "runs").iterdir()) if (PROJECT_ROOT / "runs").is_dir() else []
    assert after == shipped_before  # nor into the project's own runs
    from agents.config import workspace_config

    monkeypatch.setenv("EVOLVE_WORKSPACE", str(tmp_path / "ws"))
    # every file the evaluator keeps across runs is the workspace's too
    evaluator = workspace_config(check_llm=False).evaluator
    assert evaluator.ceilings_cache.parent == evaluator.baselines_cache.parent == tmp_path / "ws" / "runs"
    listed = subprocess.run([*EVOLVE, "runs"], cwd=anywhere, env=env, capture_output=True, text=True, timeout=120)
    assert runs[0].name in listed.stdout
