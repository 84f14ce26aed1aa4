"""flashlight fuzz reproducer: mismatch (seed 9930609).

Found by ``python -m fuzz --seeds 9930609:9930610`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

gradient of input 0 (torch.float32[3, 5, 3]): 27 of 45 elements beyond rtol 0.0001, atol 0.00017; max abs error 0.299 (scale 1.74); first at [0, 1, 0]: -0.18831215798854828 vs eager 0.006334822624921799 (eager's rounding noise there 7.45e-09)
Tensor-likes are not close!

Mismatched elements: 27 / 45 (60.0%)
Greatest absolute difference: 0.29865598678588867 at index (1, 0, 1) (up to 0.00017355880737304687 allowed)
Greatest relative difference: 87.27410551064185 at index (1, 4, 0) (up to 0.0001 allowed)

Bug BI (3ed864a, fixed in the commit that adds this file): tile walked a loop one point at a time
because a statement in it has a product (the softmax backward's sum_2 over the keys) whose
factors read the loop's iterator; but that statement sums over the loop, and another statement
in it reads the forward's recomputed product summed over the same loop, which fuse-reductions
planned as one tile of the whole loop. One point at a time, the read saw partial sums.
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
BUG = "mismatch: gradient of input 0 (torch.float32[3, 5, 3]): 27 of 45 elements beyond rtol 0.0001, atol 0.00017; max abs error 0.299 (scale 1.74); first at [0, 1, 0]: -0.18831"
FIXED = True

A, B = 3, 5


def make_inputs():
    g = torch.Generator().manual_seed(9930609)
    x0 = torch.randn((A, B, A), generator=g).requires_grad_()
    x1 = torch.randn((1, A, A, B), generator=g).requires_grad_()
    return (x0, x1)


def prog(x0, x1):
    t0 = x0.softmax(-1)
    t1 = t0.unsqueeze(-4)
    t3 = torch.matmul(t1, x1)
    t4 = torch.where(t3 <= 1e-3, -1.5, t3)
    return t4


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
