"""flashlight fuzz reproducer: mismatch (seed 9000240).

Found by ``python -m fuzz --seeds 9000240`` (generator version 4), the first campaign after the
backward became compiled and partitioned by flashlight (frontend/partition.py).
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

gradient of input 1 (torch.float32[3, 4]): 12 of 12 elements beyond rtol 0.0001
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
BUG = ("codegen/memory.py: a tensor computed earlier in the same kernel was read from its register in "
       "the register's layout when a dot asked for the other one ((i0, i10) for a (i10, i0) register); "
       "with both tiles 16 nothing failed, the product was of the transpose")
FIXED = True

A, B, C, D = 13, 2, 2, 3


def make_inputs():
    g = torch.Generator().manual_seed(9000240)
    x0 = torch.randn((1, A, D), generator=g).requires_grad_()
    x1 = (torch.rand((D, C*B), generator=g) + 0.5).requires_grad_()
    x2 = (torch.rand((D, C*B), generator=g) + 0.5).requires_grad_()
    x3 = (torch.rand((D, C*B), generator=g) + 0.5).requires_grad_()
    return (x0, x1, x2, x3)


def prog(x0, x1, x2, x3):
    t0 = (x0 @ x1).unflatten(-1, (C, B)).transpose(1, 2)
    t1 = (x0 @ x2).unflatten(-1, (C, B)).transpose(1, 2)
    t2 = (x0 @ x3).unflatten(-1, (C, B)).transpose(1, 2)
    t3 = torch.nn.functional.scaled_dot_product_attention(t0, t1, t2, enable_gqa=True)
    return t3


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
