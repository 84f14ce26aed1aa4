"""Compilation options: :class:`Options`, what a user may set, checked when it is made.

``None`` fields pick a default for the device (:meth:`Options.for_target`); the pass options
among them reach their passes through :func:`pass_overrides`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from flashlight import passes
from flashlight.passes.fuse_reductions import BLOCK_LIMIT


@dataclass(frozen=True)
class Options:
    """Compilation options. ``None`` picks a default for the device."""

    block_m: int | None = None       # tile of the tiled grid dimension (query rows)
    block_n: int | None = None       # tile of serial loops (key columns)
    block_limit: int = BLOCK_LIMIT   # largest dimension kept whole inside a program
    pipeline: str = passes.DEFAULT_PIPELINE
    exact_roundings: bool = False    # True: round fused intermediates to their dtype, as eager does
    debug_dir: str | None = None     # dump every stage, decision and kernel here ($FLASHLIGHT_DEBUG_DIR)
    num_warps: int | None = None     # Triton launch parameters (None: chosen per kernel)
    num_stages: int | None = None
    autotune: bool | None = None     # measure configurations on the GPU (None: unless sizes are given)
    # sizes that vary between calls (Dynamo's dynamic shapes): None makes a dimension a size
    # parameter once a call changes it, True every dimension from the first call, False none
    dynamic: bool | None = None
    # the backward of a graph whose inputs require grad: partitioned by flashlight (the forward
    # keeps row statistics) and compiled (True), or AOT autograd's partition and eager (False)
    compile_backward: bool = True
    # who compiles a program (flashlight.handoff): None, on the GPU, cut into what keeps a matrix
    # product in registers (ours) and the rest (Inductor's); True, the same on every device; False, ours
    inductor: bool | None = None

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "num_warps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1
                                      or value & (value - 1)):
                raise ValueError(f"flashlight: {name}={value!r} is not a positive power of two "
                                 f"(valid: None for the default, or 1, 2, 4, ..., e.g. 16, 32, 64, 128)")
        for name in ("block_limit", "num_stages"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"flashlight: {name}={value!r} is not a positive integer")
        if self.compile_backward not in (True, False):
            raise ValueError(f"flashlight: compile_backward={self.compile_backward!r} is not True or False")
        for name in ("autotune", "dynamic", "inductor"):
            if getattr(self, name) not in (None, True, False):
                raise ValueError(f"flashlight: {name}={getattr(self, name)!r} is not None, True or False")
        try:
            passes.parse_pipeline(self.pipeline)
        except ValueError as exc:
            raise ValueError(f"flashlight: pipeline={self.pipeline!r}: {exc}") from None

    def tunes(self, target: str) -> bool:
        pinned = any(x is not None for x in (self.block_m, self.block_n, self.num_stages))
        return target == "cuda" and self.autotune is not False and (self.autotune or not pinned)

    def for_target(self, target: str) -> Options:
        bm = self.block_m or (64 if target == "interpreter" else 128)
        bn = self.block_n or 64
        pipeline = self.pipeline
        if self.exact_roundings:
            pipeline = passes.remove_passes(pipeline, {"elide-roundings"})
        return replace(self, block_m=bm, block_n=bn, pipeline=pipeline)


def make_options(options: dict[str, Any]) -> Options:
    """``Options(**options)``, with a ValueError naming the valid options for an unknown one."""
    fields = [f.name for f in dataclasses.fields(Options)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"flashlight: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"valid options: {', '.join(fields)}")
    return Options(**options)


def pass_overrides(o: Options) -> dict[str, dict]:
    """The options of passes that :class:`Options` sets, by pass name (for ``run_pipeline``);
    options written in the pipeline win over them (the precedence rule of
    :mod:`flashlight.passes.declare`)."""
    return {"fuse-reductions": {"block_limit": o.block_limit},
            "tile": {"block_m": o.block_m, "block_n": o.block_n},
            "split-reductions": {"block_m": o.block_m}}  # the programs it counts are tile's
