"""Programs beyond attention (issue 21): flashlight beside Inductor and eager, in one process.

Norms, softmax, losses over a 128k vocabulary, linear + cross-entropy, a SwiGLU MLP, logsumexp
and a GEMM chain, each in bf16 on one card: eager PyTorch, ``torch.compile`` (Inductor) and
``flashlight.compile``. For each: the median time (triton's do_bench), the peak memory of a call
above its inputs, the compile time of the first call, and the error against an fp32 eager
reference. With ``--backward``, a forward + backward step of every input that is a tensor of
floats (a cotangent of ones)::

    python benchmarks/beyond_attention.py --programs rmsnorm,linear_cross_entropy --out $OUT/beyond.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import flashlight  # noqa: E402
from bench_attention import bench, relerr  # noqa: E402
from flashlight.passes.declare import DEFAULT_PIPELINE  # noqa: E402

LIBRARY_PIPELINE = DEFAULT_PIPELINE + ",call-library"


def rmsnorm(x, w):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * w


def layernorm(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b)


def softmax(x):
    return torch.softmax(x, dim=-1)


def cross_entropy(logits, t):
    return F.cross_entropy(logits.float(), t)


def linear_cross_entropy(x, w, t):
    return F.cross_entropy((x @ w.T).float(), t)


def swiglu(x, w1, w3, w2):
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def logsumexp(x):
    return torch.logsumexp(x.float(), dim=-1)


def gemm_chain(a, b, c):
    return (a @ b) @ c


@dataclass
class Program:
    fn: Callable
    inputs: Callable[[torch.device], tuple]  # bf16 tensors (integer targets as they are)


def _r(*shape, dev, scale=1.0):
    return (torch.randn(*shape, device=dev) * scale).to(torch.bfloat16)


def _targets(n, v, dev):
    return torch.randint(0, v, (n,), device=dev)


N, D, V, F_ = 8192, 4096, 128 * 1024, 11008
PROGRAMS: dict[str, Program] = {
    "rmsnorm": Program(rmsnorm, lambda d: (_r(N, D, dev=d), _r(D, dev=d))),
    "layernorm": Program(layernorm, lambda d: (_r(N, D, dev=d), _r(D, dev=d), _r(D, dev=d))),
    "softmax": Program(softmax, lambda d: (_r(N, 4 * D, dev=d),)),
    "cross_entropy": Program(cross_entropy, lambda d: (_r(N, V, dev=d), _targets(N, V, d))),
    "linear_cross_entropy": Program(linear_cross_entropy,
                                    lambda d: (_r(N, D, dev=d), _r(V, D, dev=d, scale=D ** -0.5), _targets(N, V, d))),
    "swiglu": Program(swiglu, lambda d: (_r(N, D, dev=d), _r(F_, D, dev=d, scale=D ** -0.5),
                                         _r(F_, D, dev=d, scale=D ** -0.5), _r(D, F_, dev=d, scale=F_ ** -0.5))),
    "logsumexp": Program(logsumexp, lambda d: (_r(N, V // 4, dev=d),)),
    "gemm_chain": Program(gemm_chain, lambda d: (_r(N, D, dev=d), _r(D, D, dev=d, scale=D ** -0.5),
                                                 _r(D, D, dev=d, scale=D ** -0.5))),
}


_COTANGENTS: dict = {}


def _cotangent(out: torch.Tensor) -> torch.Tensor:
    """A fixed random cotangent of ``out``'s shape and dtype (ones would make softmax's input
    gradient zero, and every relative error meaningless: run 22)."""
    key = (tuple(out.shape), out.dtype, out.device)
    if key not in _COTANGENTS:
        g = torch.Generator(device=out.device).manual_seed(1)
        _COTANGENTS[key] = torch.randn(out.shape, generator=g, device=out.device).to(out.dtype)
    return _COTANGENTS[key]


def _call(f, args, backward: bool):
    if not backward:
        return f(*args)
    for a in args:
        a.grad = None
    out = f(*args)
    out.backward(_cotangent(out))
    return [a.grad for a in args if a.requires_grad]


def measure(label: str, f, args, ref, backward: bool) -> dict:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = _call(f, args, backward)  # compiles (and tunes)
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    _call(f, args, backward)
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    ms = bench(lambda *a: _call(f, list(a), backward), args)
    outs = out if isinstance(out, (list, tuple)) else [out]
    refs = ref if isinstance(ref, (list, tuple)) else [ref]
    err = max(relerr(o.float(), r) for o, r in zip(outs, refs))
    return {"impl": label, "ms": round(ms, 3), "peak_MiB": round(peak, 1), "compile_s": round(compile_s, 2),
            "relerr": err}


def run(name: str, impls: list[str], backward: bool) -> list[dict]:
    p = PROGRAMS[name]
    dev = torch.device("cuda")
    torch.manual_seed(0)
    args = list(p.inputs(dev))
    if backward:
        args = [a.requires_grad_() if a.is_floating_point() else a for a in args]
    ref_args = [a.detach().float().requires_grad_(a.requires_grad) if a.is_floating_point() else a for a in args]
    ref = _call(p.fn, ref_args, backward)
    ref = [r.detach() for r in ref] if isinstance(ref, list) else ref.detach()
    del ref_args
    candidates = {"eager": lambda: p.fn, "inductor": lambda: torch.compile(p.fn),
                  "flashlight": lambda: flashlight.compile(p.fn),
                  # flashlight's own kernels even where its model hands a program to Inductor
                  "flashlight-own": lambda: flashlight.compile(p.fn, inductor=False),
                  # plain matrix products as torch.matmul (cuBLAS): call-library, not yet a default
                  "flashlight+library": lambda: flashlight.compile(p.fn, pipeline=LIBRARY_PIPELINE)}
    rows = []
    for label in impls:
        try:
            row = measure(label, candidates[label](), args, ref, backward)
        except Exception as exc:  # a baseline that cannot run it (out of memory): say so, go on
            row = {"impl": label, "error": f"{type(exc).__name__}: {exc}"[:300]}
        row = {"program": name, "pass": "fwd+bwd" if backward else "fwd", **row}
        rows.append(row)
        print("ROW " + json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--programs", default=",".join(PROGRAMS))
    ap.add_argument("--impls", default="eager,inductor,flashlight,flashlight-own,flashlight+library")
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    for name in args.programs.split(","):
        result["rows"] += run(name, args.impls.split(","), args.backward)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
