"""Time attention variants compiled with and without some passes, in one process, interleaved.

A pass that saves a few percent is lost in machine-to-machine noise (5-7% for our kernels between
two H100s), so an A/B of the pipeline is timed here side by side: both programs tuned, then timed
in alternating rounds, each result checked against fp32, FlexAttention alongside as a control.

    python benchmarks/compare_pipelines.py --variants alibi --shapes 4x16x4096x64 --without factor-scales
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import flashlight  # noqa: E402
from bench_attention import bench, parse_shape, relerr  # noqa: E402
from flashlight import passes  # noqa: E402
from variants import VARIANTS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="alibi")
    ap.add_argument("--shapes", default="4x16x4096x64")
    ap.add_argument("--without", required=True, help="comma-separated passes dropped from the B pipeline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    drop = {p.strip() for p in args.without.split(",")}
    unknown = drop - set(passes.PASSES)
    if unknown:
        raise SystemExit(f"unknown passes: {', '.join(sorted(unknown))}")
    full = passes.DEFAULT_PIPELINE
    reduced = ",".join(p for p in full.split(",") if p not in drop)
    dev = torch.device("cuda")
    rows = []
    for name in args.variants.split(","):
        var = VARIANTS[name]
        for text in args.shapes.split(","):
            B, H, S, D, group = parse_shape(text)
            torch.manual_seed(0)
            inputs = var.inputs(B, H, S, D, torch.bfloat16, dev, group)
            ref = var.fn(*[x.float() if x.is_floating_point() else x for x in inputs])
            impls = {"with": flashlight.compile(var.fn, dynamic=False),  # each shape's own kernels
                     "without": flashlight.compile(var.fn, pipeline=reduced, dynamic=False)}
            flex = var.flex_call(inputs)
            if flex is not None:
                impls["flex"] = flex[0]
            times: dict[str, list[float]] = {k: [] for k in impls}
            err = {k: relerr(f(*inputs).float(), ref) for k, f in impls.items()}  # compiles and tunes
            for _ in range(args.rounds):
                for k, f in impls.items():
                    times[k].append(bench(f, inputs))
            best = {k: min(v) for k, v in times.items()}
            row = {"variant": name, "shape": text, "without": sorted(drop), "ms": best, "relerr": err,
                   "ratio_with_over_without": best["with"] / best["without"]}
            rows.append(row)
            flex_ms = f"{best['flex']:.3f}" if "flex" in best else "-"
            print(f"{name:16s} {text:16s} with {best['with']:.3f}  without {best['without']:.3f}  "
                  f"ratio {row['ratio_with_over_without']:.3f}  flex {flex_ms}  "
                  f"relerr {err['with']:.1e}/{err['without']:.1e}", flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        Path(args.out, "compare_pipelines.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
