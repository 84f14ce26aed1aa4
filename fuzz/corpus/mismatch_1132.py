"""flashlight fuzz reproducer: mismatch (seed 1132).

Found by ``python -m fuzz --seeds 1132:1133``, then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[2, 2, 2, 1]): 1 of 8 elements beyond rtol 0.0001, atol 0.00074; max abs error 4.62 (scale 7.4); first at [0, 0, 0, 0]: 2.7789175510406494 vs eager 7.39736270904541
Tensor-likes are not close!

Mismatched elements: 1 / 8 (12.5%)
Greatest absolute difference: 4.618445158004761 at index (0, 0, 0, 0) (up to 0.000739736270904541 allowed)
Greatest relative difference: 0.6243367183222447 at index (0, 0, 0, 0) (up to 0.0001 allowed)
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
BUG = "passes/restrict_to_demand: the consumer's data-dependent guard (bmm_1[..] >= x3[..], from where(t >= x, t - x, 0) @ w) is pushed onto S1, the statement that computes bmm_1, so bmm_1 is computed under a condition on itself: wrong values"
FIXED = True

A, B, C = 2, 2, 1


def make_inputs():
    g = torch.Generator().manual_seed(1132)
    x0 = torch.randn((A, A, A, B), generator=g)
    x1 = torch.randn((A, A, A, B), generator=g)
    x2 = torch.randn((A, A, A, B), generator=g)
    x3 = torch.randn((1, A, 1, B), generator=g)
    x4 = torch.randn((1, A, C, B), generator=g)
    return (x0, x1, x2, x3, x4)


def prog(x0, x1, x2, x3, x4):
    t0 = x0 @ x1.transpose(-2, -1)
    t3 = torch.matmul(t0, x2)
    t5 = torch.where(t3 >= x3, t3 - x3, 0.0)
    t6 = t5 @ x4.transpose(-2, -1)
    return t6


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
