"""flashlight fuzz reproducer: crash (seed 3090).

Found by ``python -m fuzz --seeds 3090:3091``, then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

IndexError: tuple index out of range
                                              ~~~~~~~~~~^^^
IndexError: tuple index out of range

Set TORCHDYNAMO_VERBOSE=1 for the internal stack trace (please do this especially if you're reporting a bug to PyTorch). For even more developer context, set TORCH_LOGS="+dynamo"
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
BUG = "ir/expr.py simplify_index (frontend lift of an arange mask): fold reads inner.args[1] of a one-argument Call (neg(j) % 3, when the i axis has size 1): IndexError"
FIXED = True

A, B = 1, 2


def make_inputs():
    g = torch.Generator().manual_seed(3090)
    x0 = torch.randn((A, 1, B), generator=g)
    return (x0,)


def prog(x0):
    t6_i = torch.arange(x0.shape[-2])[:, None]
    t6_j = torch.arange(x0.shape[-1])[None, :]
    t6 = torch.where(((t6_i - t6_j) % 3 != 0) | (t6_j > t6_i), float("-inf"), x0)
    return t6


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
