"""flashlight fuzz reproducer: mismatch (seed 5040440).

Found by ``python -m fuzz --seeds 5040440:5040441`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[2, 1]): NaN in other places than eager (1 vs 2); first at [1, 0]: 1.0 vs eager nan
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
BUG = "masks-to-domains: a mask whose -inf fill another operand also folds (the mean of a masked row subtracted from it) was made a guard; eager gives NaN there"
FIXED = True

A, B, C, D = 2, 1, 1, 1


def make_inputs():
    g = torch.Generator().manual_seed(5040440)
    x0 = torch.randn((D, C, A, B), generator=g)
    x1 = torch.rand((A, 1), generator=g) < 0.5
    x2 = torch.randn((A, 1), generator=g)
    return (x0, x1, x2)


def prog(x0, x1, x2):
    t0 = x2.masked_fill(~x1, float("-inf"))
    t2 = x0.transpose(1, 2).flatten(-2)
    t3 = t0 - t0.mean(1, keepdim=True)
    t4 = torch.softmax(t3, dim=0)
    return t4, t2


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
