"""The hand-written parametric programs of tests/test_parametric_kernels.py compiled by real Triton
on the GPU (the CPU tests run them under Triton's interpreter): each is generated once and
launched at several sizes, and compared with the reference interpreter. One line per program::

    python benchmarks/check_parametric_kernels.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import test_parametric_kernels as cases  # noqa: E402
from flashlight import ir  # noqa: E402
from flashlight.codegen import generate, launcher  # noqa: E402
from flashlight.ir.interpret import interpret  # noqa: E402
from flashlight.runtime import CompiledProgram, symbolic_strides  # noqa: E402

SHAPES = {"RMS": lambda n: [(n, 64), (64,)], "SOFTMAX": lambda n: [(3, min(n, 64))], "SUM": lambda n: [(3, n)],
          "SCALE3D": lambda n: [(2, n, 16)], "ONLINE": lambda n: [(n, 16), (n + 3, 16), (n + 3, 16)],
          "CAUSAL": lambda n: [(n, 16)] * 3}


def main() -> int:
    dev, bad = torch.device("cuda"), 0
    for name, shapes in SHAPES.items():
        p = ir.parse(getattr(cases, name))
        strides = {t.name: symbolic_strides(t.shape) for t in p.tensors}
        kernels = generate(p, strides, "cuda")
        run = CompiledProgram(p, [launcher.Launch(k, launcher.load(k, False)) for k in kernels],
                              {d.name: strides[d.name] for d in p.inputs}, dev)
        errors = []
        for n in (1, 5, 16, 17, 40, 100, 300):
            ins = [torch.randn(*s) for s in shapes(n)]
            outs = run([x.to(dev) for x in ins])
            torch.cuda.synchronize()
            ref = interpret(p, {d.name: x.numpy() for d, x in zip(p.inputs, ins)})
            errors.append(max(float(np.nanmax(np.abs(o.cpu().numpy() - ref[d.name]))) if o.numel() else 0.0
                              for o, d in zip(outs, p.outputs)))
        bad += max(errors) > 1e-4
        print(name, "max abs error per size:", " ".join(f"{e:.1e}" for e in errors), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
