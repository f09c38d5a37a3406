"""Planted candidates that attack the evaluator, by the class of attack, for tests/test_judge_attacks.py.

Each is built from one honest LayerNorm kernel and a wrapper (or a kernel) that cheats, escapes or
faults. `STATIC` is the class the static policy gives it; `DYNAMIC` the classes the layers behind that
policy (sandbox containment, the torch guard, the judge's checks) give it when the static policy is
skipped: every layer must hold on its own. "accepted" in DYNAMIC means the attack survives with no
effect (what it tried did nothing; the test says what it checks instead).
"""
from __future__ import annotations

KERNEL = '''
import math
import typing

import torch
import triton
import triton.language as tl


@triton.jit
def _row(X, W, B, Y, stride_x, stride_y, N, eps, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / N
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + cols, (xc * rstd * w + b).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _zeros(Y, stride_y, N, BLOCK_N: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    tl.store(Y + row * stride_y + cols, tl.zeros([BLOCK_N], dtype=tl.float32).to(Y.dtype.element_ty),
             mask=cols < N)
'''

HONEST_CALL = ("    M, N = x.shape\n"
               "    y = torch.empty((M, N), dtype=x.dtype, device=x.device)\n"
               "    _row[(M,)](x, weight, bias, y, x.stride(0), y.stride(0), N, eps, BLOCK_N=triton.next_power_of_2(N))\n")
ZEROS_CALL = ("    M, N = x.shape\n"
              "    y = torch.empty((M, N), dtype=x.dtype, device=x.device)\n"
              "    _zeros[(M,)](y, y.stride(0), N, BLOCK_N=triton.next_power_of_2(N))\n")


def candidate(before: str = "", body: str = HONEST_CALL, after: str = "", top: str = "", kernel: str = KERNEL) -> str:
    """The kernel file with `top` at module level and the entry: before, the launch, after, return y."""
    return (kernel + top + "\n\ndef layer_norm(x, weight, bias, eps):\n" + before + body + after
            + "    return y\n")


OS = 'typing.sys.modules["os"]'
MARKER = "/tmp/evolve-attack-marker"  # an attack that escaped would create it

