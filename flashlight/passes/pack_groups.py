"""Pack groups: the query heads that share a key/value head become the rows of one tile.

Grouped-query attention reads the keys and values of head ``h`` at ``h // g``: ``g`` query heads
share each key/value head. A decode kernel has one query per head, so its rows are heads; tiled
over ``h``, a tile of heads spans several groups and loads, for every head, the keys of its group
(a ``[heads, keys, D]`` tile: ``g`` times the loads, and no matrix product). Packed, the grid loop
``h`` becomes two, ``hk`` over the groups and ``r`` within one (``h = g·hk + r``), every index is
substituted, and ``(g·hk + r) // g`` simplifies to ``hk`` because ``0 <= r < g``. The keys of a
program are then read at ``hk`` alone, once for the ``r`` rows of the tile: tile makes ``r`` the
rows of the product with the key tile, so a group's queries meet its keys in one ``tl.dot``.

Legality: ``(hk, r) -> g·hk + r`` is a bijection of ``[0, H/g) x [0, g)`` onto ``[0, H)`` (``g``
divides ``H``), so the new loops run the same instances, each once; both are grid loops of a
kernel, whose programs share no dependence (fuse-reductions proved the grid carries none), so
the order of the instances does not matter; and the index simplification is exact on the
ranges (:func:`~flashlight.ir.expr.simplify_index`).

When: a grid loop ``h`` over ``0:H`` of a kernel that reads a tensor at ``h // g`` inside a
serial loop (the keys streamed per program), with ``g`` dividing ``H``, and no other grid loop
longer than one that the same statements read with ``h`` but not with ``h // g`` (the queries
of a prefill: they are the tile's rows already, and packing would take that place from them;
merging them with the group is not built and is said in the proof).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr, Iter
from flashlight.ir.nodes import Guard, Loop, Node, Program, Proof, Stmt, grid_chain, walk_stmts
from flashlight.passes.declare import Pass
from flashlight.passes.tree import fresh_name, map_exprs, stmt_exprs


def pack_groups(program: Program) -> Program:
    """Pack the query heads of each key/value group into one tile, kernel by kernel."""
    body = list(program.body)
    proofs: list[Proof] = []
    for k, nest in enumerate(body):
        found = _pack(program, nest, k)
        if isinstance(found, Proof):
            proofs.append(found)
        elif found is not None:
            body[k], proof = found
            proofs.append(proof)
    return program.replace(body=tuple(body)).with_proofs(*proofs)


def _group_reads(nest: Node, h: str, serial: set[str]) -> set[int]:
    """The group sizes ``g`` of the reads at ``h // g`` that also index a serial loop's iterator."""
    sizes = set()
    for s, _, guards in walk_stmts((nest,)):
        for e in stmt_exprs(s, guards):
            for ld in E.loads(e):
                grouped = [int(ix.args[1].value) for ix in ld.indices if is_group_of(ix, h)]  # type: ignore[attr-defined]
                if grouped and any(E.free_iters(ix) & serial for ix in ld.indices):
                    sizes.update(grouped)
    return sizes


def is_group_of(ix: Expr, h: str) -> bool:
    return (isinstance(ix, Call) and ix.op == "floordiv" and ix.args[0] == Iter(h)
            and isinstance(ix.args[1], Const) and int(ix.args[1].value) > 1)


