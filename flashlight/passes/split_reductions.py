"""Split reductions: a long dependent reduction over few rows becomes chunks in parallel, merged.

A decode step reduces a long cache for few rows: ``m = max_j s``, ``l = Σ_j exp(s - m)``,
``acc = Σ_j exp(s - m) v`` with ``B·H`` rows. Fused, it is one program per tile of rows, each
walking the whole cache: a few dozen programs on a GPU of a hundred multiprocessors. Split, the
loop over ``j`` becomes ``n`` chunks of ``C`` (``j = C·c + j'``); each chunk computes its partial
state in a program of its own, and a second step merges the partial states::

    m_p[c, I]   max= s(I, Cc + j')                          for I, c parallel; j' reduce (C)
    l_p[c, I]   +=   F(s(I, Cc + j'), ref(m_p[c, I]))       ref(m) = where(m == -inf, 0, m)
    m[I]        max= m_p[c, I]                              for I parallel; c reduce (n)
    l[I]        +=   where(m_p == -inf, where(m == -inf, nan, 0), l_p ⊗ rescale(m_p -> m))

Legality, the monoid of the online state: every dependent reduction's term separates,
``F(x, y) = G(x) ⊗ H(y)`` (the online rewrite's lemma, checked by sympy,
:func:`~flashlight.passes.algebra.prove_online`), so a partial folded with the chunk's own
maximum becomes one folded with the row's by one factor, ``rescale(y_old -> y_new) =
H(y_new) ⊗ H(y_old)^-1``; the combiners are associative and commutative, so folding chunks and
then their partials folds the same terms. A chunk whose maximum is -inf holds only -inf
arguments (every key masked): its partial is computed against the reference 0 and must be the
combiner's identity there (abstract evaluation of ``F(-inf, 0)``), and the merge skips it
(a ``where``, not ``identity ⊗ rescale``, which may be ``0 · inf``); a row with no unmasked key at
all gets eager's value of ``F(-inf, -inf)`` (NaN for ``exp(s - m)``), which the merge writes
where the row's maximum is -inf. isl shows the chunks independent: every partial statement reads
another partial only at its own chunk (the dependence relation between different chunks is
empty). Each split is explained with the lemma and the chunking.

When: the group is a ``max=`` (or ``min=``) reduction and the reductions over the same loop that
read its final value (a reader reducing over other loops, a loss's mean over the rows, reads the
merged value as an epilogue does); the loop is longer than two chunks, and the rows (the points of
the maximum's other loops) are at most ``max_rows``, which bounds the partial states. The chunks
are as few as bring the kernel's programs up to
``grid`` (two waves of an H100's multiprocessors) and at least ``chunk`` long: the programs of the
unsplit kernel are counted as tile and pack-groups will make them (the innermost row loop longer
than one is a tile's rows, ``block_m`` of them or the query heads of one key/value group), and a
kernel that has ``grid`` programs already is not split. Run 22 (H100, a 32768-key cache, 8 x 32
heads of 128) measured why: chunks of 512 read a GQA cache (4 heads a group: 64 programs before the
split) at 1757 GB/s, of 8192 (256 programs) at 2968, unsplit at 3032; without groups (8 programs
of 32 heads) chunks of 512 (512 programs) read 2431 GB/s, of 2048 (128 programs) 2272, of 8192 848.
A grid the rows fill is left as it is (prefill and training at their usual sizes); many rows in
few programs are split too: a linear + cross-entropy over 8192 rows is 64 programs of 128 rows,
each walking a 128k vocabulary, on 132 multiprocessors.

A loop over a size parameter (a decode cache that grows by one each step, compiled once) has no
known chunk count, and a partial per chunk of ``C`` would need a buffer whose size is a function
of the parameter. Its chunks are *interleaved* instead: a number ``n`` of chunks fixed from the
kernel's programs as for a known length (``n`` times the unsplit kernel's programs about ``grid``,
a power of two from 2 to 64; none where the unsplit kernel has ``grid``), chunk ``c`` taking the points
``j = n·u + c`` for ``u`` in ``0:S`` guarded by ``j < S`` (tile-ranges bounds the tiles ``u``
walks to the guard's ``cdiv(S - c, n)``). The index is affine, the
partials are ``n`` per row whatever ``S`` is, and the lemma and the chunks' independence are the
same: only which points a chunk folds differs, and every point is folded by exactly one chunk
(``j ↦ (j mod n, j div n)`` is a bijection onto the guarded domain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import islpy as isl

from flashlight.ir import expr as E
from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Expr, Iter, Load
from flashlight.ir.isl_build import access_map, statement_domain
from flashlight.ir.nodes import Loop, Node, Program, Proof, Stmt, TensorDecl, walk_stmts
from flashlight.passes import algebra
from flashlight.passes.declare import Pass, option
from flashlight.passes.pack_groups import is_group_of
from flashlight.passes.tile import BLOCK_M, fit_tile
from flashlight.passes.tree import (fits_block, fresh_name, fresh_stmt_name, fresh_tensor_name, is_nan_fixup, loop_extent,
                                   nest_of, readers)

CHUNK = 512
GRID = 256
MAX_ROWS = 1 << 16
PRODUCER_BLOCK = 256  # the longest reduction of a producer an interleaved split computes in its chunks


def split_reductions(program: Program, chunk: int = CHUNK, max_rows: int = MAX_ROWS,
                     grid: int = GRID, block_m: int = BLOCK_M) -> Program:
    """Split each long dependent reduction over few rows into chunks (see the module docstring)."""
    proofs: list[Proof] = []
    for stmt, loops, guards in list(walk_stmts(program.body)):
        if stmt.op not in ("max=", "min=") or stmt.scale is not None:
            continue
        found = _split(program, stmt, loops, chunk, max_rows, grid, block_m)
        if isinstance(found, Proof):
            proofs.append(found)
        elif found is not None:
            program, proof = found
            proofs.append(proof)
    return program.with_proofs(*proofs)


@dataclass(frozen=True)
class _Chunking:
    """Which points of the split loop chunk ``c`` folds: ``j = at(c, u)`` for ``u`` in
    ``0:extent``, those with ``tail`` true (None: every one is inside the loop)."""
    n: int
    contiguous: bool  # j = C·c + u (a known extent) or j = n·u + c (interleaved)
    step: int  # C, or n
    extent: Expr
    upper: Expr

    def at(self, c: str, u: str) -> Expr:
        if self.contiguous:
            return E.add(E.mul(E.index(self.step), Iter(c)), Iter(u))
        return E.add(E.mul(E.index(self.step), Iter(u)), Iter(c))

    def tail(self, c: str, u: str) -> Expr | None:
        if self.contiguous and isinstance(self.upper, E.Const) and int(self.upper.value) % self.step == 0:
            return None
        return E.call("lt", self.at(c, u), self.upper)

    def describe(self, loop: Loop) -> str:
        if self.contiguous:
            return f"into {self.n} chunks of {self.step}"
        return f"into {self.n} interleaved chunks ({loop.iterator} = {self.n}·u + c)"


@dataclass(frozen=True)
class _Member:
    stmt: Stmt
    loops: tuple[Loop, ...]
    guards: tuple[Expr, ...]
    loop: Loop  # the long loop split into chunks


def _split(program: Program, top: Stmt, loops: tuple[Loop, ...], chunk: int, max_rows: int, grid: int,
           block_m: int) -> tuple[Program, Proof] | Proof | None:
    what = f"split {top.name}"
    long = [l for l in loops if l.kind == "reduce" and not _fits(l, 2 * chunk)]
    if len(long) != 1 or not _single(program, top):
        return None
    loop = long[0]
    rows = [l for l in loops if l.kind == "parallel"]
    if not all(isinstance(l.upper, E.Const) and isinstance(l.lower, E.Const) for l in rows):
        return Proof(what, False, "a row loop varies in size: whether the rows fill the grid is not known")
    n_rows = math.prod(_extent(l) for l in rows)
    if n_rows > max_rows:
        return None  # the rows fill the grid: nothing to gain, nothing to say
    members = _group(program, top, loop)
    if isinstance(members, str):
        return Proof(what, False, members)
    before = _programs_before_split(top, members, rows, block_m)
    if before >= grid:
        return Proof(what, False, f"its kernel has {before} programs without a split, at least the {grid} "
                                  "a split aims at")
    if isinstance(loop.upper, E.Const):
        size = _extent(loop)
        step = chunk * max(1, -(-size // (chunk * -(-grid // before))))  # the fewest chunks for the grid
        n = -(-size // step)
        chunking = _Chunking(n, True, step, E.index(step), loop.upper)
    elif loop.lower == E.index(0):
        n = min(64, max(2, 1 << max(0, -(-grid // before) - 1).bit_length()))
        # u runs to S, the guard n·u + c < S keeps cdiv(S - c, n) of it: tile-ranges walks only
        # the tiles inside (an extent is a number or a size parameter, not an expression of one)
        chunking = _Chunking(n, False, n, loop.upper, loop.upper)
    else:
        return Proof(what, False, f"the loop {loop.iterator} starts at {loop.lower}: interleaved chunks start at 0")
    lemmas = {}
    for m in members[1:]:
        lemma, why = _lemma(program, m, top)
        if lemma is None:
            return Proof(what, False, f"{m.stmt.name}: {why}")
        lemmas[m.stmt.name] = lemma
    body = list(program.body)
    first = next(k for k, node in enumerate(body) if _holds(node, top))
    earlier = {s.target.tensor for node in body[:first] for s, _, _ in walk_stmts((node,))}
    for m in members[1:]:
        late = {ld.tensor for ld in E.loads(m.stmt.expr) if program.tensor(ld.tensor).role == "temp"} - earlier \
            - {top.target.tensor}
        if late:
            return Proof(what, False, f"{m.stmt.name} reads {', '.join(sorted(late))}, computed after {top.name}: "
                                      "its chunks could not run beside the maximum's")
    program, (firsts, folds), partial, c_name = _rewrite(program, members, lemmas, chunking)
    independent = _chunks_independent(program, firsts, partial, c_name)
    if independent is not None:
        return Proof(what, False, independent)
    # the partials where the maximum was (one kernel over rows and chunks), each merge where its
    # statement was (its readers follow it)
    body = list(program.body)
    out: list[Node] = []
    for k, node in enumerate(body):
        if k == first:
            out += firsts
        held = [m for m in members if _holds(node, m.stmt)]
        out.append(folds[held[0].stmt.name] if held else node)
    names = ", ".join(m.stmt.name for m in members)
    proof = Proof(
        f"{what} ({names}) over {loop.iterator} {chunking.describe(loop)}", True,
        f"{n_rows} rows reduce {loop.upper} points each: the partial states of each chunk run in programs of their "
        f"own (grid over the rows and the {chunking.n} chunks), then a merge of the partials per row"
        + f"; {before} programs without the split, {before * chunking.n} with it ({grid} aimed at)",
        relation=f"no dependence between different chunks of {', '.join(partial)} (isl)",
        lemma=("the online state is a monoid: " + "; ".join(f"{k}: {lemmas[k].statement()}" for k in lemmas)
               if lemmas else f"{top.op[:-1]} is associative and commutative: the {top.op[:-1]} of the chunks' is the row's"))
    return program.replace(body=tuple(out)), proof


def _programs_before_split(top: Stmt, members: list[_Member], rows: list[Loop], block_m: int) -> int:
    """The programs of the kernel without the split, as pack-groups and tile will make them: the
    innermost row loop longer than one holds a tile's rows (``fit_tile`` of ``block_m``, or the
    ``g`` query heads of a group, where the reductions read it at ``h // g``), every other row point
    is a program."""
    long = [l for l in rows if _extent(l) > 1]
    if not long:
        return 1
    inner, extent = long[-1], _extent(long[-1])
    others = math.prod(_extent(l) for l in long[:-1])
    at = [k for k, ix in enumerate(top.target.indices) if ix == Iter(inner.iterator)]
    groups: set[int] = set()
    for m in members:  # the row in each member's own iterators: where it reads the maximum
        mine = {E.free_iters(ld.indices[k]) for ld in E.loads(m.stmt.expr) if ld.tensor == top.target.tensor
                for k in at} if m.stmt is not top else {frozenset({inner.iterator})}
        for its in mine:
            groups |= {int(ix.args[1].value) for ld in E.loads(m.stmt.expr) for ix in ld.indices  # type: ignore[attr-defined]
                       for it in its if is_group_of(ix, it)}
    if len(groups) == 1 and extent % next(iter(groups)) == 0:
        return others * (extent // next(iter(groups)))
    return others * -(-extent // fit_tile(extent, block_m))


def _fits(loop: Loop, limit: int) -> bool:
    return isinstance(loop.upper, E.Const) and isinstance(loop.lower, E.Const) and _extent(loop) <= limit


def _extent(loop: Loop) -> int:
    return int(loop.upper.value) - int(loop.lower.value)  # type: ignore[union-attr]


def _single(program: Program, stmt: Stmt) -> bool:
    """The only statement of its nest and the only writer of its target (but for the NaN fixup
    masks-to-domains put after it, which the merge leaves as true as the whole reduction did)."""
    writes = [s for s, _, _ in walk_stmts(program.body) if s.target.tensor == stmt.target.tensor
              and not is_nan_fixup(s)]
    nest = next(node for node in program.body if _holds(node, stmt))
    return len(writes) == 1 and len(list(walk_stmts((nest,)))) == 1


def _holds(node: Node, stmt: Stmt) -> bool:
    return any(s is stmt for s, _, _ in walk_stmts((node,)))


def _group(program: Program, top: Stmt, loop: Loop) -> list[_Member] | str:
    """The maximum and the reductions over a loop of the same extent that read its final value;
    a refusal where a reader of the maximum cannot follow it into chunks."""
    where = {s.name: (ls, gs) for s, ls, gs in walk_stmts(program.body)}
    ls, gs = where[top.name]
    members = [_Member(top, ls, gs, loop)]
    for r in readers(program).get(top.target.tensor, []):
        r_loops, r_guards = where[r.name]
        same = [l for l in r_loops if l.kind == "reduce" and l.lower == loop.lower and l.upper == loop.upper]
        if not r.is_reduction or not same:
            continue  # an epilogue (a loss's sum over the rows, say): it reads the merged value
        if len(same) != 1 or r.scale is not None or not _single(program, r):
            return f"{r.name} reads {top.target.tensor} but does not reduce over one loop like {loop.iterator}"
        if any(loop.iterator in E.free_iters(ld.indices[k]) for ld in E.loads(r.expr) if ld.tensor == top.target.tensor
               for k in range(len(ld.indices))):
            return f"{r.name} reads {top.target.tensor} at the index it reduces"
        members.append(_Member(r, r_loops, r_guards, same[0]))
    reduced = {m.stmt.target.tensor for m in members}
    for m in members[1:]:
        others = {ld.tensor for ld in E.loads(m.stmt.expr)} & reduced - {top.target.tensor}
        if others:
            return f"{m.stmt.name} reads {', '.join(sorted(others))}, another reduction over the same loop"
    for m in members:
        if any(s.target.tensor == m.stmt.target.tensor and not is_nan_fixup(s)
               for s in readers(program).get(m.stmt.target.tensor, [])):
            return f"{m.stmt.name} reads its own target"
    return members


def _lemma(program: Program, m: _Member, top: Stmt) -> tuple[algebra.Lemma | None, str]:
    """The online lemma of ``m``'s term in the maximum, and that the term of a chunk whose
    maximum is -inf, taken against the reference 0, is the combiner's identity."""
    running = tuple(ld for ld in E.loads(m.stmt.expr) if ld.tensor == top.target.tensor)
    running = tuple(dict.fromkeys(running))
    if COMBINERS[m.stmt.op].partner is None:
        return None, f"{m.stmt.op} has no distributive partner to rescale a partial with"
    try:
        lemma = algebra.prove_online(m.stmt.expr, running, m.stmt.op)
    except algebra.NotSeparable as exc:
        return None, f"its term does not separate in {top.target.tensor}: {exc}"
    minus_inf = E.const(-math.inf, program.dtypes[top.target.tensor])
    probe = E.rewrite(m.stmt.expr, lambda x: minus_inf if x == top.expr else
                      (E.const(0.0, program.dtypes[top.target.tensor]) if x in running else None))
    identity = COMBINERS[m.stmt.op].identity(program.dtypes[m.stmt.target.tensor])
    value = algebra.abstract_eval(probe)
    if value is algebra.UNKNOWN or not algebra.same_value(float(value), float(identity)):  # type: ignore[arg-type]
        return None, (f"its term where every argument of {top.target.tensor} is -inf is not {identity} "
                      "(a chunk with every key masked would not be the identity)")
    return lemma, ""


