"""flashlight fuzz reproducer: crash (seed 1145).

Found by ``python -m fuzz --seeds 1145:1146``, then minimized.
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
BUG = "passes/tile: a matmul whose batch dimensions only one operand has (x[2,2,2,17] @ w.mT) tiles every such grid dimension at 16: a 16x16x16x16x32 block exceeds Triton's 2^20-element tensor limit"
FIXED = True

A, B, C, D = 2, 2, 17, 2


def make_inputs():
    g = torch.Generator().manual_seed(1145)
    x0 = torch.randn((A, A, B, C), generator=g)
    x1 = torch.randn((D, C), generator=g)
    return (x0, x1)


def prog(x0, x1):
    t3 = x0 @ x1.mT
    return t3


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
