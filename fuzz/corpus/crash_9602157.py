"""flashlight fuzz reproducer: crash (seed 9602157, bug BE).

Found by ``python -m fuzz --seeds 9600000:9603000`` (generator version 4); already minimal.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

capture failed inside Dynamo: BackendCompilerFailed: backend='backend' raised:
AssertionError: Node given_default was invalid, but is output

The output ``x1.float() @ x2.mT`` is a matrix product the partition saves, with its definition
stated to the backward; the definition read ``x1``, a primal input the backward does not get (it
is not saved: an integer tensor, no gradient needs it).
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
BUG = "crash: capture failed inside Dynamo: BackendCompilerFailed: backend='backend' raised:"
FIXED = True

A, B = 2, 13


def make_inputs():
    g = torch.Generator().manual_seed(9602157)
    x1 = torch.randint(-9, 10, (A, B), generator=g, dtype=torch.int32)
    x2 = torch.randn((B, B), generator=g).requires_grad_()
    return (x1, x2)


def prog(x1, x2):
    t0 = x1.float()
    t1 = t0 + 0.125
    t2 = t0 @ x2.mT
    return t2, t1


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
