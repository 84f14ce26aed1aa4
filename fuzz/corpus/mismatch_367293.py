"""flashlight fuzz reproducer: mismatch (seed 367293).

Found by ``python -m fuzz --seeds 367293:367294`` (generator version
3), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float16[5, 1]): NaN in other places than eager (2 vs 0); first at [3, 0]: nan vs eager 0.0
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
BUG = "passes/fuse_reductions (online rewrite): the NaN fixup where(amax == -inf, nan, z) also fired in rows where the masked sum folds no term at all (eager gives 0), e.g. rows restrict-to-demand left uncomputed; it now runs only in the rows isl finds the statement has terms in (a data-dependent mask refuses the rewrite)"
FIXED = True

A, B, C = 5, 2, 1


def make_inputs():
    g = torch.Generator().manual_seed(367293)
    x0 = torch.randn((A, C), generator=g).to(torch.float16)
    x1 = torch.randn((B, C), generator=g).to(torch.float16)
    x2 = torch.randn((B, 1), generator=g).to(torch.float16)
    return (x0, x1, x2)


def prog(x0, x1, x2):
    t0 = x0 @ x1.transpose(-1, -2) * 0.125
    t1 = torch.exp(t0 - t0.amax(-1, keepdim=True))
    t5_i = torch.arange(t1.shape[-2])[:, None]
    t5_j = torch.arange(t1.shape[-1])[None, :]
    t5 = t1.masked_fill((t5_i - t5_j >= 2) | (t5_j > t5_i), 0.0)
    t6 = t5 @ x2
    return t6


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
