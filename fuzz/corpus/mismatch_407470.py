"""flashlight fuzz reproducer: mismatch (seed 407470).

Found by ``python -m fuzz --seeds 407470:407471`` (generator version
3), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[97, 1]): 68 of 97 elements beyond rtol 0.0001, atol 1e-07; max abs error 0.00135 (scale 0.001); first at [1, 0]: 0.00135382229 vs eager 0.0
(minimized to a 3.6e-07 error without the mask; the masked rows, 15000 after the scale, are kept to show the size)
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
BUG = "codegen/triton.py exp: exp(a - b) was emitted as exp2(a*log2e - b*log2e) with a's constant factor folded into log2e, which rounds each product on the scale of |a| instead of the difference: a row's max no longer gives exp(0) = 1, so log_softmax of a row masked to 15000 came out 1.4e-3 instead of 0"
FIXED = True

C = 5


def make_inputs():
    g = torch.Generator().manual_seed(407470)
    x0 = torch.randn((C, 1), generator=g)
    return (x0,)


def prog(x0):
    t3_i = torch.arange(x0.shape[-2])[:, None]
    t3 = x0.masked_fill(t3_i % 3 != 0, -10000.0)
    t4 = t3 * -1.5
    t5 = torch.nn.functional.log_softmax(t4, dim=-1)
    return t5


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
