"""flashlight fuzz reproducer: crash (seed 667886).

Found by ``python -m fuzz --seeds 667886:667887`` (generator version
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
BUG = "passes/tile: a full sum of x[17,2,2,2,2] keeps all five dimensions as block loops, each padded to at least 16, and nothing bounded their product: a 32x16x16x16x16 register tile exceeds Triton's 2^20-element tensor limit"
FIXED = True

A, B, C = 2, 2, 17


def make_inputs():
    g = torch.Generator().manual_seed(667886)
    x0 = torch.randn((C, B, B, A, A), generator=g)
    return (x0,)


def prog(x0):
    t7 = x0.sum()
    return t7


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