def _rewrite(program: Program, members: list[_Member], lemmas: dict, chunking: _Chunking
             ) -> tuple[Program, tuple[list[Node], dict[str, Node]], list[str], str]:
    """Partial statements (one nest each) and the merge of each member."""
    top = members[0].stmt
    dt = program.dtypes
    used = {l.iterator for _, ls, _ in walk_stmts(program.body) for l in ls}
    c_name = fresh_name("c", used)
    n = chunking.n
    partial_of: dict[str, Load] = {}
    firsts: list[Node] = []
    folds: dict[str, Node] = {}
    for m in members:
        decl = program.tensor(m.stmt.target.tensor)
        name = fresh_tensor_name(program, decl.name + "_chunk")
        # the chunk first: the rows stay the partial's last dimensions, as they are the target's
        program = program.replace(tensors=program.tensors + (TensorDecl(name, decl.dtype, (n,) + decl.shape, "temp"),))
        partial_of[m.stmt.target.tensor] = Load(name, (Iter(c_name),) + m.stmt.target.indices)
    top_ref = partial_of[top.target.tensor]
    inner = fresh_name(members[0].loop.iterator + "_in", used | {c_name})
    program, chunked = _chunk_producers(program, members, c_name, inner, chunking)
    for m in members:
        j = m.loop.iterator
        at = chunking.at(c_name, inner)
        expr = E.rewrite(m.stmt.expr, lambda x: _chunked_load(x, chunked, j, c_name, inner))
        expr = E.substitute(expr, {j: at})
        if m.stmt is not top:
            # the chunk's own maximum, against the reference 0 where the chunk has no finite argument
            expr = E.rewrite(expr, lambda x: _reference(_partial_load(x, top_ref), dt[top.target.tensor])
                             if isinstance(x, Load) and x.tensor == top.target.tensor else None)
        guards = tuple(E.substitute(g, {j: at}) for g in m.guards)
        tail = chunking.tail(c_name, inner)
        guards += (tail,) if tail is not None else ()
        outer = [l for l in m.loops if l.kind != "reduce"]
        inner_loops = [Loop(inner, E.index(0), chunking.extent, "reduce", ()) if l is m.loop else l
                       for l in m.loops if l.kind == "reduce"]
        c_loop = Loop(c_name, E.index(0), E.index(n), "parallel", ())
        stmt = replace(m.stmt, name=fresh_stmt_name(program, m.stmt.name + "_chunk"),
                       target=partial_of[m.stmt.target.tensor], expr=expr)
        # chunks outermost: a tile of the rows (heads, for a decode step) is the block's other side
        firsts.append(nest_of([c_loop] + outer + inner_loops, guards, stmt))
        folds[m.stmt.name] = nest_of(outer + [Loop(c_name, E.index(0), E.index(n), "reduce", ())], (),
                                     replace(m.stmt, expr=_merge(m, top, partial_of, lemmas, dt)))
    return program, (firsts, folds), [p.tensor for p in partial_of.values()], c_name


