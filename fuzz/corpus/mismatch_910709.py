"""flashlight fuzz reproducer: mismatch (seed 910709).

Found by ``python -m fuzz --seeds 910709`` (generator version 3) and reduced by hand
to its one cause: neither the exp nor either softmax is needed, only two products in one kernel
(fused over the batch) whose serial loops walk the same iterator ``i2``.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[5, 5, 5]): 125 of 125 elements beyond rtol 0.0001, atol 0.0019; max abs
error 12.1 (scale 18.7)
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
BUG = ("passes/tile.py (_tile_kernel): one kernel held two serial loops over the iterator i2, the "
       "reduction of (x0 @ x1) @ x2 (tiled 16) and the rows of (x2 @ x3).sum(-1), which encloses "
       "another serial loop (tiled 1); codegen/triton.py keeps one tile per iterator and took 1 for "
       "both, so the first loop ran one tile of one column, ceil(5/16) = 1 iteration, and summed "
       "only i2 = 0 of the contraction")
FIXED = True

A = 5


def make_inputs():
    g = torch.Generator().manual_seed(910709)
    x0 = torch.randn((A, A, A), generator=g)
    x1 = torch.randn((A, A, A), generator=g)
    x2 = torch.randn((A, A, A), generator=g)
    x3 = torch.rand((A, A), generator=g) + 0.5
    return (x0, x1, x2, x3)


def prog(x0, x1, x2, x3):
    t2 = (x0 @ x1) @ x2  # a serial loop over i2 (the inner dimension of the second product)
    t6 = (x2 @ x3).sum(-1)  # a serial loop over i2 (rows) around a serial loop over the sum
    return t2, t6


OPTIONS = {}


def check():
    # strict: an inconsistent tiling must neither compute a wrong result nor fall back to eager
    check_program(prog, make_inputs, OPTIONS, strict_fallbacks=True)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
