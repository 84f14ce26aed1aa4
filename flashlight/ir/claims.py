"""The facts a tiled serial loop states about its tiles, checked by the interpreter as it runs.

A loop's tile ranges (``tiles [...]``) and tile test (``test [possible P; certain C]``) are claims
about every tile of it, made by passes (tile-ranges, bound-guard-tiles) and relied upon by the
code generator, which skips tiles and drops mask code on their word. The interpreter
(:mod:`flashlight.ir.interpret`) runs the program point by point and checks each claim on every
tile it visits, so that a wrong one is an error in tests rather than a silently wrong kernel:

* tile ranges: a tile where a statement instance runs lies in a listed range, and a tile of a
  ``full`` range lies inside the loop's bounds and every affine guard inside it holds;
* the tile test, evaluated once per tile (with ``tile_lo``/``tile_hi`` the least and greatest
  value of their operand over the tile's points): where ``possible`` is false no statement
  instance runs in the tile, and where ``certain`` is true every data-dependent guard inside the
  loop holds.

This module is a mixin of the interpreter's machine: it reads its ``expr``, ``instances``,
``full_tiles``, ``certain_tiles``, ``around`` and ``extents``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from flashlight.ir.expr import Call, Const, free_iters
from flashlight.ir.nodes import Loop, walk_loops
from flashlight.ir.printer import format_expr

Env = dict[str, Any]
Box = Callable[[str, Env], range]


def point_text(env: Env) -> str:
    return ", ".join(f"{k}={int(v)}" for k, v in env.items()) or "top level"


class LoopClaims:
    """Checks of the claims of tiled serial loops (see the module docstring)."""

    expr: Callable[..., Callable[[Env], Any]]
    instances: int
    full_tiles: list[str]
    certain_tiles: list[str]
    around: list[Loop]              # while compiling: the loops around the node being compiled
    extents: dict[str, tuple[int, int]]  # while running: the bounds of each loop entered
    tile_box: Box | None

    def ranged_body(self, node: Loop, inner: Callable[[Env], None]) -> Callable[[Env], None]:
        """The body of a loop that lists its tile ranges, checking the claims at every point: a
        tile where a statement instance runs lies in a range, and a tile of a ``full`` range lies
        inside the loop's bounds and every affine guard inside holds (data-dependent guards are
        decided at run time)."""
        name, tile = node.iterator, node.tile or 1
        where = f"tile range of loop {name}"
        upper = self.expr(node.upper, where)
        ranges = [(self.expr(r.lower, where), self.expr(r.upper, where), r.masked) for r in node.ranges]
        listed = ", ".join(f"{format_expr(r.lower)}:{format_expr(r.upper)}" for r in node.ranges)

        def body(env: Env) -> None:
            t = int(env[name]) // tile
            held = [masked for lo, hi, masked in ranges if int(lo(env)) <= t < int(hi(env))]
            full = bool(held) and not all(held)
            if full:
                if (t + 1) * tile > int(upper(env)):
                    raise ValueError(f"tile {t} of loop {name} is in a full tile range ({listed}) but reaches "
                                     f"past the loop's bound {format_expr(node.upper)} at {point_text(env)}")
                self.full_tiles.append(f"the full tile range of loop {name} (tile {t})")
            before = self.instances
            try:
                inner(env)
            finally:
                if full:
                    self.full_tiles.pop()
            if self.instances != before and not held:
                raise ValueError(f"loop {name} runs statements in tile {t} at {point_text(env)}, which none "
                                 f"of its tile ranges lists ({listed})")

        return body

    def tested_body(self, node: Loop, inner: Callable[[Env], None]) -> Callable[[Env], None]:
        """The body of a loop with a tile test, checking it on every tile: evaluated at the tile's
        first point (for the current values of the loops around), ``possible`` false means no
        statement instance runs in the tile, ``certain`` true that every data-dependent guard
        inside holds."""
        test, name, tile = node.tile_test, node.iterator, node.tile or 1
        assert test is not None
        where = f"tile test of loop {name}"
        self.tile_box = self.box_of(node, where)
        try:
            possible = self.expr(test.possible, where)
            certain = None if test.certain is None else self.expr(test.certain, where)
        finally:
            self.tile_box = None
        last: list[Any] = [None, (True, False)]  # the tile (with the point around it) last tested, its verdict

        def body(env: Env) -> None:
            t = int(env[name]) // tile
            key = (t, tuple((k, int(v)) for k, v in env.items() if k != name))
            if last[0] != key:
                last[0], last[1] = key, (bool(possible(env)), certain is not None and bool(certain(env)))
            may, sure = last[1]
            if sure:
                self.certain_tiles.append(f"the tile test of loop {name} (certain on tile {t})")
            before = self.instances
            try:
                inner(env)
            finally:
                if sure:
                    self.certain_tiles.pop()
            if not may and self.instances != before:
                raise ValueError(f"the tile test of loop {name} says no guard can hold in tile {t} "
                                 f"(possible is false), but a statement runs at {point_text(env)}")

        return body

    def box_of(self, node: Loop, where: str) -> Box:
        """The points of the current tile of ``node``, per iterator: the tile of ``node`` and of each
        tiled loop around it holding the current point (within the loop's bounds), the whole range
        of each loop inside it (constant bounds), the current value of an untiled loop around it."""
        tiles = {l.iterator: l.tile or 1 for l in self.around} | {node.iterator: node.tile or 1}
        inner = {l.iterator: range(int(l.lower.value), int(l.upper.value)) for l in walk_loops(node.body)
                 if isinstance(l.lower, Const) and isinstance(l.upper, Const)}

        def box(name: str, env: Env) -> range:
            if name in inner:
                return inner[name]
            if name not in tiles:
                raise ValueError(f"{where}: iterator {name} has no range over the tile")
            t, v = tiles[name], int(env[name])
            lo, hi = self.extents[name]
            return range(max(lo, v // t * t), min(hi, v // t * t + t))

        return box

    def tile_bound(self, e: Call, where: str) -> Callable[[Env], Any]:
        """``tile_lo(x)``/``tile_hi(x)``: the least/greatest value of ``x`` over the tile's points."""
        box = self.tile_box
        if box is None:
            raise ValueError(f"{where}: {e.op} is meaningful only in a loop's tile test")
        operand = self.expr(e.args[0], where)
        its = sorted(free_iters(e.args[0]))
        pick = min if e.op == "tile_lo" else max

        def bound(env: Env) -> Any:
            point = dict(env)
            values = []
            for vs in itertools.product(*(box(x, env) for x in its)):
                point.update(zip(its, map(np.int64, vs)))
                values.append(operand(point))
            return pick(values)

        return bound
