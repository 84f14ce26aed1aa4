"""flashlight fuzz reproducer: mismatch (seed 7226696).

Found by ``python -m fuzz --seeds 7226696:7226697`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[1, 1, 2, 2]): NaN in other places than eager (1 vs 2); first at [0, 0, 0, 1]: 0.0 vs eager nan
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
BUG = "mismatch: output 0 (torch.float32[1, 1, 2, 2]): NaN in other places than eager (1 vs 2); first at [0, 0, 0, 1]: 0.0 vs eager nan"
FIXED = True

A, C = 2, 1


def make_inputs():
    g = torch.Generator().manual_seed(7226696)
    x0 = torch.rand((C, 1, A, 1), generator=g) < 0.5
    return (x0,)


def prog(x0):
    t0 = torch.where(x0, 0.0, float("-inf")).to(torch.float32)
    t2 = torch.matmul(t0, t0.mT)
    return t2


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
