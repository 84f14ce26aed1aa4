"""Attention as people already write it, on the GPU: outputs and gradients against eager.

SDPA with its arguments, nn.MultiheadAttention, nn.TransformerEncoderLayer and a small model of
the ``transformers`` library, in bf16 (against an fp32 eager reference, tolerance 2e-2) and fp32
(against eager, 1e-3: the GPU's fp32 dots run in tf32), forward and backward. Prints one line
per case and writes ``<out>/third-party-<device>.json``; exits 1 if a case fails.

    python benchmarks/check_third_party.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flashlight  # noqa: E402


def relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("nan")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def cotangent(t: torch.Tensor) -> torch.Tensor:
    return torch.sin(torch.arange(t.numel(), device=t.device, dtype=torch.float64) * 0.7).reshape(t.shape).to(t.dtype)


def run(fn, args, params, grad: bool):
    xs = [a.detach().clone().requires_grad_(grad and a.is_floating_point()) for a in args]
    for p in params:
        p.grad = None
    out = fn(*xs)
    out = out[0] if isinstance(out, tuple) else out
    grads = []
    if grad:
        out.backward(cotangent(out))
        grads = [x.grad for x in xs if x.requires_grad] + [p.grad for p in params]
    return out.detach(), grads


def check(name: str, make, dtype: torch.dtype, rows: list) -> bool:
    fn, args, module = make(dtype)
    params = [p for p in module.parameters()] if module is not None else []
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-3
    ok = True
    for grad in (False, True):
        if grad:
            for p in params:
                p.requires_grad_(True)
        else:
            for p in params:
                p.requires_grad_(False)
        out, grads = run(flashlight.compile(fn, autotune=False), args, params if grad else [], grad)
        if module is not None:  # the fp32 reference: the same module and inputs, upcast
            module.float()
        ref, ref_grads = run(fn, [a.float() if a.is_floating_point() else a for a in args],
                             params if grad else [], grad)
        if module is not None:
            module.to(dtype)
        errs = [relerr(out, ref)] + [relerr(a, b) for a, b in zip(grads, ref_grads)]
        good = all(e < tol for e in errs)
        ok &= good
        row = {"case": name, "dtype": str(dtype).split(".")[-1], "grad": grad, "max_relerr": max(errs),
               "ok": good}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return ok


def cases(dev: torch.device) -> dict:
    def rnd(*shape, dtype):
        return torch.randn(*shape, device=dev, dtype=dtype)

    def sdpa_mask(dtype):
        m = torch.ones(2, 1, 1, 256, dtype=torch.bool, device=dev)
        m[1, ..., 200:] = False
        return (lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                (rnd(2, 8, 256, 64, dtype=dtype), rnd(2, 8, 256, 64, dtype=dtype), rnd(2, 8, 256, 64, dtype=dtype),
                 m), None)

    def mha(dtype):
        m = nn.MultiheadAttention(256, 4, batch_first=True, device=dev, dtype=dtype)
        kpm = torch.zeros(2, 128, dtype=torch.bool, device=dev)
        kpm[1, 100:] = True
        return (lambda x: m(x, x, x, key_padding_mask=kpm, need_weights=False)[0], (rnd(2, 128, 256, dtype=dtype),), m)

    def encoder(dtype):
        layer = nn.TransformerEncoderLayer(256, 4, 512, dropout=0.0, batch_first=True, device=dev, dtype=dtype)
        return (lambda x: layer(x), (rnd(2, 128, 256, dtype=dtype),), layer)

    def llama(dtype):
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                          num_attention_heads=8, num_key_value_heads=2, attn_implementation="sdpa")
        model = LlamaForCausalLM(cfg).to(dev, dtype)
        ids = torch.randint(0, 256, (2, 128), device=dev)
        mask = torch.ones(2, 128, dtype=torch.long, device=dev)
        mask[1, :30] = 0
        return (lambda ids: model(input_ids=ids, attention_mask=mask).logits, (ids,), model)

    return {
        "sdpa": lambda d: (lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                           (rnd(2, 8, 256, 64, dtype=d), rnd(2, 8, 256, 64, dtype=d), rnd(2, 8, 256, 64, dtype=d)), None),
        "sdpa_causal_gqa": lambda d: (
            lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
            (rnd(2, 8, 256, 64, dtype=d), rnd(2, 2, 256, 64, dtype=d), rnd(2, 2, 256, 64, dtype=d)), None),
        "sdpa_padding_mask": sdpa_mask,
        "multihead_attention": mha,
        "transformer_encoder_layer": encoder,
        "llama_sdpa": llama,
    }


def main() -> None:
    dev = torch.device("cuda")
    rows: list = []
    ok = True
    for name, make in cases(dev).items():
        for dtype in (torch.bfloat16, torch.float32):
            torch.manual_seed(0)
            try:
                ok &= check(name, make, dtype, rows)
            except Exception as exc:  # noqa: BLE001
                ok = False
                rows.append({"case": name, "dtype": str(dtype), "error": f"{type(exc).__name__}: {exc}"[:500]})
                print(json.dumps(rows[-1]), flush=True)
    out = Path(os.environ.get("OUT", Path(__file__).parent / "results"))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"third-party-{torch.cuda.get_device_name().replace(' ', '_')}.json").write_text(json.dumps(rows, indent=1))
    print("all ok" if ok else "FAILURES")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