def _chunk_producers(program: Program, members: list[_Member], c_name: str, inner: str, chunking: _Chunking
                     ) -> tuple[Program, dict[str, tuple[str, int]]]:
    """Re-index the temporaries the members read at the split point (the scores): a producer
    parallel over the split loop writes ``t[.., c, j']`` for ``j = C c + j'`` (or ``n j' + c``,
    interleaved, its ``j'`` dimension as long as ``j``'s) instead of ``t[.., j]``,
    a re-indexing of a parallel dimension, legal because each element is still written once and
    read where it was; then each chunk reads its scores at plain iterators, and fuse-reductions
    computes them in the chunk's program (a recomputable contraction) instead of storing them.
    Only temporaries with one writer (a single-statement nest), each read at the split iterator
    in one position, are re-indexed; one that other statements read too (a loss's gather of the
    target's logit) keeps its writer for them, and the members read a copy, written by a copy of
    the writer's nest placed beside it (the same pure expression over the same values, so the
    same elements). Returns the tensor -> (the tensor the members read, position)."""
    where = {s.name: (ls, gs) for s, ls, gs in walk_stmts(program.body)}
    names = {m.stmt.name for m in members}
    found: dict[str, int] = {}
    for m in members:
        j = m.loop.iterator
        for ld in E.loads(m.stmt.expr):
            decl = program.tensor(ld.tensor)
            pos = [k for k, ix in enumerate(ld.indices) if j in E.free_iters(ix)]
            if decl.role != "temp" or len(pos) != 1 or ld.indices[pos[0]] != Iter(j):
                continue
            found.setdefault(ld.tensor, pos[0])
    chunked: dict[str, tuple[str, int]] = {}
    read = readers(program)
    writes: dict[str, list[Stmt]] = {}
    for s, _, _ in walk_stmts(program.body):
        writes.setdefault(s.target.tensor, []).append(s)
    body = list(program.body)
    for tensor, pos in found.items():
        w = writes.get(tensor, [])
        if len(w) != 1 or not _single(program, w[0]):
            continue
        shared = not all(r.name in names for r in read.get(tensor, []))
        loops, guards = where[w[0].name]
        if not chunking.contiguous and not all(fits_block(loop_extent(l), PRODUCER_BLOCK) for l in loops
                                               if l.kind == "reduce"):
            # its re-indexed dimension is as long as the loop (``u`` in ``0:S``): stored, it would
            # hold n times the scores; a contraction over a block-sized loop is computed in the chunk
            continue
        target = w[0].target.indices[pos]
        loop = next((l for l in loops if isinstance(target, Iter) and l.iterator == target.name), None)
        if loop is None or loop.kind != "parallel" or not (loop.lower == E.index(0) and loop.upper == chunking.upper):
            continue
        if any(loop.iterator in E.free_iters(ix) for k, ix in enumerate(w[0].target.indices) if k != pos):
            continue
        at = chunking.at(c_name, inner)
        copy = fresh_tensor_name(program, tensor + "_chunks") if shared else tensor
        new_target = Load(copy, w[0].target.indices[:pos] + (Iter(c_name), Iter(inner)) + w[0].target.indices[pos + 1:])
        stmt = replace(w[0], target=new_target, expr=E.substitute(w[0].expr, {loop.iterator: at}))
        if shared:
            stmt = replace(stmt, name=fresh_stmt_name(program, w[0].name))
        new_loops = [Loop(c_name, E.index(0), E.index(chunking.n), "parallel", ())] + [
            Loop(inner, E.index(0), chunking.extent, "parallel", ()) if l is loop else l for l in loops]
        tail = chunking.tail(c_name, inner)
        moved = tuple(E.substitute(g, {loop.iterator: at}) for g in guards)
        k = next(k for k, node in enumerate(body) if _holds(node, w[0]))
        nest = nest_of(new_loops, moved + ((tail,) if tail is not None else ()), stmt)
        body[k:k + 1] = [body[k], nest] if shared else [nest]
        decl = program.tensor(tensor)
        inner_size = chunking.extent.value if isinstance(chunking.extent, E.Const) else chunking.extent.name  # type: ignore[attr-defined]
        chunks = replace(decl, name=copy, shape=decl.shape[:pos] + (chunking.n, inner_size) + decl.shape[pos + 1:])
        tensors = program.tensors + (chunks,) if shared else tuple(chunks if t.name == tensor else t
                                                                   for t in program.tensors)
        program = program.replace(tensors=tensors, body=tuple(body))
        chunked[tensor] = (copy, pos)
    return program, chunked


