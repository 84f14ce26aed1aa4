"""flashlight fuzz reproducer: mismatch (seed 3200281).

Found by ``python -m fuzz --seeds 3200281:3200282`` (generator version
3), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float16[1, 5, 1]): NaN in other places than eager (1 vs 0); first at [0, 4, 0]: nan vs eager 1.0146484375
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
BUG = "mismatch: output 0 (torch.float16[1, 5, 1]): NaN in other places than eager (1 vs 0); first at [0, 4, 0]: nan vs eager 1.0146484375"
FIXED = True

A, B, C, D = 5, 2, 1, 1


def make_inputs():
    g = torch.Generator().manual_seed(3200281)
    x0 = torch.randn((D, A, C), generator=g).to(torch.float16)
    x1 = torch.randn((D, B, C), generator=g).to(torch.float16)
    x2 = torch.randn((D, B, C), generator=g).to(torch.float16)
    return (x0, x1, x2)


def prog(x0, x1, x2):
    t0 = x0 @ x1.transpose(-2, -1)
    t1_i = torch.arange(t0.shape[-2])[:, None]
    t1_j = torch.arange(t0.shape[-1])[None, :]
    t1 = t0 + 0.5 * (t1_j - t1_i)
    t2_i = torch.arange(t1.shape[-2])[:, None]
    t2_j = torch.arange(t1.shape[-1])[None, :]
    t2 = torch.where((t2_i - t2_j >= 3) | (t2_j > t2_i), -1e9, t1)
    t3 = torch.softmax(t2.float(), dim=-1).to(x0.dtype)
    t4 = torch.matmul(t3, x2)
    return t4


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
