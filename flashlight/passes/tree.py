"""Helpers that passes share for reading and rebuilding program trees."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Union
from dataclasses import replace

from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Load
from flashlight.ir.nodes import Guard, Loop, NanFixup, Node, Program, Proof, Stmt, fresh_name, walk_stmts


def map_stmts(body: tuple[Node, ...], fn: Callable[[Stmt], Stmt | tuple[Node, ...] | None]) -> tuple[Node, ...]:
    """Rebuild ``body`` with ``fn`` applied to every statement.

    ``fn`` returns a statement, a tuple of nodes to splice in, or None to delete; loops and
    guards left empty disappear.
    """
    out: list[Node] = []
    for node in body:
        if isinstance(node, Stmt):
            r = fn(node)
            if r is None:
                continue
            out.extend(r if isinstance(r, tuple) else (r,))
        else:
            inner = map_stmts(node.body, fn)
            if inner:
                out.append(replace(node, body=inner))
    return tuple(out)


# A loop's extent from 0: a number, or a size parameter (``for j in 0:S``)
Extent = Union[int, str]


def loop_extent(loop: Loop) -> Extent:
    """The extent of a loop from 0 over a constant or a size parameter."""
    if isinstance(loop.upper, E.Iter):
        return loop.upper.name
    return int(loop.upper.value) - int(loop.lower.value)  # type: ignore[union-attr]


def constant_extent(loop: Loop) -> int | None:
    """The number of points of a loop whose bounds are constant expressions (``0:64``,
    ``0:4*16``); None where a bound names an iterator or a size parameter."""
    if E.free_iters(loop.upper) or E.free_iters(loop.lower):
        return None
    return E.evaluate(loop.upper, {}) - E.evaluate(loop.lower, {})


def extent_expr(extent: Extent) -> Expr:
    return E.index(extent) if isinstance(extent, int) else E.Iter(extent)


def fits_block(extent: Extent, limit: int) -> bool:
    """Whether a loop of this extent may be whole inside one program: a size parameter may be any
    length, so it never is."""
    return isinstance(extent, int) and extent <= limit


class VaryingSize(ValueError):
    """A pass that needs a loop's extent as a number met a size parameter."""


def known_extent(loop: Loop) -> int:
    """The extent of a loop from 0, which a pass needs as a number (tile sizes, tile counts); a
    loop over a size parameter (``0:S``) has none yet, and the pass says so."""
    if not (isinstance(loop.upper, E.Const) and isinstance(loop.lower, E.Const)):
        raise VaryingSize(f"loop {loop.iterator} runs to {loop.upper}, a size that varies between calls, "
                          "where a known size is needed")
    return int(loop.upper.value) - int(loop.lower.value)


def map_exprs(stmt: Stmt, fn: Callable[[Expr], Expr]) -> Stmt:
    """Apply ``fn`` to the right-hand side, the scale and the target's indices."""
    target = E.Load(stmt.target.tensor, tuple(fn(i) for i in stmt.target.indices))
    scale = None if stmt.scale is None else fn(stmt.scale)
    return replace(stmt, target=target, expr=fn(stmt.expr), scale=scale)


def map_node_exprs(node: Node, fn: Callable[[Expr], Expr]) -> Node:
    """``node`` with ``fn`` applied to every statement's expressions (:func:`map_exprs`) and every
    guard's condition below it."""
    if isinstance(node, Stmt):
        return map_exprs(node, fn)
    body = tuple(map_node_exprs(c, fn) for c in node.body)
    return replace(node, cond=fn(node.cond), body=body) if isinstance(node, Guard) else replace(node, body=body)


def is_nan_fixup(stmt: Stmt) -> bool:
    """Whether ``stmt`` is the statement :func:`nan_fixup` built, ``z = where(... y == -inf, nan, z)``,
    which gives rows eager's NaN and leaves the others: read off its tag, never its shape."""
    return isinstance(stmt.tag, NanFixup)


