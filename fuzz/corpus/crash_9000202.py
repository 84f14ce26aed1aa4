"""flashlight fuzz reproducer: a fallback to eager (seed 9000202).

Found by ``python -m fuzz --seeds 9000202`` (generator version 4): 15 of 1,388 programs of the
first campaign after the backward was compiled fell back to eager with this error, and the causal
backward on the H100 had no configuration that compiled (benchmarks/training_step.py).
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight falls back.

launching its kernels failed: InterpreterError: AttributeError("'float' object has no attribute 'to'")
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
BUG = ("codegen/expressions.py: a cast of a constant (f32 of a bf16 -inf, from a masked_fill) was "
       "emitted as float('-inf').to(tl.float32); a Python float has no .to, so every configuration "
       "failed to compile and the program ran eagerly")
FIXED = True

A, B, C = 31, 1, 3


def make_inputs():
    g = torch.Generator().manual_seed(9000202)
    x0 = torch.randn((A, C), generator=g).to(torch.bfloat16)
    x1 = torch.randn((B, C), generator=g).to(torch.bfloat16)
    x2 = torch.randn((B, C), generator=g).to(torch.bfloat16)
    return (x0, x1, x2)


def prog(x0, x1, x2):
    t0 = x0 @ x1.transpose(-1, -2) * 0.5
    t1_i = torch.arange(t0.shape[-2])[:, None]
    t1_j = torch.arange(t0.shape[-1])[None, :]
    t1 = t0.masked_fill(t1_j >= t1_i, float("-inf"))
    t2 = torch.softmax(t1, dim=-1)
    t3 = torch.matmul(t2, x2)
    return t3


OPTIONS = {}


def check():
    # strict: the program must compile, not fall back to eager
    check_program(prog, make_inputs, OPTIONS, strict_fallbacks=True)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
