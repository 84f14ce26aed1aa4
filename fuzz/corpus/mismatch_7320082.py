"""flashlight fuzz reproducer: mismatch (seed 7320082).

Found by ``python -m fuzz --seeds 7320082:7320083`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[1]): NaN in other places than eager (0 vs 1); first at [0]: -inf vs eager nan
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
BUG = "mismatch: output 0 (torch.float32[1]): NaN in other places than eager (0 vs 1); first at [0]: -inf vs eager nan"
FIXED = True

A, B = 1, 1


def make_inputs():
    g = torch.Generator().manual_seed(7320082)
    x0 = torch.rand((A, B), generator=g) < 0.5
    return (x0,)


def prog(x0):
    t0 = torch.where(x0, 0.0, float("-inf")).to(torch.float32)
    t2_i = torch.arange(t0.shape[-2])[:, None]
    t2_j = torch.arange(t0.shape[-1])[None, :]
    t2 = torch.where(t2_j <= t2_i, t0, 0.0)
    t3 = t0 - t2
    t5 = t3.amax(1, keepdim=False)
    return t5


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
