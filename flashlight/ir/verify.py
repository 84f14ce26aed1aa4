"""The verifier: rejects malformed programs with a message that names the offending part.

.. autofunction:: verify
.. autoexception:: VerificationError
"""

from __future__ import annotations

import math

from flashlight.ir import dtypes
from flashlight.ir.combiners import ASSIGN_OPS
from flashlight.ir.expr import TILE_BOUNDS, Call, Const, Expr, Iter, Load, affine_form, children, dtype_of, free_iters, walk
from flashlight.ir.isl_build import is_quasi_affine, isl_name
from flashlight.ir.nodes import (LOOP_KINDS, MAPPINGS, ROLES, STORAGES, Given, Guard, LibraryCall, Loop, NanFixup, Node, Program, Stmt,
                                 fixup_after, tensors_touched, walk_loops, walk_stmts)


class VerificationError(ValueError):
    """A program violates an invariant of the IR."""


def verify(program: Program) -> Program:
    """Check every invariant of the IR; returns the program so that calls can chain."""
    errors: list[str] = []
    seen: set[str] = set()
    for t in program.tensors:
        if t.name in seen:
            errors.append(f"tensor {t.name!r} is declared twice")
        seen.add(t.name)
        if not t.name.isidentifier():
            errors.append(f"tensor name {t.name!r} is not an identifier")
        if t.dtype not in dtypes.ALL:
            errors.append(f"tensor {t.name!r} has unknown dtype {t.dtype!r}")
        if t.role not in ROLES:
            errors.append(f"tensor {t.name!r} has unknown role {t.role!r}")
        if t.storage not in STORAGES:
            errors.append(f"tensor {t.name!r} has unknown storage {t.storage!r}")
        if t.storage == "local" and t.role != "temp":
            errors.append(f"tensor {t.name!r} is a {t.role} and cannot be local")
        if any(not (isinstance(s, int) and s >= 0 or isinstance(s, str) and s in program.params) for s in t.shape):
            errors.append(f"tensor {t.name!r} has an invalid shape {t.shape}")
    for p in program.params:
        if not p.isidentifier() or program.params.count(p) > 1 or p in seen:
            errors.append(f"size parameter {p!r} is not an identifier, or declared twice, or a tensor's name")
    for name, definition in program.defs:
        earlier = set(program.params[:program.params.index(name)]) if name in program.params else set()
        if name not in program.params or not free_iters(definition) <= earlier or affine_form(definition) is None:
            errors.append(f"derived size {name} = {definition} is not a parameter defined by an affine "
                          "expression of earlier ones")
    stmt_names: set[str] = set()
    written: set[str] = set()
    _verify_body(program, program.body, program.params, errors, stmt_names, written)
    for nest in program.body:
        _verify_one_tile_per_iterator(nest, errors)
        _verify_tile_tests(program, nest, (), errors)
    _verify_locals_stay_in_one_nest(program, errors)
    _verify_superseded(program, errors)
    for t in program.outputs:
        if t.name not in written:
            errors.append(f"output {t.name!r} is never written")
    if errors:
        raise VerificationError(f"program {program.name} is malformed:\n  " + "\n  ".join(errors))
    return program


def _verify_locals_stay_in_one_nest(program: Program, errors: list[str]) -> None:
    """A ``local`` tensor lives in the registers of one kernel's programs: no other top-level nest
    (another kernel) may read or write it, in a statement, a guard or a loop annotation."""
    local = {t.name for t in program.tensors if t.storage == "local"}
    if not local:
        return
    owners: dict[str, list[int]] = {}
    for k, nest in enumerate(program.body):
        for t in tensors_touched(nest) & local:
            owners.setdefault(t, []).append(k)
    for t, nests in sorted(owners.items()):
        if len(nests) > 1:
            errors.append(f"local tensor {t!r} is touched by top-level nests {', '.join(map(str, nests))}: "
                          "registers of one kernel cannot be read by another")


