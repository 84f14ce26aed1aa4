"""flashlight fuzz reproducer: mismatch (seed 25605).

Found by ``python -m fuzz --seeds 25605:25606`` (generator version
3), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[3, 2]): NaN in other places than eager (2 vs 0); first at [2, 0]: nan vs eager -2.17
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
BUG = 'codegen: a reduction whose operand does not depend on a grid iterator (scores broadcast over rows) but whose guard does (causal mask as a domain) is emitted as tl.max(tl.where(m_j & guard[i, j], v[j], -inf), axis=0) and broadcast: it reduces over the rows, so the max is indexed by column and read by row; rows i >= the number of columns get max -inf and come out NaN'
FIXED = True

A, B = 2, 3


def make_inputs():
    g = torch.Generator().manual_seed(25605)
    x0 = torch.randn((1, A), generator=g)
    return (x0,)


# Simplified by hand from the minimized program (t0 = x0.mT @ x1; t1 = t0[x2] * 2 with x2 all
# zeros, then the same mask and log_softmax): the rows of the scores are one broadcast row.
def prog(x0):
    t1 = x0.expand(B, A) * 2
    t4_i = torch.arange(t1.shape[-2])[:, None]
    t4_j = torch.arange(t1.shape[-1])[None, :]
    t4 = t1.masked_fill(t4_j > t4_i, float("-inf"))
    t5 = torch.log_softmax(t4, -1)
    return t5


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
