"""How long a split-KV chunk should be (issue 20): one decode step at serving size, split into
chunks of each length, beside the unsplit kernel and SDPA. GB/s of the cache read (K and V once).

Run 22 (H100) read a GQA cache at 1757 GB/s with chunks of 512, where the unsplit kernel read it
at 3032: the split-reductions pass now takes as few chunks as give the grid 256 programs
(``default``); the fixed lengths beside it show what it chose against.

    python benchmarks/decode_chunks.py --shapes 8x32x32768x128g4,8x32x32768x128 --chunks 512,2048,8192
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import flashlight  # noqa: E402
from bench_attention import bench, parse_shape, relerr  # noqa: E402
from variants import VARIANTS  # noqa: E402


def pipeline(chunk: int | None) -> str:
    """Chunks of exactly ``chunk`` keys (an aim of a million programs: the shortest chunk wins), or
    no split (None)."""
    base = flashlight.passes.DEFAULT_PIPELINE
    if chunk is None:
        return base.replace("split-reductions,", "")
    return base.replace("split-reductions", f"split-reductions{{chunk={chunk},grid=1000000}}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="8x32x32768x128g4,8x32x32768x128")
    ap.add_argument("--chunks", default="512,1024,2048,4096,8192", help="key counts; 0: unsplit")
    ap.add_argument("--out", default=None, help="a JSON file, rewritten after each row")
    args = ap.parse_args()
    var, dev, rows = VARIANTS["decode"], torch.device("cuda"), []
    for shape in args.shapes.split(","):
        B, H, S, D, G = parse_shape(shape)
        torch.manual_seed(0)
        q, k, v = var.inputs(B, H, S, D, torch.bfloat16, dev, G)
        ref = var.fn(q.float(), k.float(), v.float())
        gb = 2 * k.numel() * k.element_size() / 1e9
        calls = {"sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=G > 1),
                 "default": flashlight.compile(var.fn, dynamic=False)}  # the pass's own choice
        for c in (int(x) for x in args.chunks.split(",")):
            calls[f"chunk {c}" if c else "unsplit"] = flashlight.compile(var.fn, dynamic=False,
                                                                         pipeline=pipeline(c or None))
        for label, f in calls.items():
            t0 = time.perf_counter()
            out = f(q, k, v)
            torch.cuda.synchronize()
            ms = bench(f, (q, k, v))
            rows.append({"shape": shape, "impl": label, "ms": round(ms, 4), "GBps": round(gb / ms * 1e3, 1),
                         "relerr": relerr(out.float(), ref), "first_call_s": round(time.perf_counter() - t0, 1)})
            print("ROW " + json.dumps(rows[-1]), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows},
                                                     indent=1))


if __name__ == "__main__":
    main()
