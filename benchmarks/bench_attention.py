"""Time flashlight beside eager, torch.compile, FlexAttention and SDPA, in one process and run.

Every output is checked against eager PyTorch on fp32 copies of the inputs (‖out − ref‖/‖ref‖).
Prints a table and writes ``<out>/<device>-<date>[-tag].json`` with rows
``{variant, shape, impl, ms, tflops, relerr, ...}``.

    python benchmarks/bench_attention.py --variants vanilla,causal --shapes 4x16x4096x64
    python benchmarks/bench_attention.py --shapes 4x16x4096x64g8      # GQA, 8 query heads per KV head
    python benchmarks/bench_attention.py --variants vanilla,sdpa,causal,sdpa_causal   # SDPA as written
    python benchmarks/bench_attention.py --variants decode,decode4 --shapes 8x32x32768x128g4 \
        --impls flashlight,flashlight-nosplit,eager,sdpa,flex  # split-KV; GB/s of the cache read
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
from variants import DECODE_QUERIES, VARIANTS, cache_bytes  # noqa: E402


# the variants the benchmark reports; the others (ipa_like, key_lengths, decode) on request
ISSUE_VARIANTS = ("vanilla", "causal", "sliding_window", "prefix_lm", "document", "softcap", "alibi",
                  "differential", "evoformer")


def relerr(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return float("nan")
    return ((out - ref).norm() / ref.norm()).item()


def bench(fn, args) -> float:
    import triton.testing

    return triton.testing.do_bench(lambda: fn(*args), warmup=25, rep=100, return_mode="median")


def configs(f, dev: torch.device) -> list[str]:
    """The tuned configuration of each compiled program, ``block_m/block_n/w<warps>/s<stages>``."""
    from flashlight import autotune

    out = []
    for g in f.graphs:
        for k, p in g.compiled.items():
            choice = p and autotune.lookup(g.lifted.segments[k].program, autotune.device_name(dev),
                                                 f.options.for_target("cuda").pipeline)
            if choice:
                warps = "/".join(f"w{ln.kernel.num_warps}" for ln in p.launches)
                out.append(f"{choice['block_m']}/{choice['block_n']}/{warps}/s{choice['num_stages']}")
    return out


def parse_shape(text: str) -> tuple[int, int, int, int, int]:
    group = 1
    if "g" in text:
        text, g = text.split("g")
        group = int(g)
    B, H, S, D = (int(x) for x in text.split("x"))
    return B, H, S, D, group


def main() -> None:
    # every variant and shape compiles FlexAttention and torch.compile afresh: past Dynamo's default
    # limit of 8 recompilations they would silently run their unfused fallbacks
    import torch._dynamo

    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default=",".join(ISSUE_VARIANTS),
                    help=f"default: the nine of the benchmark; also {', '.join(v for v in VARIANTS if v not in ISSUE_VARIANTS)}")
    ap.add_argument("--shapes", default="4x16x4096x64")
    ap.add_argument("--impls", default="flashlight,eager,torch.compile,flex,sdpa")
    ap.add_argument("--options", default="", help="flashlight options, e.g. block_m=128,block_n=64")
    ap.add_argument("--evoformer-shape", default="32x4x256x64",
                    help="B x H x S x D of Evoformer row attention (B x 256 rows of S residues)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", default=os.environ.get("OUT", str(Path(__file__).parent / "results")))
    args = ap.parse_args()
    opts = {k: int(v) for k, v in (x.split("=") for x in args.options.split(",") if x)}
    # the kernels compiled for each shape: Dynamo remembers a function's earlier shapes, and would
    # otherwise give a later shape of a variant the program for every length (dynamic_sizes.py)
    opts["dynamic"] = False
    dev = torch.device("cuda")
    rows = []
    impls = args.impls.split(",")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    dev_name = torch.cuda.get_device_name().replace(" ", "_")
    tag = f"-{args.tag}" if args.tag else ""
    path = Path(args.out) / f"{dev_name}-{datetime.date.today().isoformat()}{tag}.json"
    for shape in args.shapes.split(","):
        B, H, S, D, group = parse_shape(shape)
        for name in args.variants.split(","):
            var = VARIANTS[name]
            if group > 1 and name in ("differential", "evoformer"):
                continue
            torch.manual_seed(0)
            if name == "evoformer":
                eb, eh, es, ed, _ = parse_shape(args.evoformer_shape)
                inputs = var.inputs(eb, eh, es, ed, torch.bfloat16, dev)
            else:
                inputs = var.inputs(B, H, S, D, torch.bfloat16, dev, group)
            ref = var.fn(*[a.float() if a.is_floating_point() else a for a in inputs])
            calls: dict[str, tuple] = {}
            if "flashlight" in impls:
                t0 = time.time()
                f = flashlight.compile(var.fn, **opts)
                out = f(*inputs)
                torch.cuda.synchronize()
                cold = time.time() - t0
                nk = sum(len(p.launches) for g in f.graphs for p in g.compiled.values() if p)
                fb = [x for g in f.graphs for x in g.fallbacks]
                t0 = time.time()  # a second compilation: Dynamo again, the rest from the disk caches
                flashlight.compile(var.fn, **opts)(*inputs)
                torch.cuda.synchronize()
                warm = time.time() - t0
                calls["flashlight"] = (f, out, {"compile_s": round(cold, 2), "warm_s": round(warm, 2),
                                                "kernels": nk, "fallbacks": fb, "configs": configs(f, dev)})
            if "flashlight-nosplit" in impls:  # the same pipeline without split-reductions (issue 20)
                pipe = flashlight.passes.DEFAULT_PIPELINE.replace("split-reductions,", "")
                fn_ = flashlight.compile(var.fn, pipeline=pipe, **opts)
                calls["flashlight-nosplit"] = (fn_, fn_(*inputs), {})
            if "eager" in impls:
                calls["eager"] = (var.fn, var.fn(*inputs), {})
            if "torch.compile" in impls:
                tc = torch.compile(var.fn, dynamic=False)
                calls["torch.compile"] = (tc, tc(*inputs), {})
            if "flex" in impls:
                try:
                    if name == "differential":  # two FlexAttention calls and the combination
                        from variants import LAMBDA
                        q, k, v = inputs
                        h = q.shape[1] // 2
                        fv = VARIANTS["vanilla"].flex_call((q[:, :h], k[:, :h], v))[0]

                        def two(q, k, v, fv=fv, h=h):
                            return fv(q[:, :h], k[:, :h], v) - LAMBDA * fv(q[:, h:], k[:, h:], v)
                        calls["flex"] = (two, two(*inputs), {"calls": 2})
                    else:
                        made = var.flex_call(inputs)
                        if made is not None:
                            fc, build = made
                            calls["flex"] = (fc, fc(*inputs), {"block_mask_s": round(build, 4)})
                except Exception as exc:  # noqa: BLE001
                    print(f"flex {name}: {type(exc).__name__}: {exc}", flush=True)
            if "sdpa" in impls and (name in ("vanilla", "causal", "sdpa", "sdpa_causal") or name in DECODE_QUERIES):
                from torch.nn.attention import SDPBackend, sdpa_kernel

                for label, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                                       ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
                    def sd(q, k, v, backend=backend, causal=name.endswith("causal")):
                        with sdpa_kernel(backend):
                            return torch.nn.functional.scaled_dot_product_attention(
                                q, k, v, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1])
                    try:
                        calls[label] = (sd, sd(*inputs), {})
                    except Exception as exc:  # noqa: BLE001
                        print(f"{label}: {type(exc).__name__}: {exc}", flush=True)
            # two interleaved rounds, each implementation's best kept: a single median of a 0.1 ms
            # kernel moved by 20% between two runs of one process (sliding window: 0.105 / 0.129)
            best: dict[str, float] = {}
            for _ in range(2):
                for impl, (call, _, _) in calls.items():
                    best[impl] = min(bench(call, inputs), best.get(impl, float("inf")))
            for impl, (call, out, extra) in calls.items():
                ms = best[impl]
                row = {"variant": name, "shape": shape if name != "evoformer" else args.evoformer_shape,
                       "impl": impl, "ms": round(ms, 4),
                       "tflops": round(var.flops(inputs) / ms / 1e9, 1), "relerr": relerr(out, ref), **extra}
                if name in DECODE_QUERIES:
                    row["GBps"] = round(cache_bytes(inputs) / ms / 1e6, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
                path.write_text(json.dumps(rows, indent=1))  # kept row by row: a later failure loses nothing
            del calls
            torch.cuda.empty_cache()
    cols = sorted({r["impl"] for r in rows}, key=lambda c: (c != "flashlight", c))
    print(f"\n{'variant':16s} {'shape':16s} " + " ".join(f"{c:>14s}" for c in cols) + "   fl/flex")
    for key in dict.fromkeys((r["variant"], r["shape"]) for r in rows):
        cells = {r["impl"]: r for r in rows if (r["variant"], r["shape"]) == key}
        line = f"{key[0]:16s} {key[1]:16s} "
        for c in cols:
            text = "%.3fms" % cells[c]["ms"] if c in cells else "-"
            line += f"{text:>14s} "
        if "flashlight" in cells and "flex" in cells:
            line += f"  {cells['flashlight']['ms'] / cells['flex']['ms']:.2f}"
        print(line)


if __name__ == "__main__":
    main()
