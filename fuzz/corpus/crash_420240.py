"""flashlight fuzz reproducer: crash (seed 420240).

Found by ``python -m fuzz --seeds 420240:420241`` (generator version
3), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

InterpreterError: TypeError("ufunc 'bitwise_and' not supported for the input types, and the inputs could not be safely coerced to any supported types according to the casting rule ''safe''")
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/venv/lib/python3.11/site-packages/triton/runtime/interpreter.py", line 1515, in __call__
    raise InterpreterError(repr(e)) from e
triton.runtime.errors.InterpreterError: TypeError("ufunc 'bitwise_and' not supported for the input types, and the inputs could not be safely coerced to any supported types according to the casting rule ''safe''")
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
BUG = "codegen/triton.py: under Triton's interpreter a scalar comparison's result keeps its operands' dtype, so splatting it to a block (the guard `x == x` of a 0-d tensor anded with a tail mask) made floats and `mask & guard` crashed; scalar booleans are re-made as int1 with a select"
FIXED = True

B = 2


def make_inputs():
    g = torch.Generator().manual_seed(420240)
    x0 = torch.randn((B,), generator=g)
    x1 = torch.randn((), generator=g)
    return (x0, x1)


def prog(x0, x1):
    t1 = torch.where(x1 != x1, 0.0, x1)
    t2 = t1 * x0
    t3 = t2.var(0, keepdim=True)
    return t3


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
