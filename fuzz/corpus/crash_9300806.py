"""flashlight fuzz reproducer: crash (seed 9300806).

Found by ``python -m fuzz --seeds 9300806:9300807`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

capture failed inside Dynamo: BackendCompilerFailed: backend='backend' raised:
capture failed inside Dynamo: BackendCompilerFailed: backend='backend' raised:
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

A = 1


def make_inputs():
    g = torch.Generator().manual_seed(9300806)
    x0 = torch.randn((A,), generator=g).to(torch.bfloat16).requires_grad_()
    return (x0,)


def prog(x0):
    t3 = (x0 - x0.amax(0, keepdim=True)).exp().sum(0).log()
    return t3


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
