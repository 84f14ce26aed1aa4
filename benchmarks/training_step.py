"""A training step of attention: forward + backward time and peak memory (issue 18).

For each variant, in one process on one card (bf16, inputs that require grad, a cotangent of
ones scaled by 1e-2): eager PyTorch, ``flashlight.compile(fn)`` (the forward keeps row
statistics, the backward is recomputed and compiled), the same with ``compile_backward=False``
(the backward recomputed in eager PyTorch), FlexAttention (compiled, block mask built once) where
it expresses the variant, torch.compile (Inductor), and SDPA (flash and cuDNN) for vanilla and causal. Each gradient is checked
against an fp32 eager reference; peak memory is the step's allocation above the inputs::

    python benchmarks/training_step.py --variants causal,vanilla --shapes 4x16x4096x64,4x16x4096x128 --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import flashlight  # noqa: E402
from bench_attention import bench, relerr  # noqa: E402
from variants import VARIANTS  # noqa: E402

SDPA = {"vanilla": False, "causal": True}


def step(f, inputs: list[torch.Tensor], cotangent: torch.Tensor) -> list[torch.Tensor]:
    for t in inputs:
        t.grad = None
    f(*inputs).backward(cotangent)
    return [t.grad for t in inputs if t.requires_grad]


def measure(f, inputs: list[torch.Tensor], cotangent: torch.Tensor) -> tuple[float, float, list[torch.Tensor]]:
    grads = step(f, inputs, cotangent)  # compiles, tunes
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step(f, inputs, cotangent)
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    ms = min(bench(lambda *a: step(f, list(a), cotangent), inputs) for _ in range(2))
    return ms, peak, grads


def run(name: str, B: int, H: int, S: int, D: int, impls: set[str] | None = None) -> list[dict]:
    v = VARIANTS[name]
    torch.manual_seed(0)
    inputs = [t.requires_grad_() if t.is_floating_point() else t
              for t in v.inputs(B, H, S, D, torch.bfloat16, torch.device("cuda"), 1)]
    ref_in = [t.detach().float().requires_grad_() if t.is_floating_point() else t for t in inputs]
    out = v.fn(*ref_in)
    cot = torch.full_like(out, 1e-2)
    refs = step(v.fn, ref_in, cot)
    cot = cot.to(torch.bfloat16)
    candidates = {"eager": v.fn, "flashlight": flashlight.compile(v.fn),
                  # flashlight's own kernels for every program (none cut out for Inductor: flashlight.handoff)
                  "flashlight-own": flashlight.compile(v.fn, inductor=False),
                  "flashlight, eager backward": flashlight.compile(v.fn, compile_backward=False)}
    flex = v.flex_call(inputs)
    if flex is not None:
        candidates["FlexAttention"] = flex[0]
    candidates["torch.compile"] = torch.compile(v.fn, dynamic=False)
    if name in SDPA:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        for label, backend in (("SDPA flash", SDPBackend.FLASH_ATTENTION), ("SDPA cuDNN", SDPBackend.CUDNN_ATTENTION)):
            def sdpa(q, k, vv, backend=backend, causal=SDPA[name]):
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, vv, is_causal=causal)
            candidates[label] = sdpa
    rows = []
    for label, f in candidates.items():
        if impls is not None and label not in impls:
            continue
        try:
            ms, peak, grads = measure(f, inputs, cot)
            err = max(relerr(g, r) for g, r in zip(grads, refs))
            rows.append({"variant": name, "shape": f"B{B} H{H} S{S} D{D}", "impl": label, "ms": round(ms, 3),
                         "peak_MiB": round(peak, 1), "grad_relerr": err})
        except Exception as exc:  # a baseline that cannot run this variant: say so, go on
            rows.append({"variant": name, "impl": label, "error": f"{type(exc).__name__}: {exc}"[:300]})
        print("ROW " + json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="causal,vanilla")
    ap.add_argument("--shapes", default="4x16x2048x64", help="BxHxSxD, comma-separated")
    ap.add_argument("--impls", default=None, help="comma-separated labels to run (default: all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch._dynamo

    for knob in ("cache_size_limit", "recompile_limit"):  # torch.compile's baseline per variant and shape
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    for shape in args.shapes.split(","):
        B, H, S, D = (int(x) for x in shape.split("x"))
        for name in args.variants.split(","):
            result["rows"] += run(name, B, H, S, D, set(args.impls.split(",")) if args.impls else None)
            if args.out:  # kept variant by variant: a later failure loses nothing
                Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
