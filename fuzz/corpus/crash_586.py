"""flashlight fuzz reproducer: crash (seed 586).

Found by ``python -m fuzz --seeds 586:587 --fail-on-compile-error`` (generator version
4), then minimized. Without that flag the program is ``ok``: the segment falls back to eager.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

compilation raised, the segment ran eagerly: launching its kernels failed: InterpreterError: ValueError("Expected dtype ['fp32'] but got fp64")

torch.sqrt of a float64 value is emitted as ``tl.sqrt_rn(v)``, which Triton accepts for fp32 only,
so the kernel fails at its first launch and the whole program runs eagerly from then on (correct,
not compiled). float64 wants ``tl.sqrt`` (correctly rounded in fp64). rsqrt, exp, log, sigmoid,
erf compile in float64.
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
BUG = "codegen: torch.sqrt of a float64 value is emitted as tl.sqrt_rn, which Triton takes in fp32 only ('Expected dtype ['fp32'] but got fp64' at launch): the program falls back to eager"
FIXED = True

A, B = 1, 1


def make_inputs():
    g = torch.Generator().manual_seed(586)
    x0 = torch.randn((1, A, B), generator=g).to(torch.float64)
    return (x0,)


def prog(x0):
    t0 = torch.sqrt(x0.abs() + 0.25)
    return t0


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS, strict_fallbacks=True)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
