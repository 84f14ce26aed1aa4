"""flashlight fuzz reproducer: crash (seed 1288).

Found by ``python -m fuzz --seeds 1288:1289``, then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

InterpreterError: ValueError('buffer size must be a multiple of element size')
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/venv/lib/python3.11/site-packages/triton/runtime/interpreter.py", line 1515, in __call__
    raise InterpreterError(repr(e)) from e
triton.runtime.errors.InterpreterError: ValueError('buffer size must be a multiple of element size')
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
BUG = "codegen: a bool -> bfloat16 cast is emitted as v.to(tl.bfloat16), which Triton's interpreter cannot convert (_convert_float); cast through float32 instead"
FIXED = True

A = 1


def make_inputs():
    g = torch.Generator().manual_seed(1288)
    x0 = torch.randn((1,), generator=g).to(torch.bfloat16)
    x1 = torch.randn((A, A, 1), generator=g).to(torch.bfloat16)
    return (x0, x1)


def prog(x0, x1):
    t2 = (x1 == x0).to(x1.dtype) * x1
    return t2


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
