"""flashlight fuzz reproducer: mismatch (seed 25285).

Found by ``python -m fuzz --seeds 25285:25286`` (generator version
3), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[2]): 2 of 2 elements beyond rtol 0.0001, atol 0.00011; max abs error 1.06 (scale 1.06); first at [0]: 1.0622332096099854 vs eager -0.0018924139440059662
Tensor-likes are not close!

Mismatched elements: 2 / 2 (100.0%)
Greatest absolute difference: 1.0641256235539913 at index (0,) (up to 0.00010622332096099854 allowed)
Greatest relative difference: 562.3112358289812 at index (0,) (up to 0.0001 allowed)
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
BUG = 'ir/expr.py substitute (frontend view composition): rewrite applies the mapping again to a node that folding turned into a bare iterator, so x.flip(-1).flip(-1) lifts to x[1 - i] (any index composition that cancels to the identity is substituted twice)'
FIXED = True

A = 2


def make_inputs():
    g = torch.Generator().manual_seed(25285)
    x0 = torch.randn((A,), generator=g)
    return (x0,)


def prog(x0):
    t1 = x0.flip(-1)
    t2 = t1.flip(-1)
    return t2


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
