"""The skeleton of a kernel: program ids, the block axes' offsets, the walk over the nest, and
the module source around the body.

``@grid`` loops share one program axis (``tl.program_id(0)``), decomposed innermost-fastest so
that neighbouring programs share the tiles of the other operands; a grid loop with tile ``T > 1``
becomes a vector axis of offsets ``o_x = pid_x * T + tl.arange(0, T)``. ``@block`` loops become
whole vector axes (``tl.arange`` over the padded extent); ``@serial`` loops are
:mod:`flashlight.codegen.serial_loops`.
"""

from __future__ import annotations

import math

from flashlight.codegen.kernel_source import CodegenError, KernelSource
from flashlight.codegen.kernel_state import KernelState, Scope
from flashlight.codegen.serial_loops import INDEX_HELPER
from flashlight.codegen.statements import fold_helpers
from flashlight.ir.isl_build import is_affine_condition
from flashlight.ir.expr import Expr
from flashlight.ir.nodes import Guard, Node, Stmt


class Skeleton(KernelState):
    """Uses ``emit_stmt`` of statements and ``emit_serial`` of serial loops."""

    def build(self) -> KernelSource:
        top = Scope([], None)
        grid = self.decompose_program_id(top.lines)
        self.open_block_axes(top.lines)
        for phase in self.phases:
            self.emit_node(phase, top, ())
        src = self.module_source(top.lines)
        serial = any(r == "serial" for r in self.role.values())
        # a grid over a size parameter is counted at launch, from its (extent, tile) factors
        factors = tuple((self.extent[l.iterator], self.tile[l.iterator]) for l in self.grid)
        factors = factors if any(isinstance(e, str) for e, _ in factors) else ()
        limits = tuple(sorted({(n, self.tile[a]) for a in self.axes if self.role[a] == "block"
                               for n in (self.extent[a],) if isinstance(n, str)}))
        return KernelSource(self.name, src, tuple(self.params), grid, tile_elements=self.register_elements(),
                            serial=serial, sizes=self.size_arguments(), grid_factors=factors,
                            size_limits=limits)

    def size_arguments(self) -> tuple[str, ...]:
        """The size parameters the kernel reads, in the program's order: its int arguments."""
        return tuple(p for p in self.program.params if p in self.sizes)

    def decompose_program_id(self, lines: list[str]) -> int:
        """Lines giving each grid loop its program index (and offsets, for a tiled one) from
        ``tl.program_id(0)``; returns the number of programs (0 where a size parameter decides it)."""
        grid_counts = []
        lines.append(f"pid = tl.program_id(0){'.to(tl.int64)' if self.wide else ''}")
        # the count of programs along a grid loop: a number, or an expression of a size parameter
        counts: dict[str, int | str] = {
            l.iterator: (self.tile_count(l.iterator) if isinstance(self.extent[l.iterator], str)
                         else math.ceil(self.extent[l.iterator] / self.tile[l.iterator]))  # type: ignore[operator]
            for l in self.grid}
        for k, l in enumerate(reversed(self.grid)):
            n = counts[l.iterator]
            grid_counts.append(n)
            var = f"pid_{l.iterator}" if self.tile[l.iterator] > 1 else l.iterator
            if l.launch is not None:  # reversed, interleaved with `group` outer indices
                outer = [counts[x.iterator] for x in list(reversed(self.grid))[k + 1:]]
                group = l.launch.group
                if group > 1 and any(isinstance(c, str) for c in outer):
                    raise CodegenError(f"launch group {group} of {l.iterator}: the outer programs depend on a size")
                others = math.prod(c for c in outer if isinstance(c, int))
                if others % group:
                    raise CodegenError(f"launch group {group} of {l.iterator} does not divide {others} outer programs")
                if isinstance(n, str):  # the same order, its count an expression of the size
                    ng = n if group == 1 else f"({n} * {group})"
                    lines.append(f"{var} = {n} - 1 - (pid % {ng}) // {group}")
                    lines.append(f"pid = (pid // {ng}) * {group} + pid % {group}")
                else:
                    lines.append(f"{var} = {n - 1} - (pid % {n * group}) // {group}")
                    lines.append(f"pid = (pid // {n * group}) * {group} + pid % {group}")
            else:
                lines.append(f"{var} = pid % {n}")
                lines.append(f"pid = pid // {n}")
            if self.tile[l.iterator] > 1:
                t = self.tile[l.iterator]
                lines.append(f"o_{l.iterator} = {var} * {t} + tl.arange(0, {t})")
                if self.needs_mask(l.iterator):
                    lines.append(f"m_{l.iterator} = o_{l.iterator} < {self.extent_code(l.iterator)}")
        # a grid that depends on a size parameter has no number: the launch counts it (grid_factors)
        return 0 if any(isinstance(c, str) for c in grid_counts) else math.prod(grid_counts)  # type: ignore[arg-type]

    def open_block_axes(self, lines: list[str]) -> None:
        for it in self.axes:
            if self.role[it] == "block":
                lines.append(f"o_{it} = tl.arange(0, {self.tile[it]})")
                if self.needs_mask(it):
                    lines.append(f"m_{it} = o_{it} < {self.extent_code(it)}")

    def emit_node(self, node: Node, scope: Scope, guards: tuple[Expr, ...]) -> None:
        if isinstance(node, Stmt):
            self.emit_stmt(node, scope, guards)
        elif isinstance(node, Guard):
            # inside tiles proved full, every affine guard holds; inside tiles whose bounds prove a
            # data-dependent guard, it holds too: no mask code for them
            affine = is_affine_condition(node.cond)
            dropped = (affine and self.full_tiles) or (not affine and self.drop_data_guards)
            extra = () if dropped else (node.cond,)
            for c in node.body:
                self.emit_node(c, scope, guards + extra)
        elif node.mapping == "block":
            for c in node.body:
                self.emit_node(c, scope, guards)
        elif node.mapping == "serial":
            self.emit_serial(node, scope, guards)
        else:
            raise CodegenError(f"unexpected {node.mapping} loop {node.iterator} inside a kernel")

    def module_source(self, lines: list[str]) -> str:
        """The Python module defining the kernel whose body is ``lines``, with the helpers it calls."""
        args = ", ".join([f"{p}_ptr" for p in self.params] + list(self.size_arguments()))
        header = ["import triton", "import triton.language as tl"]
        if self.uses_libdevice:
            header.append("from triton.language.extra import libdevice")
        helpers = fold_helpers(lines, self.target)
        if self.uses_index:
            helpers += INDEX_HELPER
        return "\n".join(header + helpers + ["", "", "@triton.jit", f"def {self.name}({args}):"]
                         + ["    " + line for line in lines]) + "\n"

    def register_elements(self) -> int:
        """Elements held in registers: every register tile the kernel keeps (sizes the launch)."""
        return sum(math.prod(self.tile[a] for a in self.registers[t].axes)
                   for t in self.produced if t in self.registers)
