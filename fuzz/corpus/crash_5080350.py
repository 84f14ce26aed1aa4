"""flashlight fuzz reproducer: crash (seed 5080350).

Found by ``python -m fuzz --seeds 5080350:5080351`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

compilation raised, the segment ran eagerly: AssertionError: S0 cannot even form its own kernel
compilation raised, the segment ran eagerly: AssertionError: S0 cannot even form its own kernel
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
BUG = "fuse-reductions: a plain reduction folded by a serial loop around a block loop (a full mean with block_limit below an extent) could not form its own kernel: its own dependences on its accumulator counted against the reordered fold (its combiner is associative and commutative)"
FIXED = True

A, B = 2, 17


def make_inputs():
    g = torch.Generator().manual_seed(5080350)
    x0 = torch.randn((A, B), generator=g)
    return (x0,)


def prog(x0):
    t0 = x0.mean((0, -1), keepdim=True)
    return t0


OPTIONS = {'block_limit': 16}


def check():
    check_program(prog, make_inputs, OPTIONS, strict_fallbacks=True)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
