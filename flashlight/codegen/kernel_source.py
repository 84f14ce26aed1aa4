"""What code generation hands back: one kernel's module source with its launch facts, or the
reason this backend cannot express a program (the caller then runs it eagerly)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass


class CodegenError(Exception):
    """The IR uses something this backend cannot express (the caller falls back to eager)."""


@dataclass(frozen=True)
class KernelSource:
    name: str
    source: str                 # a complete Python module defining the kernel
    params: tuple[str, ...]     # global tensors passed to the kernel, in argument order
    grid: int                   # number of programs (of a kernel whose grid is static)
    num_warps: int = 4
    num_stages: int = 2
    tile_elements: int = 0      # elements the kernel keeps in registers (sizes the launch)
    serial: bool = False        # whether the kernel loops over tiles
    # size parameters passed after the tensors, in argument order (plain ints)
    sizes: tuple[str, ...] = ()
    # a grid that depends on a size parameter: one (extent, tile) per grid loop, the programs
    # being the product of ceil(extent / tile); empty for a static grid (``grid``)
    grid_factors: tuple[tuple[int | str, int], ...] = ()
    # (size, most): a block loop over a size parameter holds at most one tile of it
    size_limits: tuple[tuple[str, int], ...] = ()
    # a plain Python function calling a library (``as library matmul``), not a Triton kernel
    library: bool = False

    def __post_init__(self) -> None:
        # a kernel read back from the on-disk cache (JSON) has lists where tuples were
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "sizes", tuple(self.sizes))
        object.__setattr__(self, "grid_factors", tuple((e, t) for e, t in self.grid_factors))
        object.__setattr__(self, "size_limits", tuple((s, n) for s, n in self.size_limits))

    def programs(self, sizes: Mapping[str, int]) -> int:
        """The number of programs to launch at these values of the size parameters."""
        if not self.grid_factors:
            return self.grid
        return math.prod(-(-(sizes[e] if isinstance(e, str) else e) // t) for e, t in self.grid_factors)

    def check_sizes(self, sizes: Mapping[str, int]) -> None:
        """Refuse sizes this kernel cannot run (a block loop holds one tile)."""
        for name, most in self.size_limits:
            if sizes[name] > most:
                raise ValueError(f"kernel {self.name} holds {name} in one tile of {most}; got {name} = {sizes[name]}")

    @property
    def grid_text(self) -> str:
        """The number of programs, as a number or a formula of the sizes (for reports)."""
        if not self.grid_factors:
            return str(self.grid)
        return " * ".join(str(e) if t == 1 else f"ceil({e}/{t})" for e, t in self.grid_factors)
