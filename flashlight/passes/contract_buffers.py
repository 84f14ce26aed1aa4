"""Contract temporaries into registers: decide which intermediates never touch global memory.

A temporary of a kernel is *local* (held in the registers of one program) when nothing outside
the kernel touches it and every access indexes it with the same plain iterators, each mapped
the same way at every access: a grid iterator (the program owns that slice), a block iterator
(the slice lies whole inside the program) or the same serial loop (the value lives for one
iteration of that loop, as the score tile ``s[i, j]`` of attention does). Everything else stays
a global ``buffer``.

Legality: registers hold what one program wrote, for as long as the kernel runs. A local
temporary is touched by no other kernel, and each access of it reaches the element its program
owns (a grid iterator), holds whole (a block iterator) or computed in the same iteration of the
same serial loop; so every value read was written by the same program, at the same point of the
same loop iteration or earlier, and nothing reads it after the kernel. Keeping it in registers
preserves every value read.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir.nodes import Program, Proof
from flashlight.passes.declare import Pass
from flashlight.passes.residency import local_temps


def contract_buffers(program: Program) -> Program:
    """Mark the temporaries each kernel can keep in registers as ``local``."""
    local: set[str] = set()
    for nest in program.body:
        local |= local_temps(program, nest)
    if not local:
        return program
    tensors = tuple(replace(t, storage="local") if t.name in local else t for t in program.tensors)
    proof = Proof("contract " + ", ".join(sorted(local)), True,
                  "every access indexes the temporary with the same grid, block or serial-loop iterators "
                  "of one kernel, so each value is produced and consumed inside one program")
    return program.replace(tensors=tensors).with_proofs(proof)


@dataclass(frozen=True)
class ContractBuffers(Pass):
    """Contract temporaries into registers: decide which intermediates never touch global memory."""

    name: ClassVar[str] = "contract-buffers"

    def apply(self, program: Program) -> Program:
        return contract_buffers(program)
