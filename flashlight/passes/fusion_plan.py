"""The plans of fuse-reductions: statements in nests of their own (``Rec``), the kernels and
phases they are grouped into, the running reductions of the online rewrite, and the program whose
isl dependences license a fused schedule (running values expanded to single assignment).

No decision is taken here: :mod:`flashlight.passes.fuse_reductions` forms the groups and proves
them; this module holds what it reasons about.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import islpy as isl

from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Const, Expr, Iter, Load
from flashlight.ir.isl_build import Term, schedule_map
from flashlight.ir.nodes import Loop, Node, Program, Stmt, TensorDecl, scatters, walk_stmts
from flashlight.ir.poly import PolyView
from flashlight.passes.tree import Extent, extent_expr, fits_block, fresh_tensor_name, loop_extent, nest_of


# {{{ statements in their own nests

@dataclass(frozen=True)
class Rec:
    stmt: Stmt
    loops: tuple[Loop, ...]
    guards: tuple[Expr, ...]

    @property
    def name(self) -> str:
        return self.stmt.name

    @property
    def its(self) -> tuple[str, ...]:
        return tuple(l.iterator for l in self.loops)

    def extent(self, it: str) -> Extent:
        return loop_extent(self.loop(it))

    def loop(self, it: str) -> Loop:
        return next(l for l in self.loops if l.iterator == it)

    @property
    def parallel(self) -> tuple[str, ...]:
        """The iterators whose points may run in different programs: parallel loops, and the
        reduce loops of a scatter (each point adds atomically, in any order)."""
        return tuple(l.iterator for l in self.loops if l.kind == "parallel" or (l.kind == "reduce" and scatters(self.stmt, self.loops)))


def _records(program: Program) -> list[Rec] | None:
    recs = []
    for nest in program.body:
        found = list(walk_stmts((nest,)))
        if len(found) != 1:
            return None
        stmt, loops, guards = found[0]
        if any(not (isinstance(l.lower, Const) and l.lower.value == 0 and isinstance(l.upper, (Const, Iter)))
               for l in loops):
            return None
        recs.append(Rec(stmt, loops, guards))
    return recs

# }}}


# {{{ plans

@dataclass
class Phase:
    loops: tuple[str, ...]
    members: list[str] = field(default_factory=list)


@dataclass
class Group:
    grid: tuple[str, ...]
    phases: list[Phase]
    recs: list[Rec]
    serial: dict[str, tuple[str, ...]]  # statement -> its serial iterators
    block: dict[str, tuple[str, ...]]   # statement -> its block iterators


@dataclass(frozen=True)
class Running:
    """A reduction whose running value is read inside its own loop by rewritten statements."""

    stmt: str
    tensor: str
    loop: str
    extent: Extent
    prev: str       # temporary holding the value before the current step
    readers: frozenset[str]


def _roles(recs: list[Rec], block_limit: int) -> tuple[tuple[str, ...], dict, dict] | None:
    """Grid iterators and, per statement, serial and block iterators.

    An iterator is serial (a loop over tiles inside the program) if it is too large for one block,
    or if it *couples* the statements: some statement reduces over it while reading, at an index
    that varies with it, a tensor another statement of the group produces (the key index of
    attention: the softmax reductions read the score tile ``s[i, j]``).
    """
    first = recs[0]
    grid = tuple(it for it in first.its
                 if all(it in r.parallel for r in recs) and len({r.extent(it) for r in recs}) == 1)
    if len(recs) > 1 and not grid and any(r.parallel for r in recs):
        return None  # one program would do what several did in parallel (a reduction to a scalar has none)
    if len(recs) > 1 and any(it not in grid and not fits_block(r.extent(it), block_limit)
                             and not _reduced_with(r, it, recs, block_limit) for r in recs for it in r.parallel):
        # a statement's parallel loop would be walked by each program, not spread over programs
        # (dQ beside a copy of dV: 8 programs for 1024 rows); a row walked twice because a
        # statement it exchanges values with reduces over it (a wide norm) is kept
        return None
    extents: dict[str, int] = {}
    for r in recs:  # one name, one extent: a kernel's axes are named by their iterators
        for it in r.its:
            if extents.setdefault(it, r.extent(it)) != r.extent(it):
                return None
    produced = {r.stmt.target.tensor: r.name for r in recs}
    coupling: set[str] = set()
    for r in recs:
        reduced = {l.iterator for l in r.loops if l.kind == "reduce"}
        for ld in E.loads(r.stmt.expr):
            writer = produced.get(ld.tensor)
            if writer is not None and writer != r.name:
                coupling |= reduced & {i for x in ld.indices for i in E.free_iters(x)}
    serial, block = {}, {}
    for r in recs:
        rest = [it for it in r.its if it not in grid]
        # a seq loop carries a dependence from one point to the next: it is walked, never a block
        s = tuple(it for it in rest
                  if it in coupling or not fits_block(r.extent(it), block_limit) or r.loop(it).kind == "seq")
        serial[r.name] = s
        block[r.name] = tuple(it for it in rest if it not in s)
    return grid, serial, block

def _reduced_with(rec: Rec, it: str, recs: list[Rec], block_limit: int) -> bool:
    """Whether a statement of ``recs`` that reads ``rec``'s result, or whose result ``rec`` reads,
    reduces over ``it``. Not the second where ``rec`` is a contraction over a loop longer than a
    block: a matrix product reading a norm's row statistic (the down projection of a Llama MLP
    beside the next norm's mean) would walk its columns in each program of rows, 32 programs for
    2048 rows, where a kernel of its own tiles them (512); the statistic is stored, one value a row."""
    mine = {ld.tensor for ld in E.loads(rec.stmt.expr)}
    heavy = any(l.kind == "reduce" and not fits_block(loop_extent(l), block_limit) for l in rec.loops)
    for other in recs:
        if other is rec or not any(l.iterator == it and l.kind == "reduce" for l in other.loops):
            continue
        if (other.stmt.target.tensor in mine and not heavy) or \
                any(ld.tensor == rec.stmt.target.tensor for ld in E.loads(other.stmt.expr)):
            return True
    return False

# }}}


# {{{ the analysed program: rewritten statements with running values expanded

def _guarded(guards: tuple[Expr, ...], value: Expr, identity: Expr) -> Expr:
    for g in guards:
        value = E.call("where", g, value, identity)
    return value


def analysis_program(program: Program, recs: list[Rec], rewrites: dict[str, Stmt],
                     running: dict[str, Running]) -> Program:
    """The program whose dependences license the fused schedule.

    Rewritten statements replace their originals, and each running value ``y`` becomes the
    single-assignment ``y_run[p, j]`` (the value after ``j`` steps): the running reduction writes
    ``y_run[p, j+1]`` from ``y_run[p, j]`` at every ``j``; inside the loop, rewritten readers read
    ``y_run[p, j+1]`` for ``y`` and ``y_run[p, j]`` for ``y_prev``; everyone else reads the final
    ``y_run[p, N]``.
    """
    if not running:
        body = tuple(nest_of(r.loops, r.guards, rewrites.get(r.name, r.stmt)) for r in recs)
        return program.replace(body=body)
    tensors = list(program.tensors)
    run_of = {}
    for y, info in running.items():
        decl = program.tensor(y)
        rname = fresh_tensor_name(program.replace(tensors=tuple(tensors)), y + "_run")
        tensors.append(TensorDecl(rname, decl.dtype, decl.shape + (_after_last_step(info.extent),), "temp"))
        run_of[y] = rname
        tensors.append(TensorDecl(info.prev, decl.dtype, decl.shape, "temp"))
    body: list[Node] = []
    for r in recs:
        stmt = rewrites.get(r.name, r.stmt)
        by_stmt = {info.stmt: (y, info) for y, info in running.items()}
        if r.name in by_stmt:
            y, info = by_stmt[r.name]
            p = stmt.target.indices
            j = Iter(info.loop)
            old = Load(run_of[y], p + (j,))
            new = Load(run_of[y], p + (E.add(j, E.index(1)),))
            ident = E.const(COMBINERS[stmt.op].identity(program.tensor(y).dtype), program.tensor(y).dtype)
            term = _guarded(r.guards, _redirect(stmt.expr, running, run_of, r.name), ident)
            if stmt.scale is not None:
                scale = _redirect(stmt.scale, running, run_of, r.name)
                old = E.call("mul" if stmt.op == "+=" else "add", old, scale)
            body.append(nest_of(r.loops, (), Stmt(stmt.name, new, "=", E.call(COMBINERS[stmt.op].combine, old, term))))
            continue

        def redirect(e: Expr, name: str = r.name) -> Expr:
            return _redirect(e, running, run_of, name)
        new_stmt = replace(stmt, expr=redirect(stmt.expr),
                           scale=None if stmt.scale is None else redirect(stmt.scale))
        body.append(nest_of(r.loops, r.guards, new_stmt))
    return program.replace(tensors=tuple(tensors), body=tuple(body))


def _after_last_step(extent: Extent) -> int | str:
    """The length of a running value's history, ``y_run[p, 0..N]``: ``N + 1``. For a size
    parameter the declared length is the parameter itself: isl reads a declared length only to
    bound a gather, and every access of the history is affine (``y_run[p, j + 1]``, ``y_run[p,
    N]``), so the analysis sees the accesses exactly either way."""
    return extent + 1 if isinstance(extent, int) else extent


def _redirect(e: Expr, running: dict[str, Running], run_of: dict[str, str], reader: str) -> Expr:
    prev_of = {info.prev: y for y, info in running.items()}

    def fold(x: Expr) -> Expr | None:
        if not isinstance(x, Load):
            return None
        if x.tensor in running:
            info = running[x.tensor]
            if reader in info.readers or reader == info.stmt:
                return Load(run_of[x.tensor], x.indices + (E.add(Iter(info.loop), E.index(1)),))
            return Load(run_of[x.tensor], x.indices + (extent_expr(info.extent),))
        if x.tensor in prev_of:
            y = prev_of[x.tensor]
            return Load(run_of[y], x.indices + (Iter(running[y].loop),))
        return None

    return E.rewrite(e, fold)


# }}}


# {{{ schedules

@dataclass
class Layout:
    """Where every statement goes: planned groups, then the rest in their own nests."""

    groups: list[Group]
    rest: list[Rec]

    def schedule(self, view: PolyView) -> isl.UnionMap:
        """``[group, grid..., phase, serial..., position, inner serial..., block...]`` for every
        statement, each of the three sections padded with zeros to a common width. A statement's
        serial loops beyond its phase's (a contraction's own loop over a long reduced dimension,
        inside the phase's loop) run whole at its position, before the statements after it."""
        rows: list[tuple[str, list[list[Term]]]] = []
        for g, grp in enumerate(self.groups):
            for p, phase in enumerate(grp.phases):
                for k, s in enumerate(phase.members):
                    inner = grp.serial[s][len(phase.loops):]
                    rows.append((s, [[g, *grp.grid], [p, *phase.loops], [k, *inner, *grp.block[s]]]))
        for r in self.rest:
            g = len(self.groups) + self.rest.index(r)
            rows.append((r.name, [[g, *r.its], [0], [0]]))
        widths = [max(len(sections[k]) for _, sections in rows) for k in range(3)]
        out = isl.UnionMap("{ }")
        for stmt, sections in rows:
            terms = [t for part, w in zip(sections, widths) for t in part + [0] * (w - len(part))]
            sv = view.stmts[stmt]
            out = out.union(isl.UnionMap.from_map(schedule_map(stmt, sv.iterators, terms, sv.domain)))
        return out

# }}}
