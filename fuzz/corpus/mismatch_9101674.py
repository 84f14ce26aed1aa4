"""flashlight fuzz reproducer: mismatch (seed 9101674).

Found by ``python -m fuzz --seeds 9101674`` (generator version 4), in the second campaign after
the backward was partitioned and compiled by flashlight, where the backward program fell back to
eager PyTorch (AZ); reproduced with ``compile_backward=False``.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

gradient of input 2 (torch.bfloat16[1, 5, 3, 5]): 2 of 75 elements beyond rtol 0.03, atol 0.63;
max abs error 1.82 (scale 21.1)
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
BUG = ("an eager backward recomputed bf16 values from row statistics that the forward's kernel "
       "saved (frontend/partition.py): the kernel kept the scores of x0 @ x1.T in fp32, eager rounds "
       "them, so the recomputed probabilities did not sum to 1. An eager backward (compile_backward="
       "False) now gets AOT autograd's own partition: it reads only values the forward's program "
       "computed, as before the partition existed")
FIXED = True

A, B, C, D = 31, 3, 5, 7


def make_inputs():
    g = torch.Generator().manual_seed(9101674)
    x0 = torch.randn((1, C, A, C), generator=g).to(torch.bfloat16).requires_grad_()
    x1 = torch.randn((1, C, B, C), generator=g).to(torch.bfloat16).requires_grad_()
    x2 = torch.randn((1, C, B, C), generator=g).to(torch.bfloat16).requires_grad_()
    x3 = torch.randint(0, C, (1, C, A, D), generator=g, dtype=torch.int64)
    return (x0, x1, x2, x3)


def prog(x0, x1, x2, x3):
    t0 = x0 @ x1.transpose(-2, -1)
    t1_i = torch.arange(t0.shape[-2])[:, None]
    t1_j = torch.arange(t0.shape[-1])[None, :]
    t1 = torch.where((t1_j > t1_i) & (t1_j >= 8), float("-inf"), t0)
    t2 = torch.softmax(t1.float(), dim=-1).to(x0.dtype)
    t3 = torch.matmul(t2, x2)
    t4 = torch.take_along_dim(t3, x3, dim=3)
    t5 = t4 * torch.arange(D) + 10.0
    t6 = torch.nn.functional.gelu(t5)
    t7 = torch.logsumexp(t6, 0, keepdim=False)
    return t7


# the backward in eager PyTorch, as when a backward program falls back to eager (it did here, AZ)
OPTIONS = {"compile_backward": False}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
