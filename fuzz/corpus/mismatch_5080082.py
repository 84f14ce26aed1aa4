"""flashlight fuzz reproducer: mismatch (seed 5080082).

Found by ``python -m fuzz --seeds 5080082:5080083`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float16[1, 1, 1]): NaN in other places than eager (0 vs 1); first at [0, 0, 0]: -0.032958984375 vs eager nan
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
BUG = "NaN of a re-masked log-softmax in float16 (fixed with seed 3002329's masks-to-domains check)"
FIXED = True

A, B = 1, 2


def make_inputs():
    g = torch.Generator().manual_seed(5080082)
    x0 = torch.randn((A, A, B), generator=g).to(torch.float16)
    x1 = torch.randn((A, B, A), generator=g).to(torch.float16)
    return (x0, x1)


def prog(x0, x1):
    t0_i = torch.arange(x0.shape[-2])[:, None]
    t0_j = torch.arange(x0.shape[-1])[None, :]
    t0 = x0.masked_fill((t0_i - t0_j >= 8) | (t0_j > t0_i), float("-inf"))
    t2 = t0.transpose(2, 1)
    t3 = torch.log_softmax(t2, dim=0)
    t4 = torch.minimum(t3, x1)
    t5 = t4.amax(-2, keepdim=True)
    return t5


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
