"""flashlight fuzz reproducer: mismatch (seed 7811892).

Found by ``python -m fuzz --seeds 7811892:7811893`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

gradient of input 1 (torch.bfloat16[3, 1, 13]): 7 of 39 elements beyond rtol 0.03, atol 0.03; max abs error 0.0688 (scale 1); first at [1, 0, 3]: -0.0380859375 vs eager 0.0 (eager's rounding noise there 0)
Tensor-likes are not close!

Mismatched elements: 7 / 39 (17.9%)
Greatest absolute difference: 0.06884765625 at index (1, 0, 7) (up to 0.03 allowed)
Greatest relative difference: inf at index (1, 0, 3) (up to 0.03 allowed)
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
BUG = "mismatch: gradient of input 1 (torch.bfloat16[3, 1, 13]): 7 of 39 elements beyond rtol 0.03, atol 0.03; max abs error 0.0688 (scale 1); first at [1, 0, 3]: -0.0380859375 "
FIXED = True

A, B, C, D = 1, 1, 13, 3


def make_inputs():
    g = torch.Generator().manual_seed(7811892)
    x0 = torch.randn((D, A, C), generator=g).to(torch.bfloat16)
    x1 = torch.randn((D, B, C), generator=g).to(torch.bfloat16).requires_grad_()
    return (x0, x1)


def prog(x0, x1):
    t0 = torch.matmul(x0, x1.mT)
    t1_i = torch.arange(t0.shape[-2])[:, None]
    t1_j = torch.arange(t0.shape[-1])[None, :]
    t1 = t0.masked_fill(((t1_i - t1_j) % 4 != 0) | (t1_j > t1_i), float("-inf"))
    t2 = torch.softmax(t1.float(), dim=-1).to(x0.dtype)
    return t2


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
