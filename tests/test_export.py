"""`evolve export`: a run's kernels as a package of their own, installed into a fresh virtual environment
where its own tests run (CPU, interpreter); and the bad inputs that get one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from conftest import EVOLVE, PROJECT_ROOT


def _evolve(config_file, *args, timeout=900):
    return subprocess.run([*EVOLVE, "--config", str(config_file), *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def promoted_run(tmp_path_factory):
    """A CPU run that promoted a bias_gelu kernel (the first accepted candidate of an empty slot)."""
    import shutil

    root = tmp_path_factory.mktemp("export")
    (root / "memory" / "lessons").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "memory" / "lessons" / "seed.toml", root / "memory" / "lessons" / "seed.toml")
    config = root / "config.toml"
    config.write_text('[model]\nassemble = false\n[run]\nruns_dir = "runs"\nmemory_dir = "memory"\nbudget = 1\ntraining = false\n'
                      'device = "cpu"\ncoder = "template"\n[evaluator]\nceilings_cache = "runs/ceilings.json"\n')
    done = _evolve(config, "run", "nanogpt", "--ops", "bias_gelu")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return config


def _fresh_venv(path: Path) -> Path:
    """A new virtual environment that sees this interpreter's torch, triton and pytest but not this project
    (a .pth names the site-packages folder; the project's editable-install hooks there are not processed)."""
    venv.EnvBuilder(with_pip=True).create(path)
    python = path / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    import pytest as _pytest
    import torch
    import triton

    shared = sorted({str(Path(m.__file__).resolve().parent.parent) for m in (torch, triton, _pytest)})
    Path(target, "shared_site.pth").write_text("\n".join(shared) + "\n")
    return python


def test_export_installs_and_passes_its_own_tests(promoted_run, tmp_path):
    out = tmp_path / "pkg"
    done = _evolve(promoted_run, "export", "latest", "--out", str(out), "--name", "my_kernels")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["package"] == "my_kernels" and manifest["promoted_by_this_run"] == ["bias_gelu"]
    assert [k["op"] for k in manifest["kernels"]] == ["bias_gelu"] and len(manifest["kernels"][0]["sha256"]) == 64
    assert "torch>=2.4" in (out / "pyproject.toml").read_text()
    python = _fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TRITON_INTERPRET"] = "1"
    # the project is not importable there: the package must stand alone
    assert subprocess.run([str(python), "-c", "import kernels"], capture_output=True, cwd=tmp_path,
                          env=env).returncode != 0
    # built by this environment's setuptools (the fresh one's may be too old to build wheels), installed there
    wheel = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(out)], capture_output=True, text=True, timeout=600)
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    (built,) = (tmp_path / "dist").glob("my_kernels-0.1.0-*.whl")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(built)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    tests = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(out / "tests")],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "5 passed" in tests.stdout


def test_export_bad_input_is_one_line(promoted_run, tmp_path, config_file):
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    for args, message in ((("latest", "--out", str(full)), "exists and is not empty"),
                          (("no-such-run", "--out", str(tmp_path / "a")), "no-such-run"),
                          (("latest", "--out", str(tmp_path / "b"), "--name", "Bad-Name"), "package name")):
        done = _evolve(promoted_run, "export", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    # a run that promoted nothing (its one op's summary says so)
    from agents.run_folder import RunFolder

    folder = RunFolder.create(tmp_path / "runs", "nanogpt", "", {"name": "interpreter", "arch": "interpreter"},
                              ["bias_gelu"])
    folder.finish("complete")
    done = _evolve(config_file, "export", str(folder.path), "--out", str(tmp_path / "c"))
    assert done.returncode == 2 and "promoted no kernel" in done.stderr


def test_a_folder_that_is_no_run_is_one_line(config_file, tmp_path):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    broken = tmp_path / "broken-run"
    broken.mkdir()
    (broken / "summary.json").write_text("{ not json")
    for folder, message in ((empty, "folder without summary.json"), (broken, "cannot be read")):
        for command in (("export", str(folder), "--out", str(tmp_path / "out")), ("report", str(folder), "--html")):
            done = _evolve(config_file, *command)
            assert done.returncode == 2 and message in done.stderr, (command, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1
