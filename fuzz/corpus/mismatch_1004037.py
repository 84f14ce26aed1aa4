"""flashlight fuzz reproducer: mismatch (seed 1004037).

Found by ``python -m fuzz --seeds 1004037`` (generator version 3) and reduced by
hand to its one cause.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float16[3, 1, 17]): 51 of 51 elements beyond rtol 0.02, atol 0.02; max abs error 3.61 (scale 1)
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
BUG = "passes/defer_normalization.py (defer_normalization): layer_norm over an axis of extent 1 gives the one-term sum mean[p] += f16(s[p] * y[p]) (no reduced iterator); the pass hoisted s[p], another reduction's result, out through the f16 rounding as mean = s * f16(y), which rounds differently from the term x - mean subtracts it from, so x - mean was not exactly 0 and rsqrt(0 + eps) blew it up to O(1)"
FIXED = True

N, K = 17, 31


def make_inputs():
    g = torch.Generator().manual_seed(1004037)
    x = torch.randn((N, K), generator=g).half()
    y = torch.randn((N, 1), generator=g).half()
    return (x, y)


def prog(x, y):
    s = x.sum(-1, keepdim=True)  # another reduction's result, a factor of the term below
    return torch.nn.functional.layer_norm(s * y, (1,))  # one element: eager gives exactly 0


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
