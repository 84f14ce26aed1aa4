"""Walks of a kernel's loop nest: its loops, its statements with the guards or loops around them,
and the facts about the nest that code generation reads off it."""

from __future__ import annotations

from collections.abc import Iterator

from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Load
from flashlight.ir.isl_build import is_affine_condition
from flashlight.ir.nodes import Guard, Loop, Node, Stmt


def nested_loops(body: tuple[Node, ...]) -> Iterator[Loop]:
    """Every loop in ``body``, outer before inner."""
    for n in body:
        if isinstance(n, Loop):
            yield n
            yield from nested_loops(n.body)
        elif isinstance(n, Guard):
            yield from nested_loops(n.body)


def statements(node: Node) -> Iterator[Stmt]:
    if isinstance(node, Stmt):
        yield node
    else:
        for c in node.body:
            yield from statements(c)


def statements_with_guards(body: tuple[Node, ...], guards: tuple[Expr, ...]) -> Iterator[tuple[Stmt, tuple[Expr, ...]]]:
    """Every statement of ``body`` with the conditions of the guards around it (after ``guards``)."""
    for n in body:
        if isinstance(n, Stmt):
            yield n, guards
        elif isinstance(n, Guard):
            yield from statements_with_guards(n.body, guards + (n.cond,))
        else:
            yield from statements_with_guards(n.body, guards)


def statements_with_loops(body: tuple[Node, ...], loops: tuple[Loop, ...]) -> Iterator[tuple[Stmt, tuple[Loop, ...]]]:
    """Every statement of ``body`` with the loops around it (after ``loops``)."""
    for n in body:
        if isinstance(n, Stmt):
            yield n, loops
        elif isinstance(n, Loop):
            yield from statements_with_loops(n.body, loops + (n,))
        else:
            yield from statements_with_loops(n.body, loops)


def is_affine(cond: Expr) -> bool:
    """Whether isl can read the guard condition ``cond`` (else it depends on data)."""
    return is_affine_condition(cond)


def assigned_again(body: tuple[Node, ...], loop: Loop, target: Load) -> bool:
    """Whether an unguarded assignment to all of ``target`` follows ``loop`` before anything reads
    it (the NaN fixup after an online sum): its store supersedes the accumulator's, which would
    write the whole tensor twice (a 64x256 fp32 tile per program for differential attention)."""
    after = False

    def walk(nodes: tuple[Node, ...], guarded: bool) -> bool | None:
        nonlocal after
        for n in nodes:
            if n is loop:
                after = True
            elif isinstance(n, Stmt) and after:
                if n.op == "=" and n.target == target and not guarded:
                    return True
                if any(ld.tensor == target.tensor for ld in E.loads(n.expr)) or n.target.tensor == target.tensor:
                    return False
            elif isinstance(n, (Loop, Guard)):
                found = walk(n.body, guarded or isinstance(n, Guard))
                if found is not None:
                    return found
        return None

    return bool(walk(body, False))