def _pack(program: Program, nest: Node, k: int) -> tuple[Node, Proof] | Proof | None:
    grid = grid_chain(nest)
    serial = {l.iterator for s, loops, _ in walk_stmts((nest,)) for l in loops if l.mapping == "serial"}
    for depth, h in enumerate(grid):
        if not (isinstance(h.lower, Const) and isinstance(h.upper, Const)):
            continue
        sizes = _group_reads(nest, h.iterator, serial)
        if not sizes:
            continue
        what = f"pack the groups of {h.iterator} in kernel {k}"
        extent = int(h.upper.value) - int(h.lower.value)
        if len(sizes) > 1 or int(h.lower.value) != 0 or extent % next(iter(sizes)):
            return Proof(what, False, f"{h.iterator} in 0:{extent} is read in groups of {sorted(sizes)}: "
                                      "not one size that divides it")
        g = next(iter(sizes))
        rows = _query_rows(nest, h.iterator, grid)
        if rows:
            return Proof(what, False, f"{', '.join(rows)} read with {h.iterator} but not with {h.iterator} // {g} "
                                      "are the tile's rows already; merging them with the group is not built")
        used = {l.iterator for _, loops, _ in walk_stmts((nest,)) for l in loops} | set(program.params)
        hk = fresh_name(h.iterator + "_kv", used)
        r = fresh_name(h.iterator + "_g", used | {hk})
        at = E.add(E.mul(E.index(g), Iter(hk)), Iter(r))
        ranges = {hk: (0, extent // g - 1), r: (0, g - 1)}

        def sub(e: Expr, at: Expr = at, ranges: dict = ranges) -> Expr:
            return E.simplify_index(E.substitute(e, {h.iterator: at}), ranges)
        inner = tuple(_map_node(c, sub) for c in h.body)
        packed = replace(h, iterator=hk, upper=E.index(extent // g),
                         body=(Loop(r, E.index(0), E.index(g), "parallel", inner, mapping="grid"),))
        proof = Proof(f"{what}: {h.iterator} = {g}·{hk} + {r}", True,
                      f"({hk}, {r}) -> {g}·{hk} + {r} is a bijection of 0:{extent // g} x 0:{g} onto 0:{extent}, both grid loops "
                      f"(no dependence between programs); reads at {h.iterator} // {g} become {hk} (0 <= {r} < {g}): the "
                      f"keys of a group are read once for its {g} query heads, the rows of one tile")
        return _replace_at(nest, depth, packed), proof
    return None


def _query_rows(nest: Node, h: str, grid: list[Loop]) -> list[str]:
    """Grid iterators longer than one that some statement reads together with ``h`` (not inside
    ``h // g``) in a read that has no ``h // g``: the queries of a prefill."""
    long = {l.iterator for l in grid if not (isinstance(l.upper, Const) and int(l.upper.value) - int(l.lower.value) <= 1)}
    out: set[str] = set()
    for s, _, guards in walk_stmts((nest,)):
        for e in stmt_exprs(s, guards):
            for ld in E.loads(e) + [s.target]:
                if any(is_group_of(ix, h) for ix in ld.indices) or not any(h in E.free_iters(ix) for ix in ld.indices):
                    continue
                out |= {it for ix in ld.indices for it in E.free_iters(ix)} & long - {h}
    grouped = {it for s, _, guards in walk_stmts((nest,)) for e in stmt_exprs(s, guards) for ld in E.loads(e)
               if any(is_group_of(ix, h) for ix in ld.indices) for ix in ld.indices for it in E.free_iters(ix)}
    return sorted(out - grouped)


def _map_node(node: Node, fn: Callable[[Expr], Expr]) -> Node:
    if isinstance(node, Stmt):
        return map_exprs(node, fn)
    if isinstance(node, Guard):
        return Guard(fn(node.cond), tuple(_map_node(c, fn) for c in node.body))
    return replace(node, lower=fn(node.lower), upper=fn(node.upper), body=tuple(_map_node(c, fn) for c in node.body))


def _replace_at(nest: Node, depth: int, loop: Loop) -> Node:
    if depth == 0:
        return loop
    assert isinstance(nest, Loop)
    return replace(nest, body=(_replace_at(nest.body[0], depth - 1, loop),))


@dataclass(frozen=True)
class PackGroups(Pass):
    """Pack groups: the query heads that share a key/value head become the rows of one tile."""

    name: ClassVar[str] = "pack-groups"

    def apply(self, program: Program) -> Program:
        return pack_groups(program)