def _verify_superseded(program: Program, errors: list[str]) -> None:
    """A loop leaves an accumulator's store to a NaN fixup only if it carries the accumulator and
    the fixup overwrites all of it right after the loop, in the same kernel (a top-level nest)."""
    for nest in program.body:
        for loop in walk_loops((nest,)):
            where = f"loop {loop.iterator}"
            if loop.superseded and loop.mapping != "serial":
                errors.append(f"{where}: only serial loops leave accumulators to a fixup")
            for name in loop.superseded:
                carried = [s.target for s, _, _ in walk_stmts(loop.body) if s.is_reduction
                           and s.target.tensor == name and loop.iterator not in free_iters(s.target)]
                if not carried:
                    errors.append(f"{where}: superseded {name} is no accumulator the loop carries")
                elif fixup_after(nest, loop, carried[0]) is None:
                    errors.append(f"{where}: no NaN fixup of all of {carried[0]} follows the loop before "
                                  f"{name} is read or written: its store is not superseded")


def _verify_one_tile_per_iterator(nest: Node, errors: list[str]) -> None:
    """A top-level nest (one kernel) tiles each iterator one way, however many loops walk it."""
    tiles: dict[str, int] = {}
    stack = [nest]
    while stack:
        node = stack.pop()
        if isinstance(node, Stmt):
            continue
        if isinstance(node, Loop) and node.tile is not None:
            if tiles.setdefault(node.iterator, node.tile) != node.tile:
                errors.append(f"loop {node.iterator}: tiled {node.tile} and {tiles[node.iterator]} in one nest")
        stack.extend(node.body)


def _verify_tile_tests(program: Program, node: Node, around: tuple[Loop, ...], errors: list[str]) -> None:
    """A tile test sits on a tiled serial loop and is a boolean of tile bounds: ``tile_lo(x)`` and
    ``tile_hi(x)`` of a load or an iterator (of the loop, a loop around it or one inside it), and
    iterators of untiled loops around it, whose value is the same over the tile."""
    if isinstance(node, Stmt):
        return
    if isinstance(node, Loop) and node.tile_test is not None:
        where = f"tile test of loop {node.iterator}"
        if node.mapping != "serial" or node.tile is None:
            errors.append(f"{where}: only tiled serial loops have a tile test")
        fixed = {l.iterator for l in around if not l.tile or l.tile == 1}
        tiled = {l.iterator for l in around} | {l.iterator for l in walk_loops((node,))}
        test = node.tile_test
        for e in (test.possible,) + (() if test.certain is None else (test.certain,)):
            if dtype_of(e, program.dtypes) != dtypes.BOOL:
                errors.append(f"{where}: {e} is not boolean")
            _verify_tile_expr(program, e, fixed, tiled, where, errors)
    inner = around + (node,) if isinstance(node, Loop) else around
    for child in node.body:
        _verify_tile_tests(program, child, inner, errors)


def _verify_tile_expr(program: Program, e: Expr, fixed: set[str], tiled: set[str], where: str,
                      errors: list[str]) -> None:
    if isinstance(e, Call) and e.op in TILE_BOUNDS:
        operand = e.args[0]
        if not isinstance(operand, (Load, Iter)):
            errors.append(f"{where}: {e} bounds {operand}, which is neither a load nor an iterator")
        if any(isinstance(x, Call) and x.op in TILE_BOUNDS for x in walk(operand)):
            errors.append(f"{where}: {e} nests tile bounds")
        _verify_expr(program, operand, tuple(tiled), where, errors, tile_ops=True)
        return
    if isinstance(e, Load):
        errors.append(f"{where}: {e} is read outside tile_lo/tile_hi: its value varies over the tile")
    elif isinstance(e, Iter) and e.name not in fixed:
        errors.append(f"{where}: iterator {e.name} outside tile_lo/tile_hi is not an untiled loop's around it")
    for c in children(e):
        _verify_tile_expr(program, c, fixed, tiled, where, errors)


def _verify_expr(program: Program, e: Expr, bound: tuple[str, ...], where: str, errors: list[str],
                 tile_ops: bool = False) -> None:
    for x in walk(e):
        if isinstance(x, Call) and x.op in TILE_BOUNDS and not tile_ops:
            errors.append(f"{where}: {x.op} is meaningful only in a loop's tile test")
        if isinstance(x, Iter) and x.name not in bound:
            errors.append(f"{where}: iterator {x.name!r} is not bound by an enclosing loop")
        elif isinstance(x, Load):
            t = program.tensor_map.get(x.tensor)
            if t is None:
                errors.append(f"{where}: load of undeclared tensor {x.tensor!r}")
            elif len(x.indices) != len(t.shape):
                errors.append(f"{where}: {x.tensor} has {len(t.shape)} dimensions, indexed with {len(x.indices)}")


