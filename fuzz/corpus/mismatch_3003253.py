"""flashlight fuzz reproducer: mismatch (seed 3003253).

Found by ``python -m fuzz --seeds 3003253:3003254`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

gradient of input 0 (torch.float32[2, 1]): NaN in other places than eager (1 vs 2); first at [1, 0]: 0.0 vs eager nan
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
BUG = "frontend/attention.py: SDPA's boolean mask was applied with masked_fill, whose backward gives a masked score gradient 0; eager adds the mask as 0/-inf, so a NaN cotangent (std of one element) reaches q as NaN through a fully masked row. The decomposition adds masks too"
FIXED = True

A = 2


def make_inputs():
    g = torch.Generator().manual_seed(3003253)
    x0 = torch.randn((A, 1), generator=g).requires_grad_()
    x1 = torch.randn((1, 1), generator=g)
    x2 = torch.randn((1, 1), generator=g)
    x3 = torch.rand((A, 1), generator=g) < 0.5
    return (x0, x1, x2, x3)


def prog(x0, x1, x2, x3):
    t0 = torch.nn.functional.scaled_dot_product_attention(x0, x1, x2, attn_mask=x3, dropout_p=0.0, scale=0.5)
    t5 = t0.std(-1)
    return t5


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
