"""flashlight fuzz reproducer: mismatch (seed 9301221).

Found by ``python -m fuzz --seeds 9301221:9301222`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

gradient of input 2 (torch.float32[1, 2]): 2 of 2 elements beyond rtol 0.0001, atol 0.0001; max abs error 1.03 (scale 1); first at [0, 0]: 0.9362825155258179 vs eager -0.09525126218795776 (eager's rounding noise there 1.71e-07)
Tensor-likes are not close!

Mismatched elements: 2 / 2 (100.0%)
Greatest absolute difference: 1.0315337777137756 at index (0, 0) (up to 0.0001 allowed)
Greatest relative difference: 10.829607440563537 at index (0, 0) (up to 0.0001 allowed)
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
BUG = "mismatch: gradient of input 2 (torch.float32[1, 2]): 2 of 2 elements beyond rtol 0.0001, atol 0.0001; max abs error 1.03 (scale 1); first at [0, 0]: 0.9362825155258179 vs"
FIXED = True

A, B, C = 2, 5, 2


def make_inputs():
    g = torch.Generator().manual_seed(9301221)
    x0 = torch.randn((C, A, B), generator=g)
    x1 = torch.randn((C, A, B), generator=g)
    x2 = torch.randn((1, A), generator=g).requires_grad_()
    return (x0, x1, x2)


def prog(x0, x1, x2):
    t0 = torch.matmul(x0, x1.mT)
    t1 = t0 + x2
    t3 = torch.exp(t1 - t1.amax(-1, keepdim=True))
    return t3


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
