"""flashlight fuzz reproducer: crash (seed 5040248).

Found by ``python -m fuzz --seeds 5040248:5040249`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

compilation raised, the segment ran eagerly: NotSeparable: cannot express log(y_old_1) in the IR
compilation raised, the segment ran eagerly: NotSeparable: cannot express log(y_old_1) in the IR
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
BUG = "fuse-reductions: a rescale with log of an opaque function of the running value has no IR form; to_ir's NotSeparable escaped the online rewrite instead of refusing it"
FIXED = True

A = 2


def make_inputs():
    g = torch.Generator().manual_seed(5040248)
    x0 = torch.randn((A, A, A), generator=g).to(torch.float64)
    return (x0,)


def prog(x0):
    t0 = x0 / x0.sum(1, keepdim=True).abs().clamp(min=1e-3)
    t1 = torch.log_softmax(t0, dim=2)
    t2 = t1.amax(dim=2)
    return t2


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS, strict_fallbacks=True)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