def _chunked_load(x: Expr, chunked: dict[str, int], j: str, c_name: str, inner: str) -> Expr | None:
    if not isinstance(x, Load) or x.tensor not in chunked:
        return None
    copy, pos = chunked[x.tensor]
    return Load(copy, x.indices[:pos] + (Iter(c_name), Iter(inner)) + x.indices[pos + 1:])


def _partial_load(x: Load, top_ref: Load) -> Load:
    """``top``'s partial at the chunk, read where ``x`` read ``top``'s target (same row index)."""
    return Load(top_ref.tensor, (top_ref.indices[0],) + x.indices)


def _reference(y: Expr, dtype: str) -> Expr:
    return E.call("where", E.call("eq", y, E.const(-math.inf, dtype)), E.const(0.0, dtype), y)


def _merge(m: _Member, top: Stmt, partial_of: dict[str, Load], lemmas: dict, dt: dict[str, str]) -> Expr:
    """The term a chunk adds to the row: the maximum's partial, or a dependent partial rescaled
    from the chunk's maximum to the row's (skipped for a chunk with no finite argument)."""
    part = partial_of[m.stmt.target.tensor]
    if m.stmt is top:
        return part
    lemma = lemmas[m.stmt.name]
    y = top.target
    y_part = partial_of[top.target.tensor]
    loads = list(lemma.running)
    old = [Load(y_part.tensor, (y_part.indices[0],) + ld.indices) for ld in loads]
    new = list(loads)
    dtype = dt[m.stmt.target.tensor]
    rescale = algebra.to_ir(lemma, [_reference(o, dt[y.tensor]) for o in old], new, dtype)
    partner = COMBINERS[m.stmt.op].partner
    term = E.call(partner, part, rescale)  # type: ignore[arg-type]
    identity = E.const(COMBINERS[m.stmt.op].identity(dtype), dtype)
    empty_row = E.call("eq", new[0], E.const(-math.inf, dt[y.tensor]))
    eager = algebra.abstract_eval(E.rewrite(m.stmt.expr, lambda x: E.const(-math.inf, dt[y.tensor])
                                            if x == top.expr or x in loads else None))
    row_value = E.const(float(eager), dtype) if isinstance(eager, float) else identity  # type: ignore[arg-type]
    skipped = E.call("where", empty_row, row_value, identity)
    return E.call("where", E.call("eq", old[0], E.const(-math.inf, dt[y.tensor])), skipped, term)


