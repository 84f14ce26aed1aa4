"""flashlight fuzz reproducer: crash (seed 5026806).

Found by ``python -m fuzz --seeds 5026806:5026807`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

compilation raised, the segment ran eagerly: launching its kernels failed: InterpreterError: AttributeError("'float' object has no attribute 'type'")
compilation raised, the segment ran eagerly: launching its kernels failed: InterpreterError: AttributeError("'float' object has no attribute 'type'")
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
BUG = "codegen: tl.broadcast_to of a Python literal (a guarded reduction of a constant over a size-1 axis); a literal is tl.full"
FIXED = True

A = 2


def make_inputs():
    g = torch.Generator().manual_seed(5026806)
    x0 = torch.rand((A, 1), generator=g) < 0.5
    return (x0,)


def prog(x0):
    t0 = torch.where(x0, 0.0, float("-inf")).to(torch.float32)
    t3 = t0.softmax(-1)
    return t3


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS, strict_fallbacks=True)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
