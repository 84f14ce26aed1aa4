"""Contractions computed where they are read: fuse-reductions' recomputation of large contractions.

A backward of attention reads the scores ``s = q kᵀ`` and ``dP = dO vᵀ`` in kernels of two
orientations: ``dV`` and ``dK`` reduce over queries (a grid over keys), ``Δ`` and ``dQ`` over keys
(a grid over queries). Computed once, the ``Sq x Sk`` result would be stored for the other
orientation. FlashAttention's backward instead recomputes the scores in every kernel, per tile,
from ``q`` and ``k``. fuse-reductions derives that: a *recomputable contraction* is not planned
where it is written but in each kernel that reads it, as a copy placed before its first reader
there (readers in one kernel share one copy). In the forward of attention every reader of the
scores is in one kernel, so the one copy is the statement itself, under its own names.

A statement is a recomputable contraction when it is a plain reduction (no rescale, reading
nothing of its own target) of a temporary with one writer that
* expands: its result is larger than all its operands together (an outer product: ``S x S``
  scores from ``S x D`` queries and keys), so storing it costs more traffic than reading them;
* is cheap to redo: it reduces over loops that fit one block (a head dimension: one ``tl.dot``
  per tile), not over a model dimension. One that reduces over a longer loop (the logits
  ``x Wᵀ`` of a language model's loss, over the model dimension) is *computed once*: it is
  planned in its reader's kernel only where there each of its values is computed by exactly one
  program, once (inside the reader's serial loop, with a serial loop of its own over the
  reduced dimension), and any later reader reads what that kernel stored;
* reads only tensors that are written before it and never after, none of them itself deferred;
* is never tested for equality (a maximum's tie mask ``x == amax``): copies in different kernels
  may round differently in the last bit, and the maximum would then match none of them;
* is read by statements that each read it at one index, plain iterators of their own loops
  where it writes iterators (of equal extents): the copy is the contraction with its iterators
  renamed to the reader's, so that it computes, in the reader's loops, exactly what is read.

Legality: a copy computes the same values as the original. The original reduces a pure
expression of tensors that no later statement writes, so at any later position its operands hold
the same values; each redirected reader reads, index for index, what it read of the original.
isl then checks every kernel with its copies like any other (their dependences on the operands'
writers included), so a copy placed where an operand is not yet written is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Expr, Iter, Load
from flashlight.ir.nodes import Program, Proof, TensorDecl, walk_stmts
from flashlight.passes.fusion_plan import Rec
from flashlight.passes.tree import fits_block, fresh_name, stmt_exprs

NOMINAL_SIZE = 4096  # a size parameter's weight when comparing tensor sizes


def weight(program: Program, name: str) -> int:
    return math.prod(d if isinstance(d, int) else NOMINAL_SIZE for d in program.tensor(name).shape)


def reads(rec: Rec) -> set[str]:
    return {ld.tensor for e in stmt_exprs(rec.stmt, rec.guards) for ld in E.loads(e)}


def recomputable_contractions(program: Program, recs: list[Rec], block_limit: int
                              ) -> tuple[dict[str, Rec], set[str], list[Proof]]:
    """``tensor -> its writer`` for each recomputable contraction (module docstring), those of
    them computed once (they reduce over a loop longer than a block), and a refusal for each
    contraction that expands but is stored all the same."""
    writer_pos: dict[str, list[int]] = {}
    for k, r in enumerate(recs):
        writer_pos.setdefault(r.stmt.target.tensor, []).append(k)
    found: dict[str, Rec] = {}
    once: set[str] = set()
    refusals: list[Proof] = []
    for k, r in enumerate(recs):
        s, t = r.stmt, r.stmt.target.tensor
        if program.tensor(t).role != "temp" or len(writer_pos[t]) != 1 or not s.is_reduction or s.scale is not None:
            continue
        operands = reads(r)
        if t in operands or weight(program, t) <= sum(weight(program, x) for x in operands):
            continue
        why = None
        if operands & set(found):
            why = f"it reads {', '.join(sorted(operands & set(found)))}, itself recomputed"
        elif any(p > k for x in operands for p in writer_pos.get(x, [])):
            why = "an operand is written again after it"
        elif compared := [o.name for o in recs[k + 1:] if _compares(o, t)]:
            why = (f"{', '.join(compared)} {'tests' if len(compared) == 1 else 'test'} it for equality (a maximum's "
                   "tie mask): a copy in another kernel may differ from the one the maximum folded in the last bit")
        else:
            unaligned = [o.name for o in recs[k + 1:] if t in reads(o) and alignment(r, o) is None]
            if unaligned:
                why = (f"{', '.join(unaligned)} {'reads' if len(unaligned) == 1 else 'read'} it at an index a copy "
                       "cannot be aligned with (several indices, or not plain iterators of equal extents)")
        if why is None:
            found[t] = r
            if not all(fits_block(r.extent(l.iterator), block_limit) for l in r.loops if l.kind == "reduce"):
                once.add(t)  # redoing it costs more than storing it: computed once, where it is read
        else:
            refusals.append(Proof(f"recompute {t} ({r.name}) where it is read", False, why + "; it is stored"))
    return found, once, refusals


def computed_once_in(copy: Rec, grid: tuple[str, ...], outer: tuple[str, ...]) -> bool:
    """Whether a copy placed in a kernel with this grid, inside serial loops ``outer``, computes
    each of its values in exactly one program, once: every grid and enclosing serial iterator
    indexes its target (a grid iterator it does not use would have every program along it redo
    the whole contraction)."""
    written = {i for x in copy.stmt.target.indices for i in E.free_iters(x)}
    return set(grid) <= written and set(outer) <= written


def _compares(reader: Rec, tensor: str) -> bool:
    """Whether ``reader`` tests a value computed from ``tensor`` for equality."""
    return any(isinstance(x, Call) and x.op in ("eq", "ne") and any(ld.tensor == tensor for ld in E.loads(x))
               for e in stmt_exprs(reader.stmt, reader.guards) for x in E.walk(e))


def read_at(reader: Rec, tensor: str) -> tuple[Expr, ...] | None:
    """The one index at which ``reader`` reads ``tensor`` (None if it reads it at several)."""
    seen = {ld.indices for e in stmt_exprs(reader.stmt, reader.guards) for ld in E.loads(e) if ld.tensor == tensor}
    return next(iter(seen)) if len(seen) == 1 else None


@dataclass(frozen=True)
class Alignment:
    """How a copy of a contraction computes what one reader reads: ``rename`` maps the
    contraction's iterators to the reader's (or apart from them), ``at`` replaces an iterator by
    the reader's index where that is not an iterator, and ``spread`` gives, for each such
    iterator, the reader's iterators in its index that the copy loops over in its place (a
    group's heads ``h = R g + r``: the copy runs over ``g`` and ``r``; a gather ``mm[i, t[i]]``:
    over none, it computes only the values read)."""

    rename: dict[str, str]
    at: dict[str, Expr]
    spread: dict[str, tuple[str, ...]]

    def key(self) -> tuple:
        return tuple(sorted(self.rename.items())), tuple(sorted((k, str(v)) for k, v in self.at.items()))


def alignment(original: Rec, reader: Rec) -> Alignment | None:
    """The renaming of ``original``'s iterators under which it writes, index for index, what
    ``reader`` reads of it (its other iterators kept, or renamed apart from the reader's); an
    index of the reader that is no iterator of its own is substituted. Iterators of the reader
    in it that are aligned with none of the contraction's become loops of the copy, where the
    index is affine and stays, over their whole ranges, inside the loop it replaces."""
    indices = read_at(reader, original.stmt.target.tensor)
    if indices is None:
        return None
    mapping: dict[str, str] = {}
    at: dict[str, Expr] = {}
    for g, f in zip(original.stmt.target.indices, indices):
        if not isinstance(g, Iter):
            if g != f:
                return None
            continue
        if g.name in mapping or g.name in at:
            return None
        if not isinstance(f, Iter):
            at[g.name] = f
            continue
        if f.name not in reader.its or f.name in mapping.values():
            return None
        if original.extent(g.name) != reader.extent(f.name):
            return None
        mapping[g.name] = f.name
    spread: dict[str, tuple[str, ...]] = {}
    claimed = set(mapping.values())
    for g, f in at.items():
        own = tuple(it for it in reader.its if it in E.free_iters(f) and it not in claimed)
        if own and not _inside(f, reader, original.extent(g)):
            return None
        claimed |= set(own)
        spread[g] = own
    used = set(reader.its) | claimed
    for it in original.its:
        if it not in mapping and it not in at:
            mapping[it] = fresh_name(it, used)
            used.add(mapping[it])
    return Alignment(mapping, at, spread)


def _inside(index: Expr, reader: Rec, extent: object) -> bool:
    """Whether an affine ``index`` of the reader's iterators stays in ``0:extent`` over their ranges."""
    form = E.affine_form(index)
    if form is None or not isinstance(extent, int):
        return False
    ranges = {it: (0, n - 1) for it in form[0] if isinstance(n := reader.extent(it), int)}
    bounds = E.affine_bounds(form, ranges)
    return bounds is not None and 0 <= bounds[0] and bounds[1] < extent


def renamed(rec: Rec, al: Alignment, stmt_name: str, tensor: str, reader: Rec | None = None) -> Rec:
    """``rec`` with its iterators renamed (and substituted), as statement ``stmt_name`` writing
    ``tensor``: each substituted dimension becomes the reader's iterators spread over it, with
    the reader's loops over them."""
    def ren(e: Expr) -> Expr:
        def one(x: Expr) -> Expr | None:
            if isinstance(x, Iter) and x.name in al.at:
                return al.at[x.name]
            return Iter(al.rename[x.name]) if isinstance(x, Iter) and x.name in al.rename else None
        return E.rewrite(e, one)
    s = rec.stmt
    target: list[Expr] = []
    for i in s.target.indices:
        if isinstance(i, Iter) and i.name in al.at:
            target += [Iter(x) for x in al.spread[i.name]]
        else:
            target.append(ren(i))
    stmt = replace(s, name=stmt_name, expr=ren(s.expr), scale=None if s.scale is None else ren(s.scale),
                   target=Load(tensor, tuple(target)))
    loops: list = []
    for l in rec.loops:
        if l.iterator in al.at:
            assert reader is not None or not al.spread[l.iterator]
            loops += [replace(reader.loop(x), kind="parallel") for x in al.spread[l.iterator]]  # type: ignore[union-attr]
        else:
            loops.append(replace(l, iterator=al.rename.get(l.iterator, l.iterator)))
    guards = tuple(ren(g) for g in rec.guards)
    if al.at and reader is not None:
        # computed only where the reader reads it: an index the reader guards (a target of -100
        # that the loss ignores) may lie outside the tensor where the guard fails
        mine = {l.iterator for l in loops}
        guards += tuple(g for g in reader.guards if E.free_iters(g) <= mine)
    return Rec(stmt, tuple(loops), guards)


def copy_shape(original: Rec, al: Alignment, shape: tuple, reader: Rec) -> tuple:
    """The shape of a copy under ``al``: a substituted dimension becomes its spread iterators'."""
    out: list = []
    for i, n in zip(original.stmt.target.indices, shape):
        if isinstance(i, Iter) and i.name in al.at:
            out += [reader.extent(x) for x in al.spread[i.name]]
        else:
            out.append(n)
    return tuple(out)


def spread_of(original: Rec, al: Alignment) -> tuple[tuple[str, ...] | None, ...]:
    """Per dimension of ``original``'s target: None where a reader's index is kept, else the
    iterators a copy under ``al`` has in its place."""
    return tuple(al.spread[i.name] if isinstance(i, Iter) and i.name in al.at else None
                 for i in original.stmt.target.indices)


class Copies:
    """The copies of recomputable contractions: which exist, and the candidates proposed.

    A candidate is the contraction aligned with one reader. The first proposed of a tensor keeps
    the writer's names, later ones get fresh names. A candidate is declared in the fuser's program
    as soon as it is proposed (isl's view of a candidate kernel needs its shape) and keeps its
    names, so repeated attempts analyse the same statements; candidates never placed in a kernel
    are removed from the result."""

    def __init__(self, deferred: dict[str, Rec], once: set[str] = frozenset()) -> None:
        self.deferred = deferred
        self.once = once  # computed at most once (module docstring): later readers read it stored
        self.of: dict[str, str] = {}  # copy tensor -> the tensor it copies
        self.taken: set[str] = set()  # copy tensors placed in a kernel
        self._candidates: dict[tuple, Rec] = {}
        self.gathered: dict[str, tuple] = {}  # a copy at substituted indices -> spread_of its alignment
        self._stmt_names: set[str] = set()  # names given to copies

    @property
    def deferred_stmts(self) -> set[str]:
        return {r.name for r in self.deferred.values()}

    def read_by(self, rec: Rec) -> list[str]:
        """The deferred tensors ``rec`` reads, in program order."""
        mine = reads(rec)
        return [t for t in self.deferred if t in mine]

    def stored(self, tensor: str, reader: Rec) -> str | None:
        """The copy that computes ``tensor`` once, if a kernel holds it: ``reader`` reads it from
        memory (unless it gathers it: a gathered copy computes only what it reads)."""
        if tensor not in self.once or self.gathers(tensor, reader):
            return None
        return next((c for c in self.taken if self.of[c] == tensor), None)

    def extra_loops(self, copy: Rec, serial: tuple[str, ...], outer: tuple[str, ...],
                    grid: tuple[str, ...]) -> tuple[str, ...] | None:
        """The serial loops a copy with serial iterators ``serial`` has inside a phase over
        ``outer``: none for a recomputable contraction (it must walk the phase's loops), its own
        reduced loops for one computed once where it is computed once there (None otherwise)."""
        if serial == outer:
            return ()
        if self.of.get(copy.stmt.target.tensor) not in self.once or serial[:len(outer)] != outer:
            return None
        extra = serial[len(outer):]
        if any(copy.loop(it).kind != "reduce" for it in extra) or not computed_once_in(copy, grid, outer):
            return None
        return extra

    def candidate(self, program: Program, tensor: str, reader: Rec) -> tuple[Program, Rec]:
        """A copy of ``tensor`` aligned with ``reader`` (and the program declaring it)."""
        original = self.deferred[tensor]
        al = alignment(original, reader)
        assert al is not None, f"{reader.name} cannot read a copy of {tensor}"
        key = (tensor, al.key())
        hit = self._candidates.get(key)
        if hit is not None:
            return program, hit
        if tensor not in self.of and not al.at:
            name, stmt_name = tensor, original.name
        else:
            stmt_names = {s.name for s, _, _ in walk_stmts(program.body)} | self._stmt_names
            base = f"{tensor}_at" if al.at else tensor  # a gathered copy: the values one reader reads
            name, stmt_name = fresh_name(base, set(program.tensor_map)), fresh_name(original.name, stmt_names)
            decl = program.tensor(tensor)
            shape = copy_shape(original, al, decl.shape, reader)
            program = program.replace(tensors=program.tensors + (TensorDecl(name, decl.dtype, shape, "temp"),))
        self._stmt_names.add(stmt_name)
        copy = renamed(original, al, stmt_name, name, reader)
        self.of[name] = tensor
        if al.at:
            self.gathered[name] = spread_of(original, al)
        self._candidates[key] = copy
        return program, copy

    def gathers(self, tensor: str, reader: Rec) -> bool:
        """Whether ``reader`` reads ``tensor`` at an index a copy substitutes (a gather, a
        group's heads): such a copy computes only what that reader reads."""
        al = alignment(self.deferred[tensor], reader)
        return al is not None and bool(al.at)

    def take(self, unit: list[Rec]) -> list[Proof]:
        """Record the copies of a unit placed in a kernel; a proof for each that is not the original."""
        proofs = []
        for r in unit:
            t = r.stmt.target.tensor
            if t not in self.of or t in self.taken:
                continue
            self.taken.add(t)
            self._candidates = {k: c for k, c in self._candidates.items() if c.stmt.target.tensor != t}
            source = self.of[t]
            if t in self.gathered:
                original = self.deferred[source]
                spread = [x for its in self.gathered[t] if its for x in its]
                how = (f"over the reader's {', '.join(spread)} in place of the dimension its index computes"
                       if spread else "at the reader's index for the gathered dimension")
                proofs.append(Proof(
                    f"compute {source} as {t} where {'it is gathered' if not spread else 'it is read'}: "
                    f"{r.name} copies {original.name}", True,
                    f"{original.name} reduces a pure expression of {', '.join(sorted(reads(original)))}, which no "
                    f"later statement writes; the copy substitutes the reader's index, {how}, so it computes "
                    "exactly the values read, and nothing else"))
            elif t != source:
                original = self.deferred[source]
                proofs.append(Proof(
                    f"recompute {source} as {t}: {r.name} copies {original.name}", True,
                    f"{original.name} reduces a pure expression of {', '.join(sorted(reads(original)))}, which no "
                    "later statement writes, so the copy computes the same values where its readers are; "
                    f"{source} is not stored for a kernel that reads it elsewhere"))
        return proofs

    def copies_in(self, recs: list[Rec]) -> dict[str, Rec]:
        """``deferred tensor -> its copy`` among ``recs``."""
        return {self.of[r.stmt.target.tensor]: r for r in recs if r.stmt.target.tensor in self.of}

    def untaken(self) -> set[str]:
        """Copies proposed but never placed, and deferred tensors no kernel computes."""
        return {t for t in (*self.of, *self.deferred) if t not in self.taken}


def redirect(rec: Rec, names: dict[str, str], spread: dict[str, tuple] | None = None) -> Rec:
    """``rec`` reading ``names[t]`` wherever it read ``t`` (for a copy at substituted indices,
    with each substituted index replaced by the iterators ``spread[t]`` has there)."""
    spread = spread or {}
    if all(old == new for old, new in names.items()):
        return rec

    def index(x: Load) -> tuple[Expr, ...]:
        if x.tensor not in spread:
            return x.indices
        out: list[Expr] = []
        for i, its in zip(x.indices, spread[x.tensor]):
            out += [i] if its is None else [Iter(n) for n in its]
        return tuple(out)

    def swap(e: Expr) -> Expr:
        return E.rewrite(e, lambda x: Load(names[x.tensor], index(x))
                         if isinstance(x, Load) and x.tensor in names else None)
    s = rec.stmt
    stmt = replace(s, expr=swap(s.expr), scale=None if s.scale is None else swap(s.scale),
                   target=replace(s.target, indices=tuple(swap(i) for i in s.target.indices)))
    return Rec(stmt, rec.loops, tuple(swap(g) for g in rec.guards))
