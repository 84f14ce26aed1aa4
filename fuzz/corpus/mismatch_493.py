"""flashlight fuzz reproducer: mismatch (seed 493).

Found by ``python -m fuzz --seeds 493:494`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[1, 2]): NaN in other places than eager (1 vs 0); first at [0, 0]: nan vs eager -1000000000.0

Found with inputs that require grad; the minimizer dropped them: a forward bug. Row 0 is all
-1e9 (masked with -1e9, not -inf). The kernel computes the logsumexp online (the amax over two
size-1 axes shares its loop), and the first tile's rescale factor of the running sum is
exp(where(|m_prev| == inf, 0, m_prev) - m_new) with m_prev = -inf: exp(0 - (-1e9)) = inf, and
0 * inf = NaN. Any online logsumexp whose first tile has a row maximum below about -88.7
(exp overflows in float32) gives NaN, e.g. ``torch.logsumexp(x - 200.0, -1)`` on a (3, 200)
input with ``block_limit=64``. The factor must be 0 where m_prev is -inf.
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
BUG = "online logsumexp: the first tile rescales the running sum by exp(where(|m_prev| == inf, 0, m_prev) - m_new) = exp(-m_new), inf for a row maximum below -88.7 (a row masked with -1e9): 0 * inf = NaN"
FIXED = True

A, C, D = 1, 1, 2


def make_inputs():
    g = torch.Generator().manual_seed(493)
    x0 = torch.randn((C, D, D), generator=g)
    x1 = torch.randn((D, C, A, D), generator=g)
    return (x0, x1)


def prog(x0, x1):
    t2 = x1.amax(dim=(2, 1))
    t4 = torch.where(t2 >= x0, t2 - x0, 0.0)
    t5_i = torch.arange(t4.shape[-2])[:, None]
    t5_j = torch.arange(t4.shape[-1])[None, :]
    t5 = t4.masked_fill(t5_j >= t5_i, -1e9)
    t6 = torch.logsumexp(t5, -1)
    return t6


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
