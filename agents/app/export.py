"""`evolve export RUN --out DIR`: the kernels as a pip-installable package of their own.

The package is a copy of kernels/ (which imports nothing else of the project, so it stands alone) under
its own import name, plus every promoted kernel in memory, one folder per op and GPU, and a MANIFEST.json
(GPU, architecture, torch/triton versions, kernel hashes, speedups, run ids). At import it installs, per op,
the kernel promoted for the GPU it runs on, else the seed. Its custom ops are registered under its own
name, so it coexists with this project in one process. It carries its own tests (CPU, interpreter).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tomllib
from pathlib import Path

from agents.run_folder import RunFolder

KERNELS = Path(__file__).resolve().parent.parent.parent / "kernels"
TESTS = Path(__file__).resolve().parent / "export_tests.py"


class ExportError(ValueError):
    """An export that cannot be made: one line for the user."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ExportError(f"package name {name!r}: lowercase letters, digits and underscores, starting with a letter")
    return name


def _promoted_slots(memory_dir: Path) -> list[tuple[str, Path, dict]]:
    """(op, slot folder, meta) for every promoted kernel under memory/promoted/."""
    slots = []
    for kernel in sorted((Path(memory_dir) / "promoted").glob("*/*/kernel.py")):
        meta_path = kernel.with_name("meta.toml")
        meta = tomllib.loads(meta_path.read_text()) if meta_path.is_file() else {}
        slots.append((kernel.parent.parent.name, kernel.parent, meta))
    return slots


def export_run(folder: RunFolder, memory_dir: Path, out: Path, name: str = "evolved_kernels",
               version: str = "0.1.0") -> dict:
    """Write the package into `out` (which must not exist or be empty); returns its manifest."""
    name = _check_name(name)
    summary = folder.summary
    promoted_ops = [op for op, o in summary.get("ops", {}).items() if o.get("promoted")]
    if not promoted_ops:
        raise ExportError(f"run {summary.get('run_id')} promoted no kernel: nothing of its own to export")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; choose a new folder")
    slots = _promoted_slots(memory_dir)
    package = out / "src" / name
    shutil.copytree(KERNELS, package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    kernels = []
    for op, slot, meta in slots:
        target = package / "shipped" / op / slot.name
        target.mkdir(parents=True)
        shutil.copy2(slot / "kernel.py", target / "kernel.py")
        (target / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        kernels.append({"op": op, "gpu": meta.get("gpu", slot.name), "slot": slot.name,
                        "sha256": _sha256(target / "kernel.py"), "metrics": meta.get("metrics", {}),
                        "run": (meta.get("lineage") or {}).get("run"),
                        "candidate": (meta.get("lineage") or {}).get("candidate"),
                        "template_point": (meta.get("lineage") or {}).get("params")})
    (package / "shipped" / "__init__.py").write_text('"""Promoted kernels, one folder per op and GPU."""\n')
    # the package picks its kernels when it is imported: this GPU's promoted ones, else the seeds
    init = package / "__init__.py"
    init.write_text(init.read_text() + _SELECT)
    device = summary.get("device") or {}
    manifest = {
        "package": name, "version": version, "exported_from": summary.get("run_id"),
        "device": {k: device.get(k) for k in ("name", "arch", "torch", "triton")},
        "promoted_by_this_run": promoted_ops, "kernels": kernels,
        "seeds": "ops without a kernel for the running GPU use the seed kernels of this package",
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, default=str))
    shutil.copy2(out / "MANIFEST.json", package / "MANIFEST.json")
    (out / "pyproject.toml").write_text(_PYPROJECT.format(dist=name.replace("_", "-"), version=version, name=name))
    (out / "README.md").write_text(_README.format(name=name, run=summary.get("run_id"), count=len(kernels),
                                                  gpus=", ".join(sorted({k["gpu"] for k in kernels})) or "none"))
    (out / "tests").mkdir()
    (out / "tests" / "test_package.py").write_text(TESTS.read_text().replace("PACKAGE_NAME", name))
    return manifest


_SELECT = '''

def _select_kernels() -> None:
    """Per op, the kernel shipped for the GPU this process runs on; the seeds elsewhere (and on the CPU)."""
    from pathlib import Path

    import torch

    from .nanogpt import choice

    if torch.cuda.is_available():
        choice.install(choice.shipped_choices(Path(__file__).parent / "shipped", torch.cuda.get_device_name()))


_select_kernels()
'''

_PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "{version}"
description = "Triton kernels for NanoGPT's ops, evolved and verified, with the model built from them"
requires-python = ">=3.10"
dependencies = ["torch>=2.4", "triton>=3.2"]

[project.optional-dependencies]
data = ["numpy"]
test = ["pytest>=8"]

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
"{name}" = ["MANIFEST.json", "shipped/*/*/*"]
'''

_README = '''# {name}

Triton kernels for NanoGPT's ops (embedding, layer_norm, add_layer_norm, bias_gelu, attention,
cross_entropy), each with its Triton backward, exposed as torch.library custom ops (they run eagerly, under
torch.compile and in CUDA graphs), the NanoGPT model built from them, and `patch(model)` for a
nanoGPT-style model. Exported from run {run}: {count} promoted kernels ({gpus}); on any other device the
seed kernels run. MANIFEST.json lists every kernel with its hash, speedups and the run that promoted it.

```python
import {name}
from {name}.nanogpt.model import GPT, config_named
model = GPT(config_named("gpt2"), backend="triton")

from {name}.nanogpt.patch import patch
print(patch(my_nanogpt_model))       # swaps LayerNorm, attention and the MLP in place
```

Tests: `TRITON_INTERPRET=1 python -m pytest tests` (on a CPU, through Triton's interpreter).
'''
