"""flashlight fuzz reproducer: mismatch (seed 3650).

Found by ``python -m fuzz --seeds 3650:3651``, then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[2, 2, 1]): NaN in other places than eager (0 vs 2); first at [0, 0, 0]: 0.0 vs eager nan
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
BUG = "passes/fuse_reductions (online rewrite): exp(s - s.amax(-1, keepdim=True)) @ v gives 0 where a row of s is all -inf; eager gives NaN (the rescale reference where(m == -inf, 0, m) hides exp(-inf - -inf))"
FIXED = True

A, B = 2, 1


def make_inputs():
    g = torch.Generator().manual_seed(3650)
    x0 = torch.randn((A, A, B), generator=g)
    x1 = torch.randn((A, A, A), generator=g)
    return (x0, x1)


def prog(x0, x1):
    t1_i = torch.arange(x1.shape[-2])[:, None]
    t1_j = torch.arange(x1.shape[-1])[None, :]
    t1 = torch.where(t1_j >= t1_i, float("-inf"), x1)
    t2 = torch.exp(t1 - t1.amax(-1, keepdim=True))
    t3 = torch.matmul(t2, x0)
    return t3


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
