"""flashlight demo: compile attention variants written in plain PyTorch, and show the work.

For each variant: the lifted loop-nest IR, the legality decisions (the isl witness that refused
naive fusion, the lemma that licensed the online rewrite), the fused and tiled IR, the generated
Triton kernel, and the error against eager PyTorch. Runs on the GPU if there is one, else on the
CPU through Triton's interpreter (small shapes).

    python examples/demo.py            # vanilla, causal, softcap
    python examples/demo.py --all      # every stage of every pass, too
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

import flashlight
from flashlight.report import format_proofs


def vanilla(q, k, v):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(s, dim=-1) @ v


def causal(q, k, v):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def softcap(q, k, v):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = 20.0 * torch.tanh(s / 20.0)
    return torch.softmax(s, dim=-1) @ v


def banner(text: str) -> None:
    print("\n" + "=" * 100 + f"\n{text}\n" + "=" * 100)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="print the IR after every pass")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    B, H, Sq, Sk, D = (2, 8, 1024, 1024, 64) if cuda else (2, 2, 77, 93, 16)
    tol = 2e-2 if cuda else 1e-5
    print(f"device {device}, dtype {dtype}, q: [{B},{H},{Sq},{D}], k/v: [{B},{H},{Sk},{D}]")
    failures = 0
    for fn in (vanilla, causal, softcap):
        torch.manual_seed(0)
        q = torch.randn(B, H, Sq, D, device=device, dtype=dtype)
        k = torch.randn(B, H, Sk, D, device=device, dtype=dtype)
        v = torch.randn(B, H, Sk, D, device=device, dtype=dtype)
        banner(f"{fn.__name__}")
        ex = flashlight.explain(fn, q, k, v)
        stages = ex.stages if args.all else [ex.stages[0], ex.stages[-1]]
        for name, text in stages:
            print(f"\n--- IR: {name} ---\n{text}")
        print("\n--- legality decisions ---")
        print(format_proofs([p for p in ex.proofs if not p.transformation.startswith(("inline", "contract"))]))
        for kern in ex.kernels:
            print(f"\n--- kernel {kern.name} ({kern.grid} programs) ---\n{kern.source}")
        print(f"global buffers: {[(b.name, b.shape) for b in ex.buffers] or 'none'}; "
              f"eager fallbacks: {ex.fallbacks or 'none'}")
        t0 = time.time()
        out = flashlight.compile(fn)(q, k, v)
        seconds = time.time() - t0
        ref = fn(q.double(), k.double(), v.double())
        err = ((out.double() - ref).norm() / ref.norm()).item()
        ok = err < tol
        failures += not ok
        print(f"\n{fn.__name__}: relative error vs eager (fp64) = {err:.2e} "
              f"({'ok' if ok else 'TOO LARGE'}, tolerance {tol:g}); first call {seconds:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
