"""Time the kernels of two versions of flashlight side by side: before and after a refactor.

A restructuring that must keep every kernel the same is checked on the GPU here. Each version
runs in worker processes of its own (two versions of one package cannot share a process), in
alternating rounds on the same card: ``after`` first tunes every variant, its tuned
configuration is pinned for both versions when the variant's programs share one (so that the
columns compare code, not tuning noise), then ``before`` and ``after`` alternate ``--rounds``
times and each keeps its best time. Every output is checked against eager PyTorch on fp32 copies
of the inputs. The ``before`` tree is a copy of the package at an older commit::

    git archive c3212ee flashlight | tar -x -C .before      # then carry .before to the device
    python benchmarks/before_after.py --before .before --shapes 4x16x4096x64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(tree: str, variants: list[str], shape: str, pins: dict[str, dict[str, int]]) -> None:
    """Compile and time ``variants`` with the flashlight found in ``tree``; print one JSON row each."""
    sys.path[:0] = [str(Path(tree).resolve()), str(HERE)]
    import torch
    import torch._dynamo

    import flashlight  # from ``tree``: bench_attention's own import then finds it loaded
    from bench_attention import bench, configs, parse_shape, relerr
    from variants import VARIANTS

    for knob in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)
    dev = torch.device("cuda")
    B, H, S, D, group = parse_shape(shape)
    for name in variants:
        var = VARIANTS[name]
        torch.manual_seed(0)
        inputs = var.inputs(32, 4, 256, 64, torch.bfloat16, dev) if name == "evoformer" else \
            var.inputs(B, H, S, D, torch.bfloat16, dev, group)
        ref = var.fn(*[a.float() if a.is_floating_point() else a for a in inputs])
        f = flashlight.compile(var.fn, **pins.get(name, {}))
        out = f(*inputs)
        torch.cuda.synchronize()
        ms = min(bench(f, inputs) for _ in range(2))
        print("ROW " + json.dumps({"variant": name, "ms": round(ms, 4), "relerr": relerr(out, ref),
                                   "configs": configs(f, dev), "file": flashlight.__file__}), flush=True)
        del f, out
        torch.cuda.empty_cache()


def run_worker(tree: str, variants: list[str], shape: str, pins: dict) -> list[dict]:
    cmd = [sys.executable, __file__, "--worker", "--tree", tree, "--variants", ",".join(variants),
           "--shapes", shape, "--pins", json.dumps(pins)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    rows = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
    return rows


def pins_of(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per variant, the tuned configuration as options, where all its programs share one."""
    out = {}
    for r in rows:
        choices = set(r["configs"])
        if len(choices) != 1:
            continue
        parts = next(iter(choices)).split("/")  # block_m/block_n/w<warps> per launch/s<stages>
        bm, bn, ws, stages = parts[0], parts[1], set(parts[2:-1]), parts[-1]
        if len(ws) == 1:
            out[r["variant"]] = {"block_m": int(bm), "block_n": int(bn), "num_warps": int(ws.pop()[1:]),
                                 "num_stages": int(stages[1:])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="a tree holding the older flashlight package")
    ap.add_argument("--after", default=str(HERE.parent))
    ap.add_argument("--variants", default="vanilla,causal,sliding_window,prefix_lm,document,softcap,alibi,"
                                          "differential,evoformer,sdpa,sdpa_causal")
    ap.add_argument("--shapes", default="4x16x4096x64")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=os.environ.get("OUT", str(HERE / "results")))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--pins", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    variants = args.variants.split(",")
    if args.worker:
        worker(args.tree, variants, args.shapes, json.loads(args.pins))
        return
    if not args.before:
        ap.error("--before is required")
    results: dict[tuple[str, str], list[dict]] = {}
    tuned = run_worker(args.after, variants, args.shapes, {})
    pins = pins_of(tuned)
    print("pinned:", json.dumps(pins), flush=True)
    for _ in range(args.rounds):
        for label, tree in (("before", args.before), ("after", args.after)):
            for r in run_worker(tree, variants, args.shapes, pins):
                results.setdefault((r["variant"], label), []).append(r)
                print(label, json.dumps(r), flush=True)
    lines = ["| variant | before ms | after ms | after/before | relerr before | relerr after | configuration |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in variants:
        b, a = results.get((v, "before")), results.get((v, "after"))
        if not b or not a:
            lines.append(f"| {v} | {'failed' if not b else ''} | {'failed' if not a else ''} | | | | |")
            continue
        bm, am = min(r["ms"] for r in b), min(r["ms"] for r in a)
        cfg = ", ".join(sorted(set(a[0]["configs"])))
        lines.append(f"| {v} | {bm:.3f} | {am:.3f} | {am / bm:.3f} | {b[0]['relerr']:.1e} | {a[0]['relerr']:.1e} | {cfg} |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "before_after.md").write_text(table + "\n")
    (Path(args.out) / "before_after.json").write_text(json.dumps(
        {"pins": pins, "rows": {f"{v}/{k}": rs for (v, k), rs in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
