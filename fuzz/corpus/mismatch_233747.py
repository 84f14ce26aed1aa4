"""flashlight fuzz reproducer: mismatch (seed 233747).

Found by ``python -m fuzz --seeds 233747:233748`` (generator version
3), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float16[1, 1]): NaN in other places than eager (0 vs 1); first at [0, 0]: 0.0 vs eager nan
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
BUG = "passes/elide_roundings.py: dropping an fp16 round trip kept a score past 65504 finite where eager rounds it to inf (and its log_softmax to NaN). Only bf16 round trips (fp32's range) are dropped now"
FIXED = True

A, B = 1, 5


def make_inputs():
    g = torch.Generator().manual_seed(233747)
    x0 = torch.randn((A, B), generator=g).to(torch.float16)
    return (x0,)


def prog(x0):
    t0_i = torch.arange(x0.shape[-2])[:, None]
    t0_j = torch.arange(x0.shape[-1])[None, :]
    t0 = torch.where((t0_i - t0_j).abs() >= 4, -10000.0, x0)
    t1 = t0 @ t0.transpose(-2, -1)
    t2 = torch.log_softmax(t1, dim=0)
    return t2


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
