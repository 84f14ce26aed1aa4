"""flashlight fuzz reproducer: mismatch (seed 334).

Found by ``python -m fuzz --seeds 334:335``, then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[1, 2, 1]): NaN in other places than eager (0 vs 1); first at [0, 0, 0]: inf vs eager nan
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
BUG = "codegen: amax/amin reductions drop NaN (tl.max/tl.min without NaN propagation); eager's amax/amin return NaN for a slice containing NaN"
FIXED = True

A = 2


def make_inputs():
    g = torch.Generator().manual_seed(334)
    x0 = torch.randn((A, A, 1), generator=g)
    return (x0,)


def prog(x0):
    t2_i = torch.arange(x0.shape[-2])[:, None]
    t2_j = torch.arange(x0.shape[-1])[None, :]
    t2 = torch.where(t2_j > t2_i + (x0.shape[-1] - x0.shape[-2]), float("-inf"), x0)
    t3 = torch.log_softmax(t2, -1)
    t4 = t3.amin((0,), keepdim=True)
    return t4


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
