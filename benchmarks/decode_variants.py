"""Every decode variant of the CPU tests at serving sizes on the GPU (issue 20), bf16.

The cases of ``tests/test_split_reductions.py`` (vanilla, causal with an offset, sliding window,
ALiBi, softcap, GQA, a fully masked row; and on paged caches: vanilla, ALiBi, softcap, sliding
window, GQA) at B x 32 query heads x S keys x D, each compiled by ``flashlight.compile`` for its
shape, checked against eager PyTorch on fp32 copies (rows eager leaves NaN must be NaN), and
timed in GB/s of the cache read. The paged cases run twice: pages scattered over the pool (a
random table) and in order (the same kernel, the table the identity), beside the contiguous
vanilla/GQA step: "paged within 5% of contiguous" is the ratio of those rows::

    python benchmarks/decode_variants.py --shape 8x32x32768x128 --out $OUT/decode_variants.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE), str(HERE.parent / "tests")]

import flashlight  # noqa: E402
from bench_attention import bench  # noqa: E402
from test_split_reductions import CASES, H as TEST_HEADS, PAGE, PAGED  # noqa: E402

KV_GROUP = 4  # the GQA cases: 32 query heads share 8 key/value heads


def compare(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error where eager has numbers; infinity if the NaNs (fully masked rows) differ."""
    if not torch.equal(out.isnan(), ref.isnan()):
        return float("inf")
    out, ref = out.double().nan_to_num(), ref.double().nan_to_num()
    return ((out - ref).norm() / ref.norm()).item()


def timed(name: str, fn, args: list[torch.Tensor], cache_bytes: int, extra: dict) -> dict:
    ref = fn(*[a.float() if a.is_floating_point() else a for a in args])
    t0 = time.time()
    f = flashlight.compile(fn, dynamic=False)
    out = f(*args)
    torch.cuda.synchronize()
    compile_s = time.time() - t0
    ms = min(bench(f, args) for _ in range(2))
    row = {"case": name, "ms": round(ms, 4), "GBps": round(cache_bytes / ms / 1e6, 1),
           "relerr": compare(out.float(), ref), "compile_s": round(compile_s, 1),
           "kernels": sum(len(p.launches) for g in f.graphs for p in g.compiled.values() if p),
           "fallbacks": [x for g in f.graphs for x in g.fallbacks], **extra}
    print("ROW " + json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="8x32x32768x128", help="B x query heads x cache length x D")
    ap.add_argument("--cases", default=",".join(CASES), help="contiguous cases; also " + ",".join(PAGED))
    ap.add_argument("--paged", default=",".join(PAGED))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)
    B, H, S, D = (int(x) for x in args.shape.split("x"))
    dev, dt = torch.device("cuda"), torch.bfloat16
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": args.shape, "rows": []}

    def keep(row: dict) -> None:
        result["rows"].append(row)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))

    for name in filter(None, args.cases.split(",")):
        fn, sq, hkv = CASES[name]
        hkv = H if hkv == TEST_HEADS else H // KV_GROUP
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, sq, D, device=dev, dtype=dt), torch.randn(B, hkv, S, D, device=dev, dtype=dt),
                   torch.randn(B, hkv, S, D, device=dev, dtype=dt))
        try:
            keep(timed(name, fn, [q, k, v], 2 * k.numel() * k.element_size(), {"layout": "contiguous", "queries": sq}))
        except Exception as exc:  # noqa: BLE001  say which case failed, go on
            keep({"case": name, "error": f"{type(exc).__name__}: {exc}"[:400]})
        del q, k, v
        torch.cuda.empty_cache()
    pages = S // PAGE
    for name in filter(None, args.paged.split(",")):
        fn, hkv = PAGED[name]
        hkv = H if hkv == TEST_HEADS else H // KV_GROUP
        torch.manual_seed(0)
        q = torch.randn(B, H, 1, D, device=dev, dtype=dt)
        k_pages, v_pages = (torch.randn(B * pages, PAGE, hkv, D, device=dev, dtype=dt) for _ in range(2))
        scattered = torch.randperm(B * pages, device=dev).view(B, pages)
        in_order = torch.arange(B * pages, device=dev).view(B, pages)
        for layout, table, lengths in (
                ("paged", scattered, torch.full((B,), S, device=dev)),
                ("paged in order", in_order, torch.full((B,), S, device=dev)),
                ("paged, ragged lengths", scattered, torch.linspace(1, S, B, device=dev).long())):
            try:
                keep(timed(f"paged {name}", fn, [q, k_pages, v_pages, table, lengths],
                           int(2 * lengths.sum()) * hkv * D * k_pages.element_size(), {"layout": layout, "queries": 1}))
            except Exception as exc:  # noqa: BLE001
                keep({"case": f"paged {name}", "layout": layout, "error": f"{type(exc).__name__}: {exc}"[:400]})
        del q, k_pages, v_pages
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
