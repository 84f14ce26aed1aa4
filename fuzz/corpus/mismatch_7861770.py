"""flashlight fuzz reproducer: mismatch (seed 7861770).

Found by ``python -m fuzz --seeds 7861770:7861771`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

gradient of input 0 (torch.bfloat16[31, 16]): 11 of 496 elements beyond rtol 0.03, atol 0.03; max abs error 0.0962 (scale 1); first at [27, 1]: 0.033203125 vs eager 0.0 (eager's rounding noise there 0)
Tensor-likes are not close!

Mismatched elements: 11 / 496 (2.2%)
Greatest absolute difference: 0.09619140625 at index (30, 1) (up to 0.03 allowed)
Greatest relative difference: inf at index (27, 1) (up to 0.03 allowed)
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
BUG = "mismatch: gradient of input 0 (torch.bfloat16[31, 16]): 11 of 496 elements beyond rtol 0.03, atol 0.03; max abs error 0.0962 (scale 1); first at [27, 1]: 0.033203125 vs e"
FIXED = True

A, B, C = 31, 3, 16


def make_inputs():
    g = torch.Generator().manual_seed(7861770)
    x0 = (torch.rand((A, C), generator=g) + 0.5).to(torch.bfloat16).requires_grad_()
    x1 = torch.randn((B, C), generator=g).to(torch.bfloat16)
    x2 = torch.sort(torch.randint(0, 3, (A,), generator=g)).values.to(torch.int64)
    x3 = torch.sort(torch.randint(0, 3, (B,), generator=g)).values.to(torch.int64)
    return (x0, x1, x2, x3)


def prog(x0, x1, x2, x3):
    t0 = x0 @ x1.transpose(-2, -1)
    t1 = t0.masked_fill(x2[:, None] != x3[None, :], float("-inf"))
    t2 = t1.softmax(-1)
    return t2


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
