"""flashlight fuzz reproducer: mismatch (seed 39).

Found by ``python -m fuzz --seeds 39:40`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

gradient of input 2: a gradient, eager gives none

An SDPA with an empty query (S_q = 0) and a float attn_mask that requires grad. Eager's
scaled_dot_product_attention returns early when q, k or v is empty (S_q = 0, S_k = 0 or B = 0)
with a result connected to q, k and v only (grad_fn AddBackward0), so the mask gets no gradient
(None). flashlight's decomposition (frontend/attention.py) keeps the mask in the graph and gives
it a gradient: here an empty [0, 1] tensor; with B = 0 and a [S_q, S_k] mask it would be a
non-empty tensor of zeros. Numerically the same (zero), but a gradient eager does not have.
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
BUG = "frontend/attention.py: SDPA with an empty q, k or v (S_q, S_k or B = 0) gives a float attn_mask that requires grad a (zero) gradient; eager returns early and gives it none"
FIXED = True

A, B, C = 0, 1, 1


def make_inputs():
    g = torch.Generator().manual_seed(39)
    x0 = torch.randn((1, 1, B, C), generator=g)
    x1 = torch.randn((1, 1, B, C), generator=g)
    x2 = torch.randn((A, B), generator=g).requires_grad_()
    x3 = torch.randn((1, 1, A, C), generator=g)
    return (x0, x1, x2, x3)


def prog(x0, x1, x2, x3):
    t1 = torch.nn.functional.scaled_dot_product_attention(x3, x0, x1, attn_mask=x2)
    return t1


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