# wrong on some inputs: the first call of a check that meets them says wrong_result, a later one caching
WRONG = {"wrong_result", "caching"}
# name -> (source, class with the static policy on (None: as without it), classes without it)
ATTACKS: dict[str, tuple[str, str, set[str]]] = {
    # 1. output objects that lie
    "tensor_subclass": (candidate(top="\nclass Liar(torch.Tensor):\n    def abs(self):\n        return self\n",
                                  body=ZEROS_CALL, after="    y = y.as_subclass(Liar)\n"), "static", {"escape", "layout"}),
    "subclass_by_type": (candidate(body=ZEROS_CALL, after="    y = type('T', (torch.Tensor,), {})(y)\n"),
                         "static", {"exception", "escape", "layout"}),
    # 2. escapes through allowed modules
    "typing_sys_os": (candidate(before=f"    {OS}.system('touch {MARKER}')\n"), "static", {"escape"}),
    "triton_runtime_os": (candidate(before=f"    triton.runtime.cache.os.system('touch {MARKER}')\n"), "static",
                          {"escape"}),
    "methodcaller": (candidate(before=f"    typing.operator.methodcaller('system', 'touch {MARKER}')({OS})\n"),
                     "static", {"escape"}),
    "write_file": (candidate(before=f"    typing.sys.modules['builtins'].open('{MARKER}', 'w')\n"), "static",
                   {"escape"}),
    "write_into_project": (candidate(before="    typing.sys.modules['builtins'].open("
                                            "typing.sys.modules['kernels'].__file__ + '.evil', 'w')\n"),
                           "static", {"escape"}),
    "reads_environment": (candidate(before=f"    raise ValueError('env:' + {OS}.environ.get('EVOLVE_TEST_SECRET', 'absent'))\n"),
                          "static", {"exception"}),
    "child_process_socket": (candidate(before="    typing.sys.modules['subprocess'].run(['python3', '-c', "
                                              "'import socket; socket.create_connection((\"127.0.0.1\", 9))'])\n"),
                             "static", {"escape"}),
    "kills_the_judge": (candidate(before=f"    {OS}.kill({OS}.getppid(), 9)\n"), "static", {"escape"}),
    "ctypes_libc": (candidate(before="    torch.ctypes.CDLL(None).system(b'true')\n"), "static", {"escape"}),
    "imports_os": (candidate(before="    import os\n    os.system('true')\n"), "static", {"escape"}),
    # 3. forged verdicts: a patched checker in the sandbox reaches no judge; the socket is out of reach
    "patches_checker": (candidate(before="    m = typing.sys.modules.get('evaluators.checker')\n"
                                         "    if m is not None:\n"
                                         "        m.compare_outputs = lambda *a, **k: None\n",
                                  body=ZEROS_CALL), "static", WRONG),
    "walks_frames_to_socket": (candidate(before="    f = typing.sys._getframe(1)\n"), "static", {"escape"}),
    "gc_finds_socket": (candidate(before="    typing.sys.modules['gc'].get_objects()\n"), "static", {"escape"}),
    # 5. torch or Python doing the work beside a launch
    "torch_operators": (candidate(after="    y = (x - x.float().mean(1, keepdim=True)).to(x.dtype)\n"), "static",
                        {"escape"}),
    "operators_only": (candidate(after="    y = y * 1.0 + 0.0\n"), "escape", {"escape"}),
    "sum_to_size": (candidate(after="    y = x.sum_to_size(x.shape[0], 1)\n"), "static", {"escape"}),
    "true_divide": (candidate(after="    y = y.true_divide(1.0)\n"), "static", {"escape"}),
    "multiply": (candidate(after="    y = torch.multiply(y, 1.0)\n"), "static", {"escape"}),
    "tolist_loop": (candidate(before="    rows = x.tolist()\n"), "static", {"escape"}),
    "torch_in_kernel": (candidate(kernel=KERNEL.replace("    row = tl.program_id(0)\n    cols",
                                                        "    row = tl.program_id(0)\n    torch.ones(2).sum()\n    cols", 1)),
                        "static", {"escape"}),
    # 6. state games
    "cache_by_address": (candidate(top="\n_SEEN = {}\n", before="    key = x.data_ptr()\n"
                                                                 "    if key in _SEEN:\n        return _SEEN[key]\n",
                                   after="    _SEEN[key] = y\n"), "static", {"no_kernel", "caching"}),
    "cache_by_shape": (candidate(top="\n_SEEN = {}\n", before="    if (x.shape[0], x.shape[1], x.dtype) in _SEEN:\n"
                                                               "        y = _SEEN[(x.shape[0], x.shape[1], x.dtype)]\n"
                                                               "        _row[(1,)](x, weight, bias, y, x.stride(0), y.stride(0), x.shape[1], eps, BLOCK_N=triton.next_power_of_2(x.shape[1]))\n"
                                                               "        return y\n",
                                 after="    _SEEN[(M, N, x.dtype)] = y\n"), "static", {"caching"}),
    "time_bomb": (candidate(top="\n_CALLS = [0]\n", before="    _CALLS[0] += 1\n    if _CALLS[0] > 12:\n"
                                                            + ZEROS_CALL.replace("    ", "        ") + "        return y\n"),
                  "static", WRONG | {"stale_memory", "nondeterminism"}),
    "sees_the_poison": (candidate(kernel=KERNEL.replace(
        "    tl.store(Y + row * stride_y + cols, (xc * rstd * w + b)",
        "    seen = tl.load(Y + row * stride_y + cols, mask=mask, other=0.0).to(tl.float32)\n"
        "    honest = tl.sum(tl.where(seen != seen, 1.0, 0.0), axis=0) > 0\n"
        "    tl.store(Y + row * stride_y + cols, tl.where(honest, xc * rstd * w + b, 0.0)")),
        None, WRONG | {"nondeterminism"}),
    # 7. coverage: each passes checks of benign, contiguous, fixed-eps, few-row, non-bf16 inputs
    "drops_eps": (candidate(body=HONEST_CALL.replace("N, eps, BLOCK_N", "N, 1e-5, BLOCK_N")), None,
                  WRONG),
    "ignores_row_stride": (candidate(body=HONEST_CALL.replace("x.stride(0), y.stride(0)", "N, y.stride(0)")),
                           None, WRONG),
    "one_pass_variance": (candidate(kernel=KERNEL.replace(
        "    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)",
        "    rstd = 1.0 / tl.sqrt(tl.maximum(tl.sum(x * x, axis=0) / N - mean * mean, 0.0) + eps)")),
        None, WRONG),
    "first_256_rows": (candidate(body=HONEST_CALL.replace("_row[(M,)]", "_row[(min(M, 256),)]")), None,
                        WRONG | {"stale_memory"}),
    "wrong_in_bfloat16": (candidate(before="    if x.dtype == torch.bfloat16:\n"
                                           + ZEROS_CALL.replace("    ", "        ") + "        return y\n"),
                          None, WRONG),
}
