"""Time flashlight beside eager, torch.compile, FlexAttention and SDPA, in one process and run.

Checks every result against an fp32 reference (eager on upcast inputs) by ‖out − ref‖/‖ref‖,
then prints a table and writes ``$OUT/<device>-<date>.json`` (or ``benchmarks/results/``).

    python benchmarks/bench_attention.py --variants vanilla,causal --shapes 4x16x4096x64
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import flashlight  # noqa: E402
from variants import VARIANTS, flex_mods  # noqa: E402


def relerr(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("nan")
    return ((out - ref).norm() / ref.norm()).item()


def bench(fn, *args) -> float:
    import triton.testing

    return triton.testing.do_bench(lambda: fn(*args), warmup=25, rep=100, return_mode="median")


def flops(name: str, B: int, H: int, S: int, D: int) -> float:
    dense = 4.0 * B * H * S * S * D
    if name in ("causal",):
        return dense / 2
    return dense


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="vanilla,causal")
    ap.add_argument("--shapes", default="4x16x4096x64")
    ap.add_argument("--impls", default="flashlight,eager,torch.compile,flex,sdpa")
    ap.add_argument("--out", default=os.environ.get("OUT", str(Path(__file__).parent / "results")))
    args = ap.parse_args()
    dev = torch.device("cuda")
    name_dev = torch.cuda.get_device_name().replace(" ", "_")
    rows = []
    impls = args.impls.split(",")
    for shape in args.shapes.split(","):
        B, H, S, D = (int(x) for x in shape.split("x"))
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16) for _ in range(3))
        for name in args.variants.split(","):
            fn = VARIANTS[name]
            ref = fn(q.float(), k.float(), v.float())
            results = {}
            if "flashlight" in impls:
                t0 = time.time()
                f = flashlight.compile(fn)
                out = f(q, k, v)
                torch.cuda.synchronize()
                compile_s = time.time() - t0
                fb = [x for g in f.graphs for x in g.fallbacks]
                nk = sum(len(p.launches) for g in f.graphs for p in g.compiled.values() if p)
                results["flashlight"] = (f, out, {"compile_s": round(compile_s, 2), "kernels": nk, "fallbacks": fb})
            if "eager" in impls:
                results["eager"] = (fn, fn(q, k, v), {})
            if "torch.compile" in impls:
                tc = torch.compile(fn, dynamic=False)
                results["torch.compile"] = (tc, tc(q, k, v), {})
            if "flex" in impls:
                try:
                    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

                    score, mask = flex_mods(name, H)
                    t0 = time.time()
                    bm = create_block_mask(mask, None, None, S, S, device=dev) if mask else None
                    torch.cuda.synchronize()
                    build = time.time() - t0
                    fa = torch.compile(flex_attention, dynamic=False)
                    call = (lambda q, k, v, fa=fa, score=score, bm=bm: fa(q, k, v, score_mod=score, block_mask=bm))
                    results["flex"] = (call, call(q, k, v), {"block_mask_s": round(build, 4)})
                except Exception as exc:  # noqa: BLE001
                    print(f"flex {name}: {type(exc).__name__}: {exc}")
            if "sdpa" in impls and name in ("vanilla", "causal"):
                from torch.nn.attention import SDPBackend, sdpa_kernel

                for label, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                                       ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
                    def call(q, k, v, backend=backend, causal=(name == "causal")):
                        with sdpa_kernel(backend):
                            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    try:
                        results[label] = (call, call(q, k, v), {})
                    except Exception as exc:  # noqa: BLE001
                        print(f"{label}: {type(exc).__name__}: {exc}")
            for impl, (call, out, extra) in results.items():
                err = relerr(out, ref)
                ms = bench(call, q, k, v)
                row = {"variant": name, "shape": shape, "impl": impl, "ms": round(ms, 4),
                       "tflops": round(flops(name, B, H, S, D) / ms / 1e9, 1), "relerr": err, **extra}
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"{name_dev}-{datetime.date.today().isoformat()}.json"
    path.write_text(json.dumps(rows, indent=1))
    print(f"\n{'variant':16s} {'shape':14s} " + " ".join(f"{i:>14s}" for i in sorted({r['impl'] for r in rows})))
    for (variant, shape) in dict.fromkeys((r["variant"], r["shape"]) for r in rows):
        cells = {r["impl"]: r for r in rows if r["variant"] == variant and r["shape"] == shape}
        line = f"{variant:16s} {shape:14s} "
        for impl in sorted({r['impl'] for r in rows}):
            c = cells.get(impl)
            text = "%.3fms" % c["ms"] if c else "-"
            line += f"{text:>14s} "
        print(line)


if __name__ == "__main__":
    main()