def nan_fixup(name: str, target: Load, maximum: Load, dtypes: dict[str, str], rows: Expr | None = None) -> Stmt:
    """``z = where(y == -inf, nan, z)`` (``rows & y == -inf`` if ``rows`` is given), tagged
    :class:`~flashlight.ir.nodes.NanFixup`: the one builder of the statement that gives eager's NaN
    to the rows where the maximum ``y`` stayed -inf (masks-to-domains and fuse-reductions write
    one after a sum whose rows may fold nothing)."""
    cond = E.call("eq", maximum, E.const(-math.inf, dtypes[maximum.tensor]))
    if rows is not None:
        cond = E.call("and", rows, cond)
    value = E.call("where", cond, E.const(math.nan, dtypes[target.tensor]), target)
    return Stmt(name, target, "=", value, tag=NanFixup())


def writers(program: Program) -> dict[str, list[Stmt]]:
    out: dict[str, list[Stmt]] = {}
    for s, _, _ in walk_stmts(program.body):
        out.setdefault(s.target.tensor, []).append(s)
    return out


def readers(program: Program) -> dict[str, list[Stmt]]:
    out: dict[str, list[Stmt]] = {}
    for s, _, _ in walk_stmts(program.body):
        for e in stmt_exprs(s):
            for ld in E.loads(e):
                lst = out.setdefault(ld.tensor, [])
                if not lst or lst[-1] is not s:
                    lst.append(s)
    return out


def drop_unused_temps(program: Program) -> Program:
    """Remove declarations of temporaries that no statement touches."""
    used = set()
    for s, _, _ in walk_stmts(program.body):
        used.add(s.target.tensor)
        for e in stmt_exprs(s):
            used.update(ld.tensor for ld in E.loads(e))
    tensors = tuple(t for t in program.tensors if t.role != "temp" or t.name in used)
    return program.replace(tensors=tensors)


def top_level_nests(program: Program) -> list[Node]:
    return list(program.body)


def stmt_loops(program: Program) -> dict[str, tuple[tuple[Loop, ...], tuple[Expr, ...]]]:
    return {s.name: (loops, guards) for s, loops, guards in walk_stmts(program.body)}


def fresh_stmt_name(program: Program, base: str) -> str:
    return fresh_name(base, {s.name for s, _, _ in walk_stmts(program.body)})


def fresh_tensor_name(program: Program, base: str) -> str:
    return fresh_name(base, set(program.tensor_map))


def with_grid_body(nest: Node, depth: int, body: tuple[Node, ...]) -> Node:
    """``nest`` with the body of its ``depth``-th perfectly nested grid loop replaced by ``body``."""
    if depth == 0:
        return nest
    assert isinstance(nest, Loop)
    if depth == 1:
        return replace(nest, body=body)
    return replace(nest, body=(with_grid_body(nest.body[0], depth - 1, body),))


def stmt_exprs(stmt: Stmt, guards: tuple[Expr, ...] = ()) -> list[Expr]:
    """Every expression a statement evaluates: its value, target indices, rescale, and guards."""
    return [stmt.expr, *stmt.target.indices, *guards] + ([stmt.scale] if stmt.scale is not None else [])


def nest_of(loops: Sequence[Loop], guards: tuple[Expr, ...], stmt: Stmt) -> Node:
    """``stmt`` under ``guards`` under ``loops`` (outermost first), loops rebuilt bare."""
    node = guard_body(guards, stmt)
    for l in reversed(loops):
        node = Loop(l.iterator, l.lower, l.upper, l.kind, (node,))
    return node


def guard_body(guards: tuple[Expr, ...], node: Node) -> Node:
    for g in reversed(guards):
        node = Guard(g, (node,))
    return node


def rewrite_to_fixpoint(program: Program, step: Callable[[Program], tuple[Program, Proof] | None]) -> Program:
    """Apply ``step`` (one rewrite and its proof, or None where none applies) until none applies;
    the program carries every proof."""
    proofs: list[Proof] = []
    while (found := step(program)) is not None:
        program, proof = found
        proofs.append(proof)
    return program.with_proofs(*proofs)
