"""Bound guard tiles: the run-time test of a serial loop's data-dependent guards, per tile.

A guard such as ``doc[b,i] == doc[b,j]`` (a document mask) is no affine condition: isl cannot say
in which tiles it holds (tile-ranges over-approximates it). Interval bounds of its operands over
a tile can: this pass writes, for each tiled serial loop whose statements run under such guards,
a test over ``tile_lo(x)``/``tile_hi(x)``, the least and greatest value of an operand ``x`` over
the current tile (the loop's tile, the tile of every tiled loop around it, the whole range of
every loop inside it)::

    for j in 0:70 reduce tile 64 @serial test [possible tile_lo(doc[b,i]) <= tile_hi(doc[b,j])
        & tile_lo(doc[b,j]) <= tile_hi(doc[b,i]); certain tile_lo(doc[b,i]) == tile_hi(doc[b,i])
        & tile_lo(doc[b,j]) == tile_hi(doc[b,j]) & tile_lo(doc[b,i]) == tile_lo(doc[b,j])]

(one line in the IR). ``possible`` is false only on a tile where the guards every statement of
the loop runs under hold at no point; ``certain`` is true only on a tile where every
data-dependent guard of every statement of the loop holds at every point. The code generator
prints the test as it stands: a scan over the tiles before the loop finds the first and last
tile where ``possible`` holds (the loop visits only those) and the run of tiles where ``certain``
holds (which run without guard code); where hoist-tile-bounds precomputed per-tile bounds
(``bounds [...]``), the tile bounds of those operands are read from them.

How a guard is bounded. Bounds of an expression over a tile come from its operands': a literal
and an iterator of an untiled loop around the loop are one value; an iterator of a tiled loop
and a load (of a tensor the kernel does not write, at indices without loads) are bounded by
``tile_lo``/``tile_hi``; ``a + b`` by ``lo(a) + lo(b)`` and ``hi(a) + hi(b)``, ``a - b`` and
``-a`` likewise; a cast that keeps every value exact (to a wider integer or float type) by the
bounds of its operand. Anything else is not bounded: products, floating-point loads (a NaN lies
in no interval), data the kernel writes. A comparison of two bounded sides is bounded, ``&`` and
``|`` from their parts (``possible(a & b)`` needs only one part bounded, as does
``certain(a | b)``); any other guard is left to the mask code.

Legality. Let ``lo(a) <= a <= hi(a)`` at every point of a tile, for each side ``a`` of each
comparison. Then ``a == b`` can hold somewhere in the tile only if the intervals overlap,
``lo(a) <= hi(b) & lo(b) <= hi(a)``, and holds everywhere if both are one and the same value,
``lo(a) == hi(a) & lo(b) == hi(b) & lo(a) == lo(b)``; ``a < b`` somewhere only if ``lo(a) <
hi(b)``, everywhere if ``hi(a) < lo(b)``; and so on for ``<=``, ``>``, ``>=``, ``!=``; a
conjunction holds somewhere only if each part does, everywhere if each part does, a disjunction
dually. Each test is monotone in the bounds: looser bounds (say the last tile's bound of an
iterator, not cut at the loop's end) make ``possible`` only truer and ``certain`` only falser,
so any sound bounds keep both claims true. A tile where ``possible`` is false holds no instance
of any statement of the loop (each runs under the bounded guards): skipping it changes no value.
``certain`` is given only when every data-dependent guard of every statement of the loop is
among those bounded and each has a certain bound: only then is dropping the guards' code in the
tiles where it holds the identity. The interpreter checks both claims on every tile it runs, so
a wrong test is an error in tests, not a silently wrong kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import COMPARISONS, Call, Const, Expr, Iter, Load
from flashlight.ir.isl_build import is_affine_condition
from flashlight.ir.nodes import Loop, Node, Program, Proof, Stmt, TileTest, walk_loops, walk_stmts
from flashlight.passes.declare import Pass

Interval = tuple[Expr, Expr]
MANTISSA = {"f64": 53, "f32": 24, "f16": 11, "bf16": 8}  # bits of integers a float holds exactly


def bound_guard_tiles(program: Program) -> Program:
    """Give every tiled serial loop under data-dependent guards its run-time test per tile."""
    body, proofs = [], []
    for nest in program.body:
        nest_, found = _annotate(program, nest, nest, ())
        body.append(nest_)
        proofs += found
    if not proofs:
        return program
    return program.replace(body=tuple(body)).with_proofs(*proofs)


def _annotate(program: Program, nest: Node, node: Node, around: tuple[Loop, ...]) -> tuple[Node, list[Proof]]:
    """``node`` with its tiled serial loops annotated (``nest`` is the kernel it lies in)."""
    if isinstance(node, Stmt):
        return node, []
    inner = around + (node,) if isinstance(node, Loop) else around
    children, proofs = [], []
    for child in node.body:
        child_, found = _annotate(program, nest, child, inner)
        children.append(child_)
        proofs += found
    node = replace(node, body=tuple(children))
    if isinstance(node, Loop) and node.mapping == "serial" and node.tile:
        test, proof = _tile_test(program, nest, node, around)
        node = replace(node, tile_test=test) if test is not None else node
        proofs += [proof] if proof is not None else []
    return node, proofs


class _Bounds:
    """Interval bounds over the current tile of ``loop`` (see the module docstring)."""

    def __init__(self, program: Program, nest: Node, loop: Loop, around: tuple[Loop, ...]) -> None:
        self.program = program
        self.written = {s.target.tensor for s, _, _ in walk_stmts((nest,))}
        self.point = {l.iterator for l in around if l.mapping == "grid" and (l.tile or 1) == 1}
        self.tiled = {l.iterator for l in around} | {loop.iterator}
        self.tiled |= {l.iterator for l in walk_loops(loop.body)
                       if isinstance(l.lower, Const) and isinstance(l.upper, Const)}
        self.why: list[str] = []  # why some operand or guard has no bounds

    def interval(self, e: Expr) -> Interval | None:
        if isinstance(e, Const):
            return (e, e) if not dtypes.is_float(e.dtype) or e.value == e.value else None
        if isinstance(e, Iter):
            if e.name in self.point:
                return e, e
            return self.tile_bounds(e) if e.name in self.tiled else self.refuse(f"{e.name} has no range over a tile")
        if isinstance(e, Load):
            return self.load(e)
        if isinstance(e, Call) and e.op in E.CASTS:
            src = E.dtype_of(e.args[0], self.program.dtypes)
            if not _exact_cast(src, e.op):
                return self.refuse(f"{e} may not keep every value of {src} exactly")
            inner = self.interval(e.args[0])
            return None if inner is None else (E.call(e.op, inner[0]), E.call(e.op, inner[1]))
        if isinstance(e, Call) and e.op in ("add", "sub", "neg"):
            xs = [self.interval(a) for a in e.args]
            if any(x is None for x in xs):
                return None
            if e.op == "neg":
                return E.neg(xs[0][1]), E.neg(xs[0][0])  # type: ignore[index]
            (alo, ahi), (blo, bhi) = xs  # type: ignore[misc]
            return (E.add(alo, blo), E.add(ahi, bhi)) if e.op == "add" else (E.sub(alo, bhi), E.sub(ahi, blo))
        return self.refuse(f"{e} is not bounded by the bounds of its operands")

    def load(self, e: Load) -> Interval | None:
        dt = self.program.tensor(e.tensor).dtype
        if dtypes.is_float(dt):
            return self.refuse(f"{e} is {dt}: a NaN lies in no interval")
        if e.tensor in self.written:
            return self.refuse(f"the kernel writes {e.tensor}: its values are not known before the loop")
        if any(E.loads(i) for i in e.indices):
            return self.refuse(f"{e} is an indirect access")
        if not E.free_iters(e) <= self.point | self.tiled:
            return self.refuse(f"{e} reads an iterator with no range over a tile")
        return self.tile_bounds(e)

    @staticmethod
    def tile_bounds(e: Expr) -> Interval:
        return Call("tile_lo", (e,)), Call("tile_hi", (e,))

    def refuse(self, why: str) -> None:
        self.why.append(why)
        return None

    def bound(self, c: Expr, certain: bool) -> Expr | None:
        """A test over the tile's bounds: true only where ``c`` holds everywhere in the tile
        (``certain``), else false only where it holds nowhere; None if ``c`` is not bounded."""
        if isinstance(c, Call) and c.op in ("and", "or"):
            a, b = self.bound(c.args[0], certain), self.bound(c.args[1], certain)
            if (c.op == "and") != certain:  # possible(a & b), certain(a | b): one part is enough
                if a is None or b is None:
                    return a if b is None else b
            elif a is None or b is None:
                return None
            return Call(c.op, (a, b))
        if not (isinstance(c, Call) and c.op in COMPARISONS):
            return self.refuse(f"{c} is no comparison, conjunction or disjunction")
        a, b = self.interval(c.args[0]), self.interval(c.args[1])
        if a is None or b is None:
            return None
        return _compare(c.op, a, b, certain)


def _compare(op: str, a: Interval, b: Interval, certain: bool) -> Expr:
    """The test of ``a OP b`` over a tile from the intervals of its sides."""
    (alo, ahi), (blo, bhi) = a, b

    def cmp(o: str, x: Expr, y: Expr) -> Expr:
        return Call(o, (x, y))

    one_value = cmp("and", cmp("and", cmp("eq", alo, ahi), cmp("eq", blo, bhi)), cmp("eq", alo, blo))
    if certain:
        return {"eq": one_value, "ne": cmp("or", cmp("lt", ahi, blo), cmp("lt", bhi, alo)),
                "lt": cmp("lt", ahi, blo), "le": cmp("le", ahi, blo),
                "gt": cmp("gt", alo, bhi), "ge": cmp("ge", alo, bhi)}[op]
    return {"eq": cmp("and", cmp("le", alo, bhi), cmp("le", blo, ahi)), "ne": Call("not", (one_value,)),
            "lt": cmp("lt", alo, bhi), "le": cmp("le", alo, bhi),
            "gt": cmp("gt", ahi, blo), "ge": cmp("ge", ahi, blo)}[op]


def _exact_cast(src: str, dst: str) -> bool:
    """Whether a cast from ``src`` to ``dst`` keeps every value (so bounds carry over unchanged)."""
    if src == dst:
        return True
    if dtypes.is_float(src):
        return dtypes.is_float(dst) and MANTISSA[dst] >= MANTISSA[src] and (src, dst) != ("bf16", "f16")
    lo, hi = dtypes.INT_RANGE[src]
    if dtypes.is_float(dst):
        return max(hi, -lo).bit_length() <= MANTISSA[dst]
    if dst == dtypes.BOOL:
        return False
    return dtypes.INT_RANGE[dst][0] <= lo and hi <= dtypes.INT_RANGE[dst][1]


def _tile_test(program: Program, nest: Node, loop: Loop,
               around: tuple[Loop, ...]) -> tuple[TileTest | None, Proof | None]:
    """The test of ``loop``'s data-dependent guards and the decision behind it (None, None where
    its statements run under none)."""
    names = {s.name for s, _, _ in walk_stmts((loop,))}
    guards = [g for s, _, g in walk_stmts((nest,)) if s.name in names]  # with those around the loop
    every = {g for gs in guards for g in gs if not is_affine_condition(g)}
    if not every:
        return None, None
    common = set.intersection(*(set(gs) for gs in guards))
    data = [g for g in sorted(common, key=str) if not is_affine_condition(g)]  # in a deterministic order
    what = f"bound the data-dependent guards of loop {loop.iterator} per tile"
    bounds = _Bounds(program, nest, loop, around)
    possible = [(g, p) for g in data if (p := bounds.bound(g, certain=False)) is not None]
    certain = [bounds.bound(g, certain=True) for g in data]
    if not possible:
        why = "; ".join(dict.fromkeys(bounds.why)) or "no data-dependent guard is common to every statement"
        return None, Proof(what, False, f"no tile can be skipped: {why}")
    test_possible = _conjunction([p for _, p in possible])
    covered = ", ".join(str(g) for g, _ in possible)
    reason = f"a tile where possible is false holds no instance: every statement runs under {covered}"
    test_certain = None
    if set(data) == every and all(c is not None for c in certain):
        test_certain = _conjunction(certain)  # type: ignore[arg-type]
        reason += "; certain bounds every data-dependent guard of every statement: its tiles run without them"
    else:
        unproved = sorted(str(g) for g in every - set(data)) + [str(g) for g, c in zip(data, certain) if c is None]
        reason += f"; no certain part (its tiles would run without guard code): {', '.join(unproved)} not proved"
    lemma = ("lo(a) <= a <= hi(a) and lo(b) <= b <= hi(b) on a tile: a == b somewhere only if "
             "lo(a) <= hi(b) & lo(b) <= hi(a), everywhere if lo(a) == hi(a) == lo(b) == hi(b); "
             "a < b somewhere only if lo(a) < hi(b), everywhere if hi(a) < lo(b)")
    return TileTest(test_possible, test_certain), Proof(what, True, reason, lemma=lemma)


def _conjunction(parts: list[Expr]) -> Expr:
    out = parts[0]
    for p in parts[1:]:
        out = Call("and", (out, p))
    return out


@dataclass(frozen=True)
class BoundGuardTiles(Pass):
    """Bound guard tiles: a test per tile of where a serial loop's data-dependent guards may hold."""

    name: ClassVar[str] = "bound-guard-tiles"

    def apply(self, program: Program) -> Program:
        return bound_guard_tiles(program)
