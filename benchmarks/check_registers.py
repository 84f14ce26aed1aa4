"""Registers, spills and shared memory of a model's kernels on sm_90, without a GPU.

Captures a ``bench_models.py`` model (random weights, bf16, on the CPU), runs the pass pipeline for
the cuda target at each tile configuration, and compiles every kernel with Triton's own CUDA
backend for an H100 (``GPUTarget("cuda", 90, 32)``; ``ptxas`` ships with the Triton wheel).
``cuobjdump -res-usage`` gives each kernel's registers a thread and its stack frame (the spills:
a kernel at 255 registers with a stack of kilobytes reloads its tiles from local memory). A
configuration the GPU would refuse for shared memory shows here too::

    python benchmarks/check_registers.py --layers 2 --configs 128/64/3/4,128/64/3/8 --out regs.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from bench_models import MODELS  # noqa: E402
from flashlight.api import capture_graphs, compile_segment, lift_graph  # noqa: E402
from flashlight.frontend.segments import ProgramSegment  # noqa: E402
from flashlight.options import Options  # noqa: E402

POINTER = {"bf16": "*bf16", "f16": "*fp16", "f32": "*fp32", "f64": "*fp64", "i64": "*i64", "i32": "*i32",
           "i8": "*i8", "bool": "*i1"}


def kernels(fn, args, opts: Options):
    """(final program, kernel sources) of each program segment ``fn`` lifts to, for the cuda target."""
    graphs, _ = capture_graphs(fn, args, {})
    for g in graphs:
        for seg in lift_graph(g.graph_module, g.input_names, "model", ()).segments:
            if isinstance(seg, ProgramSegment):
                yield compile_segment(seg, opts, "cuda")


def resources(final, kernel, workdir: Path) -> dict:
    """Registers, stack (spills) and shared memory of one kernel compiled for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget

    path = workdir / f"{kernel.name}.py"
    path.write_text(kernel.source)
    spec = importlib.util.spec_from_file_location(kernel.name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, kernel.name)
    dtypes = {d.name: d.dtype for d in final.tensors}
    types = [POINTER[dtypes[p]] for p in kernel.params] + ["i32"] * len(kernel.sizes)
    source = triton.compiler.ASTSource(fn=fn, signature=dict(zip(fn.arg_names, types)), constexprs={})
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": kernel.num_warps, "num_stages": kernel.num_stages})
    except Exception as exc:  # noqa: BLE001  (what the GPU would refuse, said per kernel)
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    cubin = workdir / f"{kernel.name}.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    usage = subprocess.run([str(tool), "-res-usage", str(cubin)], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", usage)
    return {"registers": int(m.group(1)), "stack_bytes": int(m.group(2)), "shared_bytes": compiled.metadata.shared}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama", choices=sorted(MODELS))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--configs", default="128/64/3/4,128/64/3/8,64/64/3/4,64/64/3/8",
                    help="block_m/block_n/stages/warps, comma-separated (warps 0: the rule's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import transformers

    torch.manual_seed(0)
    config = MODELS[args.model](args.layers, args.hidden)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").to(torch.bfloat16).eval()
    ids = torch.randint(0, config.vocab_size, (1, args.seq))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for spec in args.configs.split(","):
            bm, bn, stages, warps = (int(x) for x in spec.split("/"))
            opts = Options(block_m=bm, block_n=bn, num_stages=stages, num_warps=warps or None).for_target("cuda")
            for final, ks in kernels(lambda input_ids: model(input_ids=input_ids).logits, (ids,), opts):
                for k in ks:
                    row = {"config": spec, "kernel": k.name, "grid": k.grid, "warps": k.num_warps,
                           **resources(final, k, Path(tmp))}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "layers": args.layers, "seq": args.seq,
                                              "triton": __import__("triton").__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="triton-"))
    main()
