"""Correctness on tensors of more than 2**31 - 1 elements (GPU only: 4+ GB per tensor).

Offsets into such tensors must be formed in 64 bits (codegen ``_Kernel.pointer``); a 32-bit
offset wraps around and reads the wrong rows. Prints one line per case, writes ``<out>/wide.json``.

    python benchmarks/check_wide.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flashlight  # noqa: E402


def softmax_rows(x):
    return torch.softmax(x, dim=-1)


def attention(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v


def relerr(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def main() -> None:
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    rows = []

    x = torch.randn(3 * 2**20 + 3, 1024, device=dev, dtype=torch.float16, generator=g)  # 3.2e9 elements
    t0 = time.perf_counter()
    out = flashlight.compile(softmax_rows, autotune=False)(x)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    err = max(relerr(out[s:s + 2**18], softmax_rows(x[s:s + 2**18].float())) for s in range(0, x.shape[0], 2**18))
    tail = relerr(out[-5:], softmax_rows(x[-5:].float()))  # rows past 2**31 elements
    rows.append({"case": "softmax", "shape": list(x.shape), "numel": x.numel(), "relerr": err,
                 "relerr_last_rows": tail, "seconds": secs})
    del x, out
    torch.cuda.empty_cache()

    H, S = 96, 2**19 + 7  # k, v: 3.2e9 elements each; heads 64 and on lie past 2**31
    q = torch.randn(1, H, 128, 64, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, H, S, 64, device=dev, dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, H, S, 64, device=dev, dtype=torch.bfloat16, generator=g)
    t0 = time.perf_counter()
    out = flashlight.compile(attention, autotune=False)(q, k, v)
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    errs = [relerr(out[:, h], attention(q[:, h].float(), k[:, h].float(), v[:, h].float())) for h in (0, 70, H - 1)]
    rows.append({"case": "attention", "shape": [list(q.shape), list(k.shape)], "numel": k.numel(),
                 "relerr": max(errs), "heads_checked": [0, 70, H - 1], "seconds": secs})

    for r in rows:
        print(json.dumps(r))
    out_dir = Path(os.environ.get("OUT", "."))
    (out_dir / "wide.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
