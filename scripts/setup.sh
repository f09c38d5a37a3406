#!/usr/bin/env bash
# Set up .venv with everything `evolve` and its tests need, on a CPU-only machine or a CUDA one.
#
# torch is installed before the project so that pip never resolves a bare `torch` requirement itself:
# on a machine without a GPU that would pull several GB of CUDA packages. Where a GPU is present the
# default (CUDA) build is installed, unless the machine already has a torch the venv can reuse.
# Set TORCH_SPEC to choose another torch (e.g. TORCH_SPEC="torch==2.11.0").
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  # system site packages stay visible, so a machine's preinstalled CUDA torch and triton are reused
  "$python" -m venv --system-site-packages .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" "${TORCH_SPEC:-torch}"
  else
    # the CPU build. A wheel provided by the machine's own pip sources (find-links) is taken first;
    # failing that, the CPU wheel index named by TORCH_CPU_INDEX (PyTorch publishes one). Never the
    # default build of the package index, which depends on several GB of CUDA packages.
    spec=${TORCH_SPEC:-torch==2.13.0}
    if "${pip[@]}" --no-index --no-deps "$spec" 2>/dev/null; then
      "${pip[@]}" "$spec"  # its dependencies; torch itself is already satisfied
    elif [ -n "${TORCH_CPU_INDEX:-}" ]; then
      "${pip[@]}" --no-deps "$spec" --index-url "$TORCH_CPU_INDEX"
      "${pip[@]}" "$spec"
    else
      echo "setup: no CPU build of $spec in this machine's pip sources; set TORCH_CPU_INDEX to a CPU wheel index" >&2
      exit 2
    fi
  fi
fi
"${pip[@]}" -e ".[dev]"
.venv/bin/python -c "import torch, triton; print(f'torch {torch.__version__}, triton {triton.__version__}, ' \
  f'CUDA GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"none (Triton interpreter)\"}')"
