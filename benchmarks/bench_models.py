"""Whole models (issue 21): ``torch.compile(model, backend="flashlight")`` beside Inductor and eager.

Decoder-only models built from ``transformers`` configs with random weights (never downloaded),
in their eager attention implementation, bf16, one process on one card: a Llama-style model with
GQA and RoPE, and Gemma 2 (softcapped scores, a sliding window on alternate layers). For each
model and implementation: inference forward time (no grad), a training step's time (forward,
backward, AdamW), peak memory of each above the weights, the compile time of the first call, and
the error of the logits against an fp32 eager reference::

    python benchmarks/bench_models.py --models llama --seq 2048 --out $OUT/models.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import flashlight  # noqa: E402,F401  (registers the backend)
from bench_attention import relerr  # noqa: E402


def llama(layers: int, hidden: int):
    import transformers
    return transformers.LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=int(hidden * 2.75) // 64 * 64,
                                    num_hidden_layers=layers, num_attention_heads=hidden // 64,
                                    num_key_value_heads=hidden // 256, max_position_embeddings=8192)


def gemma2(layers: int, hidden: int):
    import transformers
    return transformers.Gemma2Config(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 4,
                                     num_hidden_layers=layers, num_attention_heads=hidden // 128,
                                     num_key_value_heads=hidden // 256, head_dim=128, query_pre_attn_scalar=128,
                                     sliding_window=1024, attn_logit_softcapping=50.0,
                                     final_logit_softcapping=30.0, max_position_embeddings=8192)


MODELS = {"llama": llama, "gemma2": gemma2}


def build(name: str, layers: int, hidden: int, dtype: torch.dtype):
    import transformers
    torch.manual_seed(0)
    config = MODELS[name](layers, hidden)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    return model.to(device="cuda", dtype=dtype)


def timed(fn, iters: int = 10) -> float:
    """Median milliseconds of ``iters`` calls (CUDA events), after one warm call."""
    fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def host_time(fn, iters: int = 10) -> float:
    """Median milliseconds a call takes on the host, its launches issued but not awaited (the
    device idle before each): what a host-bound call costs beyond its kernels."""
    fn()
    times = []
    for _ in range(iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    return sorted(times)[len(times) // 2]


def peak_of(fn) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def kernel_profile(fn, calls: int = 3, top: int = 12) -> list[dict]:
    """The kernels that take the most GPU time in one call of ``fn`` (averaged over ``calls``):
    name (cut to 90 characters), microseconds per call, launches per call."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if us > 0 and e.count:
            rows.append({"kernel": e.key[:90], "us": round(us / calls, 1), "launches": round(e.count / calls, 1)})
    rows.sort(key=lambda r: -r["us"])
    return rows[:top]


def compiled(model, impl: str):
    if impl == "eager":
        return model
    if impl == "flashlight+library":  # plain matrix products as torch.matmul (cuBLAS): call-library
        from flashlight.passes.declare import DEFAULT_PIPELINE
        return torch.compile(model, backend="flashlight", options={"pipeline": DEFAULT_PIPELINE + ",call-library"})
    if impl == "flashlight-own":  # every segment flashlight's, none handed to Inductor (flashlight.handoff)
        return torch.compile(model, backend="flashlight", options={"inductor": False})
    return torch.compile(model, backend="inductor" if impl == "inductor" else "flashlight")


def run(name: str, layers: int, hidden: int, batch: int, seq: int, impls: list[str], train: bool,
        profiled: bool = False) -> list[dict]:
    ids = torch.randint(0, 32000, (batch, seq), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    ref_model = build(name, layers, hidden, torch.float32)
    with torch.no_grad():
        ref = ref_model(input_ids=ids).logits.float()
    del ref_model
    torch.cuda.empty_cache()
    rows = []
    for impl in impls:
        row = {"model": name, "layers": layers, "hidden": hidden, "shape": f"B{batch} S{seq}", "impl": impl}
        try:
            model = build(name, layers, hidden, torch.bfloat16)
            f = compiled(model, impl)

            def infer():
                with torch.no_grad():
                    return f(input_ids=ids).logits

            t0 = time.perf_counter()
            logits = infer()
            torch.cuda.synchronize()
            row["compile_s"] = round(time.perf_counter() - t0, 1)
            row["relerr"] = relerr(logits.float(), ref)
            del logits
            row["infer_ms"] = round(timed(infer), 2)
            row["infer_host_ms"] = round(host_time(infer), 2)
            row["infer_peak_MiB"] = round(peak_of(infer), 1)
            if profiled:
                row["profile"] = kernel_profile(infer)
            if train:
                model.train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

                def step():
                    loss = f(input_ids=ids, labels=ids).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)

                t0 = time.perf_counter()
                step()
                torch.cuda.synchronize()
                row["train_compile_s"] = round(time.perf_counter() - t0, 1)
                row["train_ms"] = round(timed(step, iters=5), 2)
                row["train_peak_MiB"] = round(peak_of(step), 1)
            model = f = None  # free the weights before the next implementation
        except Exception as exc:  # say what failed, go on with the next implementation
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rows.append(row)
        print("ROW " + json.dumps(row), flush=True)
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama,gemma2")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--impls", default="eager,inductor,flashlight,flashlight-own,flashlight+library")
    ap.add_argument("--no-train", action="store_true", help="inference only")
    ap.add_argument("--profile", action="store_true", help="the kernels taking the most time in an inference call")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    for name in args.models.split(","):
        result["rows"] += run(name, args.layers, args.hidden, args.batch, args.seq, args.impls.split(","),
                              not args.no_train, args.profile)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
