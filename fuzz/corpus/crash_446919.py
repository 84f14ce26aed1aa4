"""flashlight fuzz reproducer: crash (seed 446919).

Found by ``python -m fuzz --seeds 446919:446920`` (generator version
3), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

InterpreterError: InterpreterError("ValueError('axis 0 out of bounds for shape []')")
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/work/venv/lib/python3.11/site-packages/triton/runtime/interpreter.py", line 1515, in __call__
    raise InterpreterError(repr(e)) from e
triton.runtime.errors.InterpreterError: InterpreterError("ValueError('axis 0 out of bounds for shape []')")
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
BUG = "codegen/triton.py: a reduction folded a value constant along the reduced axis without broadcasting it to the tile first, so tl.sum/_nanmax reduced a scalar (crash) or a size-1 dimension (a sum counted the value once instead of once per point): softmax of a gather from a 1-element tensor"
FIXED = True

A = 16


def make_inputs():
    g = torch.Generator().manual_seed(446919)
    x0 = torch.randint(0, 1, (A,), generator=g, dtype=torch.int64)
    x1 = torch.randn((1,), generator=g)
    return (x0, x1)


def prog(x0, x1):
    t2 = torch.take_along_dim(x1, x0, dim=0)
    t3 = torch.nn.functional.softmax(t2, 0)
    return t3


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
