"""What code generation hands back: one kernel's module source with its launch facts, or the
reason this backend cannot express a program (the caller then runs it eagerly)."""

from __future__ import annotations

from dataclasses import dataclass


class CodegenError(Exception):
    """The IR uses something this backend cannot express (the caller falls back to eager)."""


@dataclass(frozen=True)
class KernelSource:
    name: str
    source: str                 # a complete Python module defining the kernel
    params: tuple[str, ...]     # global tensors passed to the kernel, in argument order
    grid: int                   # number of programs
    num_warps: int = 4
    num_stages: int = 2
    tile_elements: int = 0      # elements the kernel keeps in registers (sizes the launch)
    serial: bool = False        # whether the kernel loops over tiles
