"""Time chosen points of an op's template side by side on the GPU, against eager, torch.compile and the
promoted kernel, all in the same interleaved rounds: a controlled comparison of knobs, where an evolve run
compares each candidate only with the baselines timed in its own evaluation. Usage:

    python scripts/sweep_template.py layer_norm --promoted \\
        --point "PERSISTENT=True, PREFETCH=True, PROGRAMS_PER_SM=32" --point "ROWS_PER_PROGRAM=2"

It runs only the template's own renderings and promoted kernels (code from this repository) and runs
them in this process; candidates of unknown origin belong in `evolve eval`, which isolates them.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from evaluators.checker import compare_outputs  # noqa: E402
from evaluators.timing import Rotating, TimingSettings, input_set_count, interleaved_samples  # noqa: E402
from kernels import DTYPES, get_spec  # noqa: E402
from memory.promoted import KernelStore  # noqa: E402


def parse_point(text: str) -> dict:
    """'A=1, B=True, C=""' -> {"A": 1, "B": True, "C": ""}."""
    point = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--point wants KNOB=VALUE pairs separated by commas, got {item!r}")
        try:
            point[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise SystemExit(f"--point: {value.strip()!r} is not a Python literal (quote strings)")
    return point


def load_entry(path: Path, entry: str, name: str):
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, entry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("op")
    parser.add_argument("--point", action="append", default=[], help="knobs differing from the seed")
    parser.add_argument("--promoted", action="store_true", help="include the promoted kernel for this GPU")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("sweep_template times kernels on a GPU; none is visible")
    spec = get_spec(args.op)
    space = spec.template
    dtype = DTYPES[args.dtype]
    variants: dict[str, object] = {"eager": spec.eager, "compile": torch.compile(spec.eager, dynamic=False)}
    tmp = Path(tempfile.mkdtemp(prefix="sweep-"))
    if args.promoted:
        kernel = KernelStore(ROOT / "memory").best(args.op, torch.cuda.get_device_name())
        if kernel is None:
            raise SystemExit(f"no promoted {args.op} kernel for {torch.cuda.get_device_name()}")
        variants["promoted"] = load_entry(kernel.path, spec.entry, "promoted")
    for i, text in enumerate(args.point or [""]):
        try:
            point = space.normalize(space.validate(parse_point(text)))
        except ValueError as exc:
            raise SystemExit(f"--point {text!r}: {exc}")
        path = tmp / f"p{i}.py"
        path.write_text(space.render(point))
        variants[f"p{i}"] = load_entry(path, spec.entry, f"p{i}")
        changed = {k: v for k, v in point.items() if v != space.seed[k]}
        print(f"p{i}: {changed or 'the seed'}")
    print(f"{args.op} {args.dtype} on {torch.cuda.get_device_name()}, torch {torch.__version__}")
    settings = TimingSettings(rounds=args.rounds)
    for shape in spec.timed_shapes():
        nbytes = spec.bytes_moved(shape, dtype)
        sets = [spec.make_inputs(shape, dtype, 1000 + k, "cuda") for k in range(input_set_count(nbytes, settings))]
        tol = spec.tolerances[args.dtype]
        wrong = []
        with torch.no_grad():
            for name, fn in variants.items():
                if not compare_outputs(fn(*sets[0]), spec.reference(*sets[0]), tol.atol, tol.rtol).ok:
                    wrong.append(name)
            torch.cuda.synchronize()
            rotating = {name: Rotating(fn, sets) for name, fn in variants.items()}
            samples = interleaved_samples(rotating, settings)
        med = {name: statistics.median(v) for name, v in samples.items()}
        print(f"\n{shape.name} {dict(shape.dims)}" + (f"  WRONG OUTPUT: {', '.join(wrong)}" if wrong else ""))
        print(f"{'variant':10s} {'us':>8s} {'x eager':>8s} {'x compile':>9s} {'GB/s':>7s} {'spread':>7s}")
        for name in sorted(med, key=med.get):
            spread = (max(samples[name]) - min(samples[name])) / med[name]
            print(f"{name:10s} {med[name] * 1e3:8.2f} {med['eager'] / med[name]:8.3f} {med['compile'] / med[name]:9.3f} "
                  f"{nbytes / med[name] / 1e6:7.0f} {spread:7.1%}")


if __name__ == "__main__":
    main()
