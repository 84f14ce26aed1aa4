"""flashlight fuzz reproducer: mismatch (seed 420676).

Found by ``python -m fuzz --seeds 420676:420677`` (generator version
3), then minimized.
Run ``python {this file}``: ``check()`` raises AssertionError while flashlight differs from eager.

output 0 (torch.float32[1, 1]): 1 of 1 elements beyond rtol 0.0001, atol 1e-07; max abs error 9.54e-07 (scale 0.001); first at [0, 0]: 8.344650268554688e-07 vs eager -1.1920928955078125e-07
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
BUG = "fuzz/comparison.py compare, a false positive (no compiler bug): layer_norm outputs summed over the normalized axis are 0 exactly (7e-16 in float64); eager's row sums (-6e-7, 5e-7) happen to cancel to -1.2e-7, flashlight rounds a row differently and gets 8.3e-7. The old rule excused only errors within 4x eager's error against float64, which was lucky here; compare now also takes eager's Monte-Carlo rounding noise (eager_noise: 2.4e-6 here, with layer_norm's mean perturbed inside its decomposition)"
FIXED = True

A, B = 2, 3


def make_inputs():
    g = torch.Generator().manual_seed(420676)
    x0 = (torch.rand((A, B), generator=g) + 0.5)
    return (x0,)


def prog(x0):
    t0 = torch.nn.functional.layer_norm(x0, (x0.shape[-1],))
    t2 = t0.mean((0,), keepdim=True)
    t3 = t2.sum((1, 0), keepdim=True)
    return t3


OPTIONS = {}


def check():
    check_program(prog, make_inputs, OPTIONS)


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
