"""flashlight fuzz reproducer: crash (seed 3002574).

Found by ``python -m fuzz --seeds 3002574:3002575`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

RuntimeError: view size is not compatible with input tensor's size and stride (at least one dimension spans across two contiguous subspaces). Use .reshape(...) instead.
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
BUG = "runtime: a program output handed to the backward was contiguous where the graph traced another layout (a transposed SDPA result); the eager backward's view of the saved tensor failed. Outputs now take the traced strides"
FIXED = True

A, B, C = 2, 2, 2


def make_inputs():
    g = torch.Generator().manual_seed(3002574)
    x0 = torch.randn((C, B, A, 1), generator=g)
    x1 = torch.randn((C, B, A, 1), generator=g)
    x2 = torch.randn((C, B, A, 1), generator=g).requires_grad_()
    return (x0, x1, x2)


def prog(x0, x1, x2):
    t0 = torch.nn.functional.scaled_dot_product_attention(x0, x1, x2, scale=0.3)
    t1 = t0.transpose(1, 2).flatten(-2)
    t3 = torch.logsumexp(t1, (1, -3), keepdim=True)
    return t3


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
