"""flashlight fuzz reproducer: mismatch (seed 7480580).

Found by ``python -m fuzz --seeds 7480580:7480581`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[2, 2]): 4 of 4 elements beyond rtol 0.02, atol 0.02; max abs error 1 (scale 1); first at [0, 0]: 1.0 vs eager 0.0 (eager's rounding noise there 0)
Tensor-likes are not close!

Mismatched elements: 4 / 4 (100.0%)
Greatest absolute difference: 1.0 at index (0, 0) (up to 0.02 allowed)
Greatest relative difference: inf at index (0, 0) (up to 0.02 allowed)
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
BUG = "mismatch: output 0 (torch.float32[2, 2]): 4 of 4 elements beyond rtol 0.02, atol 0.02; max abs error 1 (scale 1); first at [0, 0]: 1.0 vs eager 0.0 (eager's rounding nois"
FIXED = True

A = 2


def make_inputs():
    g = torch.Generator().manual_seed(7480580)
    x0 = (torch.rand((A, A), generator=g) + 0.5).to(torch.float16)
    return (x0,)


def prog(x0):
    t0 = x0.clamp(max=1e-3)
    t1 = (t0 != 1e-3).float()
    return t1


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