def _chunks_independent(program: Program, firsts: list[Node], partial: list[str], c_name: str) -> str | None:
    """isl: a partial statement reads another partial only at its own chunk (the relation
    between its instances and the elements of other chunks it reads is empty); else why not."""
    for nest in firsts:
        for s, loops, guards in walk_stmts((nest,)):
            its = [l.iterator for l in loops]
            domain, _ = statement_domain(s.name, [(l.iterator, l.lower, l.upper) for l in loops], guards, program.params)
            for ld in E.loads(s.expr):
                if ld.tensor not in partial:
                    continue
                access, exact = access_map(domain, ld.tensor, ld.indices, program.tensor(ld.tensor).shape)
                pairs = access.wrap()
                ls = isl.LocalSpace.from_space(pairs.get_space())
                mine = isl.Aff.var_on_domain(ls, isl.dim_type.set, its.index(c_name))
                theirs = isl.Aff.var_on_domain(ls, isl.dim_type.set, len(its))  # the partial's chunk index
                other = pairs & (mine.lt_set(theirs) | mine.gt_set(theirs))
                if not exact or not other.is_empty():
                    return f"{s.name} reads {ld.tensor} of another chunk: {other}"
    return None


@dataclass(frozen=True)
class SplitReductions(Pass):
    """Split reductions: a long dependent reduction over few rows runs in chunks, then merges them."""

    name: ClassVar[str] = "split-reductions"
    chunk: int = option(CHUNK, "the shortest chunk, and the unit of a chunk's length: each chunk is a program of "
                               "its own, whose serial loop walks its points in tiles")
    grid: int = option(GRID, "programs a split aims at: as few chunks as reach it (for a varying length a power of "
                             "two, 2 to 64); no split where a kernel has them unsplit")
    max_rows: int = option(MAX_ROWS, "most rows (the maximum's other points) a split applies to, a bound on the "
                                     "partial states (rows x chunks x state)")
    block_m: int = option(BLOCK_M, "the tile of rows tile will take (tile's block_m): the programs of an unsplit kernel")

    def apply(self, program: Program) -> Program:
        return split_reductions(program, chunk=self.chunk, max_rows=self.max_rows, grid=self.grid,
                                block_m=self.block_m)
