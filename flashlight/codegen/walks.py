"""Facts about a kernel's loop nest that code generation reads off it (the walks themselves are
:func:`flashlight.ir.nodes.walk_stmts` and :func:`~flashlight.ir.nodes.walk_loops`)."""

from __future__ import annotations

from flashlight.ir import expr as E
from flashlight.ir.expr import Load
from flashlight.ir.nodes import Guard, Loop, Node, Stmt


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
