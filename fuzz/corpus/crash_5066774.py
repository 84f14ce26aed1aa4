"""flashlight fuzz reproducer: crash (seed 5066774).

Found by ``python -m fuzz --seeds 5066774:5066775`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

compilation raised, the segment ran eagerly: VerificationError: program prog is malformed:
compilation raised, the segment ran eagerly: VerificationError: program prog is malformed:
  statement S5_empty: iterator 'i0' is not bound by an enclosing loop
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
BUG = "masks-to-domains: the empty-row fixup of a sum over the rows of a maximum (a transposed P @ V) named the reduced iterator; such masks stay expressions"
FIXED = True

A, E = 2, 1


def make_inputs():
    g = torch.Generator().manual_seed(5066774)
    x0 = torch.sort(torch.randint(0, 3, (A,), generator=g)).values.to(torch.int64)
    x1 = torch.randn((A, E), generator=g)
    x2 = torch.randn((A, A), generator=g)
    return (x0, x1, x2)


def prog(x0, x1, x2):
    t1 = x2.masked_fill(x0[:, None] != x0[None, :], float("-inf"))
    t2 = torch.exp(t1 - t1.amax(-1, keepdim=True))
    t6 = t2.transpose(-2, -1) @ x1
    return t6


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS, strict_fallbacks=True)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