def _verify_body(program: Program, body: tuple[Node, ...], bound: tuple[str, ...], errors: list[str],
                 stmt_names: set[str], written: set[str]) -> None:
    for node in body:
        if isinstance(node, Loop):
            where = f"loop {node.iterator}"
            if node.iterator in bound:
                errors.append(f"{where}: iterator shadows an enclosing loop's iterator")
            if node.kind not in LOOP_KINDS:
                errors.append(f"{where}: unknown kind {node.kind!r}")
            if node.mapping is not None and node.mapping not in MAPPINGS:
                errors.append(f"{where}: unknown mapping {node.mapping!r}")
            if node.tile is not None and node.tile < 1:
                errors.append(f"{where}: tile size must be positive")
            if node.ranges and (node.mapping != "serial" or node.tile is None):
                errors.append(f"{where}: only tiled serial loops list tile ranges")
            for r in node.ranges:
                _verify_expr(program, r.lower, bound, where, errors)
                _verify_expr(program, r.upper, bound, where, errors)
            if node.launch is not None and (node.mapping != "grid" or node.kind != "parallel" or not node.tile
                                            or node.launch.group < 1):
                errors.append(f"{where}: a launch order needs a tiled parallel grid loop and a positive group")
            if node.state is not None:
                _verify_state(node, where, errors)
            if node.bounds and (node.mapping != "serial" or node.tile is None):
                errors.append(f"{where}: only tiled serial loops list tile bounds")
            for b in node.bounds:
                for e in (b.operand, b.lower, b.upper):
                    _verify_expr(program, e, bound + (node.iterator,), where, errors)
                if node.iterator not in free_iters(b.operand):
                    errors.append(f"{where}: tile bound operand {b.operand} does not read {node.iterator}")
                kinds = {program.dtypes.get(e.tensor) for e in (b.operand, b.lower, b.upper)}
                if len(kinds) != 1:
                    errors.append(f"{where}: tile bounds of {b.operand} have another dtype than it")
            if not node.iterator.isidentifier() or isl_name(node.iterator) != node.iterator:
                errors.append(f"{where}: {node.iterator!r} cannot name an iterator")
            for b in (node.lower, node.upper):
                _verify_expr(program, b, bound, where, errors)
                if not is_quasi_affine(b):
                    errors.append(f"{where}: bound {b} is not affine")
            _verify_body(program, node.body, bound + (node.iterator,), errors, stmt_names, written)
        elif isinstance(node, Guard):
            _verify_expr(program, node.cond, bound, "guard", errors)
            if dtype_of(node.cond, program.dtypes) != dtypes.BOOL:
                errors.append(f"guard {node.cond} is not boolean")
            _verify_body(program, node.body, bound, errors, stmt_names, written)
        else:
            _verify_stmt(program, node, bound, errors, stmt_names, written)


def _verify_state(loop: Loop, where: str, errors: list[str]) -> None:
    """The online state a loop declares is what its statements do: running reductions, copies of
    their previous values, rescaled accumulators; and every rescaled statement inside is declared."""
    state = loop.state
    assert state is not None
    stmts = [s for s, _, _ in walk_stmts(loop.body)]
    reduced = {s.target.tensor for s in stmts if s.is_reduction}
    copies = {s.target.tensor for s in stmts
              if s.op == "=" and isinstance(s.expr, Load) and s.expr.tensor in state.running}
    scaled = {s.target.tensor for s in stmts if s.scale is not None}
    if loop.mapping != "serial":
        errors.append(f"{where}: only serial loops carry an online state")
    for kind, names, have in (("running reduction", state.running, reduced), ("previous-value copy", state.previous, copies),
                              ("rescaled accumulator", state.rescaled, scaled)):
        for name in names:
            if name not in have:
                errors.append(f"{where}: state names {name} a {kind}, but no statement of the loop is one for it")
    for name in sorted(scaled - set(state.rescaled)):
        errors.append(f"{where}: {name} is rescaled inside the loop but not declared in its state")


