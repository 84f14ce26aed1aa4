"""flashlight fuzz reproducer: mismatch (seed 208099).

Found by ``python -m fuzz --seeds 208099:208100`` (generator version
3), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[1, 2, 1]): 1 of 2 elements beyond rtol 0.0001, atol 6e-05; max abs error 4.1e+03 (scale 0.596); first at [0, 0, 0]: 4096.0 vs eager 0.0
Tensor-likes are not close!

Mismatched elements: 1 / 2 (50.0%)
Greatest absolute difference: 4096.0 at index (0, 0, 0) (up to 5.9557521343231206e-05 allowed)
Greatest relative difference: inf at index (0, 0, 0) (up to 0.0001 allowed)
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
BUG = "frontend/lift.py prims.var: the plain two-pass rounds sum(x) (thirteen values of -1e9 sum inexactly in fp32), so the variance of equal values came out 4096 where eager's Welford gives 0. prims.var now lifts as the shifted two-pass, var(x - x0) with x0 the first value (lift._prims_var); var, std, var_mean and the norms all go through it"
FIXED = True

A, B, C = 13, 2, 1


def make_inputs():
    g = torch.Generator().manual_seed(208099)
    x0 = torch.randn((A, B, C), generator=g)
    return (x0,)


def prog(x0):
    t4_i = torch.arange(x0.shape[-2])[:, None]
    t4_j = torch.arange(x0.shape[-1])[None, :]
    t4 = x0.masked_fill(t4_j > t4_i + (x0.shape[-1] - x0.shape[-2]), -1e9)
    t6 = torch.var(t4, 0, unbiased=False, keepdim=True)
    return t6


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
