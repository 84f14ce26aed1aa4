"""Supersede stores: an accumulator that the NaN fixup after its loop overwrites is stored once, by the fixup.

A serial loop carries the accumulators of its reductions (``l``, ``acc`` of attention) in
registers and stores each after its last tile. Where a row may fold nothing (a masked row),
masks-to-domains or fuse-reductions write a NaN fixup after the loop, ``acc = where(m == -inf,
nan, acc)`` (tagged ``as nan fixup``), which stores the whole accumulator again: two stores of
the same tile per program, a 64x256 fp32 tile for differential attention. This pass lists such
accumulators on the loop, ``superseded [acc]``, and code generation leaves their store to the
fixup.

The fact is read from the IR, not found by the code generator: the fixup is known by its tag
(only :func:`flashlight.passes.tree.nan_fixup` makes one), and the condition under which its
store supersedes the loop's is stated once, in :func:`flashlight.ir.nodes.fixup_after`, which
this pass uses to decide and the verifier uses to check every ``superseded`` list. It is a loop
annotation rather than a field of the fixup because the store it removes is the loop's: the code
generator reads it where it would emit that store.

Legality. The store removed writes the accumulator's final value to memory, and the fixup
writes ``where(c, nan, z)`` of that same value to the same elements: the first statement after
the loop that touches the tensor is the fixup, which assigns exactly the accumulator's target,
unguarded, in the same kernel, and no enclosing loop of the serial loop repeats it in between.
So every element the removed store writes is overwritten before anything reads it (a dead
store), and memory ends as it did. Refused where the fixup is guarded (it may write fewer
elements), targets other elements, comes after a read or another write of the tensor or in
another kernel, and for ``local`` accumulators, which live in registers and are never stored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.nodes import Loop, Node, Program, Proof, Stmt, fixup_after, walk_stmts
from flashlight.passes.declare import Pass


def supersede_stores(program: Program) -> Program:
    """List on each serial loop the global accumulators whose store the NaN fixup after it supersedes."""
    proofs: list[Proof] = []
    body = tuple(_mark(nest, nest, program, proofs) for nest in program.body)
    if not proofs:
        return program
    return program.replace(body=body).with_proofs(*proofs)


def _mark(node: Node, nest: Node, program: Program, proofs: list[Proof]) -> Node:
    """``node`` (inside the kernel ``nest``) with its serial loops annotated."""
    if isinstance(node, Stmt):
        return node
    new = replace(node, body=tuple(_mark(c, nest, program, proofs) for c in node.body))
    if not isinstance(node, Loop) or node.mapping != "serial":
        return new
    superseded = []
    for target in _carried(node):
        if program.tensor(target.tensor).storage == "local":
            continue  # a register: never stored
        fixup = fixup_after(nest, node, target)  # ``node``: the loop as it sits in ``nest``
        if fixup is not None:
            superseded.append(target.tensor)
            proofs.append(Proof(
                f"supersede the store of {target.tensor} after loop {node.iterator}", True,
                f"{fixup.name}, the NaN fixup of all of {target}, is the next statement of the kernel "
                f"to touch {target.tensor}: it overwrites every element the store writes"))
    return replace(new, superseded=tuple(superseded)) if superseded else new


def _carried(loop: Loop) -> list[E.Load]:
    """The targets of the loop's reductions that do not vary along it (its accumulators), one per tensor."""
    seen: dict[str, E.Load] = {}
    for s, _, _ in walk_stmts((loop,)):
        if s.is_reduction and loop.iterator not in E.free_iters(s.target):
            seen.setdefault(s.target.tensor, s.target)
    return list(seen.values())


@dataclass(frozen=True)
class SupersedeStores(Pass):
    """Supersede stores: an accumulator the NaN fixup after its loop overwrites is stored by the fixup."""

    name: ClassVar[str] = "supersede-stores"

    def apply(self, program: Program) -> Program:
        return supersede_stores(program)
