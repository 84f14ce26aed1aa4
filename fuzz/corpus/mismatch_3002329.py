"""flashlight fuzz reproducer: mismatch (seed 3002329).

Found by ``python -m fuzz --seeds 3002329:3002330`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.bfloat16[1, 5]): NaN in other places than eager (0 vs 1); first at [0, 4]: -inf vs eager nan
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
BUG = "masks-to-domains: a logsumexp re-masking a log-softmax whose rows are fully masked: a row whose first maximum is -inf mixes points that fold NaN with points the second mask sets to -inf, and guarding by both masks lost eager's NaN. Masks over maxima of other domains stay expressions where a combination of branches folds NaN"
FIXED = True

A, B, C = 5, 1, 1


def make_inputs():
    g = torch.Generator().manual_seed(3002329)
    x0 = torch.randn((B, A, C), generator=g).to(torch.bfloat16)
    return (x0,)


def prog(x0):
    t3_i = torch.arange(x0.shape[-2])[:, None]
    t3_j = torch.arange(x0.shape[-1])[None, :]
    t3 = x0.masked_fill((t3_i - t3_j >= 1) | (t3_j > t3_i), float("-inf"))
    t4 = torch.log_softmax(t3, -1)
    t5_i = torch.arange(t4.shape[-2])[:, None]
    t5_j = torch.arange(t4.shape[-1])[None, :]
    t5 = t4.masked_fill(((t5_i - t5_j) % 4 != 0) | (t5_j > t5_i), float("-inf"))
    t6 = torch.logsumexp(t5, -1)
    return t6


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
