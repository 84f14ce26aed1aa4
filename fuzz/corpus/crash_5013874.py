"""flashlight fuzz reproducer: crash (seed 5013874).

Found by ``python -m fuzz --seeds 5013874:5013875`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

compilation raised, the segment ran eagerly: VerificationError: program prog is malformed:
compilation raised, the segment ran eagerly: VerificationError: program prog is malformed:
  guard: iterator 'i3' is not bound by an enclosing loop
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
BUG = "fuse-reductions: the running max's prev copy took its reader's guard on the reader's own block iterator (a sliced P @ V), unbound where the copy runs"
FIXED = True

A, B, C, D = 1, 2, 2, 2


def make_inputs():
    g = torch.Generator().manual_seed(5013874)
    x0 = (torch.rand((1, D, A, C), generator=g) + 0.5).to(torch.float64)
    x1 = torch.randn((1, D, B, C), generator=g).to(torch.float64)
    x2 = torch.randn((1, D, B, C), generator=g).to(torch.float64)
    return (x0, x1, x2)


def prog(x0, x1, x2):
    t0 = x0 @ x1.transpose(-1, -2) * 0.125
    t2 = torch.exp(t0 - t0.amax(-1, keepdim=True))
    t3 = t2 @ x2
    t4 = t3[..., :-1] * 2
    return t4


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS, strict_fallbacks=True)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
