"""flashlight fuzz reproducer: crash (seed 51192).

Found by ``python -m fuzz --seeds 51192:51193`` (generator version
3), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

InterpreterError: ValueError('numel (2097152) exceeds triton maximum tensor numel (1048576)')
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/venv/lib/python3.11/site-packages/triton/runtime/interpreter.py", line 1515, in __call__
    raise InterpreterError(repr(e)) from e
triton.runtime.errors.InterpreterError: ValueError('numel (2097152) exceeds triton maximum tensor numel (1048576)')
"""

import sys
from pathlib import Path

import torch

_ROOT = Path(__file__).resolve().parents[2]
if (_ROOT / "flashlight" / "__init__.py").exists():
    sys.path.insert(0, str(_ROOT))  # the checkout this file is in: its fuzzer, and its flashlight first

from fuzz import check_program  # noqa: E402

# Open: the bug as found. A fixed bug's reproducer says FIXED = True and tests/test_fuzz.py
# then requires it to pass.
BUG = "passes/tile.py: every serial loop of a nest got a tile of at least 16, and tiles of serial loops nested in one another multiply in registers: a 3-axis max of a batched matmul made a [16, 16, 16, 32, 16] register tile (2**21 elements, over Triton's limit). Only the innermost serial loop of a nest is tiled now"
FIXED = True

A, B, C, D, E = 31, 2, 2, 2, 2


def make_inputs():
    g = torch.Generator().manual_seed(51192)
    x0 = torch.randn((E, D, A, C), generator=g)
    x1 = torch.randn((E, D, B, C), generator=g)
    return (x0, x1)


def prog(x0, x1):
    t0 = x0 @ x1.transpose(-1, -2) * 0.125
    t6 = t0.amax(dim=(2, -4, 1))
    return t6


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
