"""Run a candidate, PyTorch eager and torch.compile at an op's headline shape, a few times each, so a
profiler (e.g. `ncu --section SpeedOfLight`) can compare their kernels. Usage:

    ncu --section SpeedOfLight --section LaunchStats python scripts/profile_op.py layer_norm kernel.py
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kernels import DTYPES, get_spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("op")
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--calls", type=int, default=3)
    args = parser.parse_args()
    spec = get_spec(args.op)
    module_spec = importlib.util.spec_from_file_location("candidate", args.candidate)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["candidate"] = module
    module_spec.loader.exec_module(module)
    inputs = spec.make_inputs(spec.headline_shape(), DTYPES[args.dtype], 0, "cuda")
    compiled = torch.compile(spec.eager, dynamic=False)
    with torch.no_grad():
        for name, fn in (("candidate", getattr(module, spec.entry)), ("eager", spec.eager), ("compile", compiled)):
            for _ in range(args.calls):
                fn(*inputs)
            torch.cuda.synchronize()
            print(f"ran {name} {args.calls}x at {spec.headline_shape()} {args.dtype}")


if __name__ == "__main__":
    main()
