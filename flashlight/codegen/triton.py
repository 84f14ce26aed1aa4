"""Triton source from tiled, mapped IR: one ``@triton.jit`` kernel per top-level nest.

The kernel follows the IR's mapping, nothing else:

* ``@grid`` loops become one program axis (``tl.program_id(0)``, decomposed innermost-fastest so
  neighbouring programs share the tiles of the other operands); a grid loop with tile ``T > 1``
  becomes a vector axis of offsets ``o_x = pid_x * T + tl.arange(0, T)``;
* ``@serial`` loops become ``for`` loops over tiles, with loop-carried accumulators;
* ``@block`` loops become whole vector axes (``tl.arange`` over the padded extent).

Every value carries the axes it varies along (a subset of the kernel's axes, in one canonical
order); operators broadcast by inserting ``None`` dimensions. Local temporaries are registers;
reductions fold a tile with ``tl.sum``/``tl.max``/``tl.min`` after replacing points outside the
domain (tails, guards) by the identity, and a sum of a product of two tiles that share exactly
the reduced axis becomes ``tl.dot`` on the operands' own dtype with fp32 accumulation. An
online reduction updates ``acc = acc * rescale + tile`` (``max(acc + rescale, tile)``).
Expressions that do not vary inside a loop are emitted before it (so the Q tile of attention is
loaded once), and equal expressions are emitted once.

The kernel is one class made of mixins over a shared state, one module per part:

* :mod:`~flashlight.codegen.kernel_state`: axes, tiles, scopes, the layout of values, facts of the nest;
* :mod:`~flashlight.codegen.skeleton`: program ids, block offsets, the walk of the nest, the module source;
* :mod:`~flashlight.codegen.serial_loops`: ``for`` loops over tiles and their accumulators;
* :mod:`~flashlight.codegen.tile_scan`: the run-time tile test of data-dependent guards;
* :mod:`~flashlight.codegen.statements`: assignments and reductions folded over a tile;
* :mod:`~flashlight.codegen.dot`: ``tl.dot`` of a statement marked ``as dot over r``;
* :mod:`~flashlight.codegen.memory`: indices, pointers, masked loads and stores;
* :mod:`~flashlight.codegen.expressions`: values, hoisting, pointwise calls and casts;
* :mod:`~flashlight.codegen.operators`: Triton's spelling of dtypes, constants and operators;
* :mod:`~flashlight.codegen.kernel_source`: what code generation hands back (and its error);
* :mod:`~flashlight.codegen.library`: a kernel marked ``as library matmul``, a ``torch.matmul`` call.
"""

from __future__ import annotations

from dataclasses import replace

from flashlight.codegen.dot import MatrixProducts
from flashlight.codegen.expressions import Expressions
from flashlight.codegen.kernel_source import CodegenError, KernelSource
from flashlight.codegen.kernel_state import Strides
from flashlight.codegen.library import generate_library, library_product
from flashlight.codegen.memory import MemoryAccess
from flashlight.codegen.operators import TL_DTYPE
from flashlight.codegen.serial_loops import SerialLoops
from flashlight.codegen.skeleton import Skeleton
from flashlight.codegen.statements import Statements
from flashlight.codegen.tile_scan import TileScan
from flashlight.ir.nodes import Given, Program, walk_stmts

__all__ = ["CodegenError", "KernelSource", "TL_DTYPE", "generate"]


def generate(program: Program, strides: Strides, target: str = "cuda",
             name_prefix: str = "flashlight", num_warps: int | None = None,
             num_stages: int | None = None) -> list[KernelSource]:
    """One kernel per top-level nest of a tiled, mapped program.

    ``num_warps``/``num_stages`` default to a choice by the kernel's register tiles. A program
    with size parameters gives kernels that take them as int arguments (after the tensors); a
    stride may then be an expression of them (``16 * S``), printed as such.
    """
    if target not in ("cuda", "interpreter"):
        raise ValueError(f"unknown target {target!r}")
    given = [s.name for s, _, _ in walk_stmts(program.body) if isinstance(s.tag, Given)]
    if given:  # a fact for exchange-sums, which removes it: left here, the pipeline lacks that pass
        raise CodegenError(f"{', '.join(given)} state what an input holds ('as given'), which runs nowhere; "
                           "exchange-sums removes such statements before code generation")
    out = []
    for k, nest in enumerate(program.body):
        if library_product(nest) is not None:
            out.append(generate_library(program, nest, f"{name_prefix}_{program.name}_k{k}", strides))
            continue
        kern = _Kernel(program, nest, f"{name_prefix}_{program.name}_k{k}", strides, target).build()
        warps = num_warps or (8 if kern.tile_elements > 32 * 1024 else 4)
        stages = num_stages or (3 if kern.serial else 2)
        out.append(replace(kern, num_warps=warps, num_stages=stages))
    return out


class _Kernel(Skeleton, SerialLoops, Statements, MatrixProducts, TileScan, MemoryAccess, Expressions):
    """One kernel: every part of the code, written over the shared
    :class:`~flashlight.codegen.kernel_state.KernelState`."""
