"""flashlight fuzz reproducer: mismatch (seed 900853).

Found by ``python -m fuzz --seeds 900000:910000`` (generator version 3) and reduced by
hand to its one cause.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[]): NaN in other places than eager (0 vs 1); first at []: 2.0 vs eager nan
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
BUG = "passes/masks_to_domains.py: a where(x < c, 0, x) feeding a sum became the guard x >= c, the negation of a float comparison; for x = nan (std over one element) eager keeps the nan term (not nan < c) and the guard dropped it, so the sum came out finite"
FIXED = True

A = 5


def make_inputs():
    g = torch.Generator().manual_seed(900853)
    x0 = torch.randn((1, A), generator=g)
    return (x0,)


def prog(x0):
    t1 = x0.std(-2)  # one element, no degrees of freedom: nan
    t2 = t1 - x0
    t3 = torch.where(t2.abs() < -1.5, 0.0, t2)
    return t3.sum(dim=1)


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
