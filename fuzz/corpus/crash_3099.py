"""flashlight fuzz reproducer: crash (seed 3099).

Found by ``python -m fuzz --seeds 3099:3100``, then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

InterpreterError: AttributeError("'float' object has no attribute 'type'")
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/venv/lib/python3.11/site-packages/triton/runtime/interpreter.py", line 1515, in __call__
    raise InterpreterError(repr(e)) from e
triton.runtime.errors.InterpreterError: AttributeError("'float' object has no attribute 'type'")
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
BUG = "codegen: a reduction over size-1 axes of a constant (sum of 10.0 after defer-normalization) is emitted as tl.broadcast_to(10.0, [16]) with a Python float: the interpreter raises AttributeError"
FIXED = True

B = 2


def make_inputs():
    g = torch.Generator().manual_seed(3099)
    x0 = torch.randn((1, B, 1), generator=g)
    return (x0,)


def prog(x0):
    t1 = torch.log_softmax(x0, -1)
    t3 = t1 * 10.0
    t4 = t3.sum(dim=(-3, 2))
    return t4


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
