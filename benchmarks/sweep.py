"""Sweep flashlight's tile sizes, warps and stages for attention variants on the GPU.

Captures and lifts each variant once, then compiles it for every configuration, checks the
result against fp32 and times it; prints the best configurations. Used to choose defaults.

    python benchmarks/sweep.py --variants vanilla,causal --shape 4x16x4096x64
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_attention import bench, parse_shape, relerr  # noqa: E402
from variants import VARIANTS  # noqa: E402

from flashlight.api import Options, compile_segment  # noqa: E402
from flashlight.codegen import launcher  # noqa: E402
from flashlight.frontend import capture_graphs, lift_graph  # noqa: E402
from flashlight.runtime import CompiledGraph, CompiledProgram  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", default="vanilla,causal")
    ap.add_argument("--shape", default="4x16x4096x64")
    ap.add_argument("--bm", default="64,128")
    ap.add_argument("--bn", default="32,64,128")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--stages", default="2,3,4")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    args = ap.parse_args()
    B, H, S, D, group = parse_shape(args.shape)
    results = []
    for name in args.variants.split(","):
        var = VARIANTS[name]
        torch.manual_seed(0)
        shape = (32, 4, 256, 64) if name == "evoformer" else (B, H, S, D)
        inputs = var.inputs(*shape, torch.bfloat16, "cuda", group if name not in ("differential", "evoformer") else 1)
        ref = var.fn(*[a.float() if a.is_floating_point() else a for a in inputs])
        graphs, _ = capture_graphs(var.fn, inputs)
        g = graphs[0]
        lifted = lift_graph(g.graph_module, g.input_names, name)
        rows = []
        for bm, bn in itertools.product(map(int, args.bm.split(",")), map(int, args.bn.split(","))):
            for warps, stages in itertools.product(map(int, args.warps.split(",")), map(int, args.stages.split(","))):
                opts = Options(block_m=bm, block_n=bn, num_warps=warps, num_stages=stages).for_target("cuda")
                compiled = {}
                try:
                    for k, seg in enumerate(lifted.segments):
                        final, kernels = compile_segment(seg, opts, "cuda")
                        launches = [launcher.Launch(ks, launcher.load(ks, interpret=False)) for ks in kernels]
                        strides = {d.name: tuple(int(x) for x in n.meta["val"].stride())
                                   for d, n in zip(final.inputs, seg.inputs)}
                        compiled[k] = CompiledProgram(final, launches, strides, torch.device("cuda"))
                    graph = CompiledGraph(lifted, compiled)
                    by_name = dict(zip(inspect.signature(var.fn).parameters, inputs))
                    flat = [by_name[n] for n in g.input_names]
                    out = graph(flat)
                    out = out[0] if isinstance(out, (tuple, list)) else out
                    err = relerr(out, ref)
                    ms = bench(lambda *a: graph(list(a)), flat)
                except Exception as exc:  # noqa: BLE001
                    print(f"{name} bm={bm} bn={bn} w={warps} s={stages}: {type(exc).__name__}: {str(exc)[:120]}",
                          flush=True)
                    continue
                row = {"variant": name, "bm": bm, "bn": bn, "warps": warps, "stages": stages,
                       "ms": round(ms, 4), "relerr": err}
                rows.append(row)
                print(json.dumps(row), flush=True)
        rows.sort(key=lambda r: r["ms"])
        results += rows
        print(f"best {name}: " + "; ".join(f"{r['bm']}/{r['bn']}/w{r['warps']}/s{r['stages']} {r['ms']}ms"
                                           for r in rows[:5]), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "sweep.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
