"""flashlight fuzz reproducer: mismatch (seed 9001300).

Found by ``python -m fuzz --seeds 9001300`` (generator version 4), the first campaign after the
backward became compiled and partitioned by flashlight (frontend/partition.py).
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

gradient of input 0 (torch.float32[1, 17, 13]): NaN in other places than eager (26 vs 0)
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
BUG = ("frontend/partition.py saved the row maximum from the forward's kernel, and the backward of amax "
       "compares it with the recomputed scores (x == amax): a last-bit difference (another summation "
       "order in the matrix product) left no element equal to the maximum, and the gradient divided by "
       "a count of 0. A value the backward compares is now recomputed with what it is compared with")
FIXED = True

A, B, C = 17, 1, 13


def make_inputs():
    g = torch.Generator().manual_seed(9001300)
    x0 = torch.randn((B, A, C), generator=g).requires_grad_()
    x1 = torch.randn((B, B, C), generator=g).requires_grad_()
    x2 = torch.sort(torch.randint(0, 3, (A,), generator=g)).values.to(torch.int64)
    x3 = torch.sort(torch.randint(0, 3, (B,), generator=g)).values.to(torch.int64)
    x4 = torch.randn((B, B, C), generator=g).requires_grad_()
    return (x0, x1, x2, x3, x4)


def prog(x0, x1, x2, x3, x4):
    t0 = x0 @ x1.transpose(-1, -2) * 0.25
    t1 = t0.masked_fill(x2[:, None] != x3[None, :], float("-inf"))
    t2 = torch.exp(t1 - t1.amax(-1, keepdim=True))
    t3 = torch.matmul(t2, x4)
    return t3


OPTIONS = {'block_m': 32, 'block_n': 32}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