def _verify_stmt(program: Program, s: Stmt, bound: tuple[str, ...], errors: list[str],
                 stmt_names: set[str], written: set[str]) -> None:
    where = f"statement {s.name}"
    if s.name in stmt_names:
        errors.append(f"{where}: name used twice")
    stmt_names.add(s.name)
    if s.op not in ASSIGN_OPS:
        errors.append(f"{where}: unknown operator {s.op!r}")
    for e in (s.target, s.expr) + ((s.scale,) if s.scale is not None else ()):
        _verify_expr(program, e, bound, where, errors)
    t = program.tensor_map.get(s.target.tensor)
    if t is None:
        return
    if isinstance(s.tag, Given):
        if t.role != "input" or s.op != "=" or s.scale is not None or s.dot is not None:
            errors.append(f"{where}: 'as given' states what an input holds: an assignment (=) to an input")
        return
    if t.role == "input":
        errors.append(f"{where}: writes the input {t.name!r}")
    written.add(t.name)
    if s.scale is not None and s.op not in ("+=", "max="):
        errors.append(f"{where}: only += and max= reductions can be rescaled")
    if s.dot is not None:
        product = s.op == "+=" and isinstance(s.expr, Call) and s.expr.op == "mul"
        if not product or s.dot not in bound or not all(s.dot in free_iters(a) for a in s.expr.args):
            errors.append(f"{where}: 'as dot over {s.dot}' needs a sum (+=) of a product whose two factors "
                          f"read {s.dot}, an enclosing loop's iterator")
    if isinstance(s.tag, LibraryCall):
        product = s.op == "+=" and isinstance(s.expr, Call) and s.expr.op == "mul" and s.scale is None
        if not product or s.tag.op != "matmul":
            errors.append(f"{where}: 'as library matmul' needs a sum (+=) of a product of two factors, no rescale")
    if s.fold_scale is not None:
        _verify_fold_scale(s, t.dtype, where, errors)
    if isinstance(s.tag, NanFixup):
        _verify_nan_fixup(program, s, where, errors)
    try:
        et = dtype_of(s.expr, program.dtypes)
    except KeyError:
        return
    if et != t.dtype:
        errors.append(f"{where}: assigns a {et} value to {t.name}: {t.dtype}; insert a cast")


def _verify_fold_scale(s: Stmt, dtype: str, where: str, errors: list[str]) -> None:
    """``then * c`` is exact only where scaling commutes with the fold: a max or min of floats
    (rounding is monotonic) by a positive finite constant (a negative one swaps max and min,
    inf makes 0 * inf = nan, and integers wrap around)."""
    c = s.fold_scale
    positive = isinstance(c, Const) and isinstance(c.value, float) and math.isfinite(c.value) and c.value > 0
    if s.op not in ("max=", "min=") or not dtypes.is_float(dtype) or not positive:
        errors.append(f"{where}: 'then * {c}' needs a max= or min= of floats and a positive finite constant")


def _verify_nan_fixup(program: Program, s: Stmt, where: str, errors: list[str]) -> None:
    """A statement tagged as the NaN fixup has the form :func:`flashlight.passes.tree.nan_fixup`
    builds: ``z = where(y == -inf, nan, z)`` or ``z = where(rows & y == -inf, nan, z)``."""
    e = s.expr
    ok = isinstance(s.tag, NanFixup) and s.op == "=" and isinstance(e, Call) and e.op == "where" \
        and isinstance(e.args[1], Const) and isinstance(e.args[1].value, float) and math.isnan(e.args[1].value) \
        and e.args[2] == s.target
    cond = e.args[0] if ok else None
    if isinstance(cond, Call) and cond.op == "and":
        cond = cond.args[1]
    ok = ok and isinstance(cond, Call) and cond.op == "eq" and isinstance(cond.args[0], Load) \
        and cond.args[1] == Const(-math.inf, program.dtypes.get(cond.args[0].tensor, ""))
    if not ok:
        errors.append(f"{where}: tagged 'as nan fixup' but not of the form z = where([rows &] y == -inf, nan, z)")
