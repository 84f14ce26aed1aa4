"""flashlight fuzz reproducer: mismatch (seed 9000952).

Found by ``python -m fuzz --seeds 9000952`` (generator version 4), the first campaign after the
backward became compiled and partitioned by flashlight (frontend/partition.py).
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

gradient of input 0 (torch.bfloat16[7, 2]): NaN in other places than eager (12 vs 0)
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
BUG = ("the same as mismatch_9001300.py (the saved maximum compared with recomputed scores), in bf16 "
       "with a softcap, where the forward's kernel keeps the scores in fp32")
FIXED = True

A, B, C = 7, 97, 2


def make_inputs():
    g = torch.Generator().manual_seed(9000952)
    x0 = torch.randn((A, C), generator=g).to(torch.bfloat16).requires_grad_()
    x1 = torch.randn((B, C), generator=g).to(torch.bfloat16).requires_grad_()
    x2 = torch.sort(torch.randint(0, 3, (A,), generator=g)).values.to(torch.int64)
    x3 = torch.sort(torch.randint(0, 3, (B,), generator=g)).values.to(torch.int64)
    x4 = torch.randn((B, C), generator=g).to(torch.bfloat16).requires_grad_()
    return (x0, x1, x2, x3, x4)


def prog(x0, x1, x2, x3, x4):
    t0 = x0 @ x1.transpose(-1, -2) * 0.25
    t1 = torch.tanh(t0 / 5.0) * 5.0
    t2 = t1.masked_fill(x2[:, None] != x3[None, :], float("-inf"))
    t3 = torch.exp(t2 - t2.amax(-1, keepdim=True))
    t4 = t3 @ x4
    return t4


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
