"""flashlight fuzz reproducer: mismatch (seed 9901339).

Found by ``python -m fuzz --seeds 9901339:9901340`` (generator version
4), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.bool[13, 97, 2]): 6 of 2522 elements differ, first at [6, 10, 1]: False vs eager True
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
BUG = "mismatch: output 0 (torch.bool[13, 97, 2]): 6 of 2522 elements differ, first at [6, 10, 1]: False vs eager True"
FIXED = True

A, B, C = 13, 97, 2


def make_inputs():
    g = torch.Generator().manual_seed(9901339)
    x0 = torch.randn((A, B, C), generator=g).to(torch.bfloat16)
    return (x0,)


def prog(x0):
    t3 = torch.softmax(x0, dim=-1)
    t4 = (t3 > 0.5)
    return t4


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
