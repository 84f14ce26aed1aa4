"""flashlight fuzz reproducer: crash (seed 16).

Found by ``python -m fuzz --seeds 16:17 --fail-on-compile-error`` (generator version
4), then minimized, then simplified by hand (a [1, 2] input, a causal mask). Without that flag the
program is ``ok``: the segment falls back to eager (about 3% of all programs do, with this error
on sum_N, mm_N_sum, bmm_N, ...; seed 722 minimizes to softmax(q @ k^T masked) @ v with S_q = 1).
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

compilation raised, the segment ran eagerly: CodegenError: sum_1 is read before this kernel writes it

A softmax over the last axis of an arange-masked tensor with a single row (S_q = 1: one query,
as in a decoding step) does not compile: the kernel that reads the row sum sum_1 is scheduled
before (or without) the one that writes it. S_q = 2 compiles; so does the unmasked softmax.
Older than this generator: the same at commits 09459f4 and 73f50ad.
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
BUG = "a softmax of an arange-masked tensor with one row (S_q = 1, a decoding step) does not compile: CodegenError: sum_1 is read before this kernel writes it (falls back to eager)"
FIXED = True

A, B = 1, 2


def make_inputs():
    g = torch.Generator().manual_seed(16)
    x0 = torch.randn((A, B), generator=g)
    return (x0,)


def prog(x0):
    i = torch.arange(x0.shape[-2])[:, None]
    j = torch.arange(x0.shape[-1])[None, :]
    return torch.softmax(x0.masked_fill(j > i, float("-inf")), dim=-1)


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS, strict_fallbacks=True)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
