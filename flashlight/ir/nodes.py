"""Programs: tensors and a tree of loops, guards and statements.

All nodes are frozen dataclasses; transformations build new trees (``dataclasses.replace``).

Semantics. A program runs its body in order. ``Loop`` runs its body for each value of its
iterator in ``[lower, upper)``; its ``kind`` says what the body does across iterations:
``parallel`` (no value flows between iterations), ``reduce`` (iterations fold into reduction
targets) or ``seq`` (anything else). ``Guard`` runs its body where the condition holds.
``Stmt`` evaluates ``expr`` and combines it into ``target``: ``=`` overwrites, a reduction
combiner (``+=``, ``*=``, ``max=``, ``min=``) folds. Every element that a reduction statement
folds into starts at the combiner's identity. A reduction with a ``scale`` is an *online*
reduction: each step first rescales the accumulator, ``t = t*scale + expr`` for ``+=`` and
``t = max(t + scale, expr)`` for ``max=`` (the partner operation of the combiner). A statement
marked ``as dot over r`` is a matrix product of two tiles summed over ``r`` (after tiling). A
``max=``/``min=`` reduction with a ``fold_scale`` (``m[i] max= x[i,j] then * 0.125``) multiplies
every fold of ``expr`` by that positive constant (scale-after-fold): a tile is folded, then
scaled, which is what folding ``expr * c`` gives, exactly. A statement tagged ``as nan fixup``
is the assignment ``z = where(... y == -inf, nan, z)`` that gives a row whose maximum ``y``
stayed ``-inf`` eager's NaN (:class:`NanFixup`). A statement tagged ``as given`` writes an input
and runs nowhere: it states what the input holds (:class:`Given`).

After tiling, a loop carries its tile size (one per iterator within a top-level nest, which
becomes one kernel: sibling loops over one iterator share their tile), and after mapping it
says where it runs: ``grid`` (one program per tile), ``serial`` (a loop over tiles inside a program) or ``block``
(all of it at once inside a tile). A serial loop may list the tile ranges that hold instances,
and which of them need no masks: a proved fact about the domain, not a change of meaning; it may
also list per-tile bounds of data that its guards read, another fact, and the test of its
data-dependent guards per tile (``test [possible P; certain C]``), a third. A grid loop may say in
which order its programs are launched (``launch heaviest-first group G``), and a serial loop
what online state it carries (``state [running m; previous m_prev; rescaled l, acc]``), and
which of its accumulators the NaN fixup after it stores (``superseded [l]``: another fact). A
``local`` tensor lives in registers of one program; every other temporary is a global ``buffer``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Union

from flashlight.ir.combiners import COMBINERS
from flashlight.ir.expr import Const, Expr, Iter, Load, affine_form, evaluate, loads

LOOP_KINDS = ("parallel", "reduce", "seq")
MAPPINGS = ("grid", "serial", "block")
ROLES = ("input", "output", "temp")
STORAGES = ("global", "local")


@dataclass(frozen=True)
class TensorDecl:
    name: str
    dtype: str
    # a dimension is a size or a size parameter of the program (``S``), the same at every call
    # within one compilation for the former, bound by each call's inputs for the latter
    shape: tuple[int | str, ...]
    role: str  # input | output | temp
    storage: str = "global"  # global | local (registers of one program)
    # a fact about an input's values, proved where they were computed: every finite element is at
    # least this (a softmax's saved row sum: 1), printed ``sum_1: f32[4] >= 1.0``
    at_least: float | None = None

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            if isinstance(s, str):
                raise TypeError(f"{self.name} has a symbolic shape {self.shape}: its size depends on {s}")
            n *= s
        return n


def fresh_name(base: str, taken: set[str] | list[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... where it is taken (an iterator, a tensor, a
    statement, a local name of generated code)."""
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


@dataclass(frozen=True)
class NanFixup:
    """Tags ``z = where(c, nan, z)`` with ``c`` ending in ``y == -inf`` (``rows & y == -inf``): the
    statement that gives eager's NaN to the rows of a reduction ``z`` where the maximum ``y`` it
    reads stayed -inf (a row with no unmasked point), which the rewritten reduction left at its
    identity. Only :func:`flashlight.passes.tree.nan_fixup` makes one; passes recognise the
    statement by this tag, never by its shape, and the verifier checks that the tagged statement
    has the builder's form."""


@dataclass(frozen=True)
class Given:
    """Tags ``x[K] = e`` with ``x`` an input: a fact, not a computation. The input already holds
    ``e`` at every point of the statement's domain, because the program that produced it (the
    forward of a training step) computed exactly ``e`` there, up to the rounding of its own
    summation order. A backward program states so for a forward output it receives, with the
    statements that define ``e``; exchange-sums reads a sum from the input in place of computing it
    again, then removes every given and what only they read. Nothing runs it: the interpreter
    skips it and the code generator refuses a program that still has one."""


@dataclass(frozen=True)
class LibraryCall:
    """Tags ``C[b, m, n] += A[b, m, k] * B[b, k, n]`` (factors in any layout, each index an
    iterator or a constant): the kernel that holds it is a matrix product a library computes (the
    vendor's GEMM through ``torch.matmul``), not a generated kernel; call-library decides it, the
    code generator writes the call. The product is the same sum in another order, accumulated in
    fp32 at least, as ``+=`` over a tile allows."""

    op: str = "matmul"


@dataclass(frozen=True)
class Stmt:
    name: str
    target: Load
    op: str  # "=" or a reduction combiner
    expr: Expr
    scale: Expr | None = None
    # After tiling: the reduced iterator of a matrix product of two tiles (``acc[m,n] += A[m,r] *
    # B[r,n]``), which the code generator emits as one tl.dot (the tile pass marks it).
    dot: str | None = None
    # For max=/min=: a positive constant that every fold of ``expr`` is multiplied by after the
    # fold (scale-after-fold): ``max_j(x_j * c) = max_j(x_j) * c``, one multiply per row, not per point.
    fold_scale: Const | None = None
    # What the statement is for, where passes must know it: NanFixup (from tree.nan_fixup),
    # Given (a fact about an input, from the lift of a backward program) or LibraryCall (the
    # product a library computes, from call-library).
    tag: NanFixup | Given | LibraryCall | None = None

    @property
    def is_reduction(self) -> bool:
        return self.op in COMBINERS

    @property
    def may_scatter(self) -> bool:
        """Whether a target index is more than an iterator or a number: then :func:`scatters`
        decides, from the loops around the statement."""
        return self.op == "+=" and any(not isinstance(i, (Iter, Const)) for i in self.target.indices)


@dataclass(frozen=True)
class TileRange:
    """Tiles ``lower <= t < upper`` of a serial loop (bounds in tiles, functions of the grid
    iterators through ``x // tile``); ``masked=False`` says that every point of these tiles lies
    inside the loop's bounds and satisfies the affine guards of the statements inside, so no mask
    needs evaluating for them, not even the tail's (data-dependent guards are not covered: they
    are decided at run time)."""

    lower: Expr
    upper: Expr
    masked: bool


@dataclass(frozen=True)
class TileBound:
    """``lower <= operand <= upper`` at every point of a tile of a serial loop: ``operand`` reads
    the loop's iterator, ``lower``/``upper`` read tensors of per-tile bounds indexed by the tile
    (``j // tile``). A fact about data (proved by the nest that computes the bounds, run before
    the loop), not a change of meaning: it lets a data-dependent guard be bounded per tile
    without reading the tile's data."""

    operand: Load
    lower: Load
    upper: Load


@dataclass(frozen=True)
class TileTest:
    """The run-time test of a tiled serial loop's data-dependent guards, per tile. ``possible`` is
    false only on a tile where those guards hold at no point (the tile holds no statement
    instance: it may be skipped); ``certain``, where given, is true only on a tile where every
    data-dependent guard of every statement of the loop holds at every point (the tile may run
    without them). Both read ``tile_lo(x)``/``tile_hi(x)``, the least and greatest value of an
    operand ``x`` over the current tile (the loop's tile, and the tile of each tiled loop around
    it; loops inside it over their whole range), and iterators of untiled loops around it.
    Declared by bound-guard-tiles; the interpreter checks both claims on every tile."""

    possible: Expr
    certain: Expr | None = None


@dataclass(frozen=True)
class HeaviestFirst:
    """Launch order of a tiled grid loop whose tiles hold more work the later they come (causal
    attention: later query tiles see more keys): its tiles go in reverse, so that the lightest
    finish last, and ``group`` consecutive indices of the grid loops outside it (heads) are
    interleaved, so that their keys and values are read while in cache. A choice of order among
    independent programs, not a change of meaning."""

    group: int


@dataclass(frozen=True)
class OnlineState:
    """What a serial loop carries from one step to the next under the online rewrite: the targets
    of its running reductions, the copies of their values before each step (``previous``), and
    the accumulators that are rescaled as they change. Their merge is a monoid, which licenses
    folding a tile at once (tile) and visiting tiles out of order (tile-ranges). Declared by
    fuse-reductions; the verifier checks it against the statements of the loop."""

    running: tuple[str, ...]
    previous: tuple[str, ...]
    rescaled: tuple[str, ...]

    @property
    def tensors(self) -> set[str]:
        return set(self.running) | set(self.previous) | set(self.rescaled)


@dataclass(frozen=True)
class Loop:
    iterator: str
    lower: Expr
    upper: Expr
    kind: str
    body: tuple[Node, ...]
    tile: int | None = None
    mapping: str | None = None
    # For a tiled serial loop: the only tiles that hold instances (proved by the tile-ranges
    # pass); empty means every tile, with masks.
    ranges: tuple[TileRange, ...] = ()
    # For a tiled serial loop: precomputed per-tile bounds of guard operands (hoist-tile-bounds).
    bounds: tuple[TileBound, ...] = ()
    # For a tiled grid loop: the order its programs are launched in (order-launches).
    launch: HeaviestFirst | None = None
    # For a serial loop: the online state it carries (fuse-reductions).
    state: OnlineState | None = None
    # For a serial loop: the global accumulators it carries whose store after the last tile
    # is left to the NaN fixup that overwrites all of them next (supersede-stores).
    superseded: tuple[str, ...] = ()
    # For a tiled serial loop: the run-time test of its data-dependent guards (bound-guard-tiles).
    tile_test: TileTest | None = None


@dataclass(frozen=True)
class Guard:
    cond: Expr
    body: tuple[Node, ...]


Node = Union[Loop, Guard, Stmt]


@dataclass(frozen=True)
class Proof:
    """A legality decision a pass made: what, whether it was legal, and the evidence.

    ``relation`` is the isl relation that was checked (or that blocked the transformation),
    ``witness`` a concrete violating pair when it was illegal, ``lemma`` the algebraic fact
    that licensed a rewrite.
    """

    transformation: str
    legal: bool
    reason: str
    relation: str | None = None
    witness: str | None = None
    lemma: str | None = None


@dataclass(frozen=True)
class Program:
    name: str
    tensors: tuple[TensorDecl, ...]
    body: tuple[Node, ...]
    # Decisions of the passes that produced this program; not part of the printed IR.
    proofs: tuple[Proof, ...] = field(default=(), compare=False)
    # Size parameters (``program f[S, T](...)``): names that shapes and loop bounds may use, and
    # isl parameters in every analysis, so that one program holds for every size.
    params: tuple[str, ...] = ()
    # Derived size parameters (``program f[P, U = 16 * P](...)``): a size that is an affine
    # expression of earlier parameters (a paged cache's length, pages times the page size),
    # bound by its definition at each call; isl treats it as a parameter of its own, so every
    # proof holds for any value of it, the defined one included.
    defs: tuple[tuple[str, Expr], ...] = ()

    @cached_property
    def tensor_map(self) -> dict[str, TensorDecl]:
        return {t.name: t for t in self.tensors}

    def tensor(self, name: str) -> TensorDecl:
        try:
            return self.tensor_map[name]
        except KeyError:
            raise KeyError(f"program {self.name} has no tensor {name!r}") from None

    @cached_property
    def dtypes(self) -> dict[str, str]:
        return {t.name: t.dtype for t in self.tensors}

    @property
    def inputs(self) -> tuple[TensorDecl, ...]:
        return tuple(t for t in self.tensors if t.role == "input")

    @property
    def outputs(self) -> tuple[TensorDecl, ...]:
        return tuple(t for t in self.tensors if t.role == "output")

    @property
    def temps(self) -> tuple[TensorDecl, ...]:
        return tuple(t for t in self.tensors if t.role == "temp")

    def statements(self) -> list[Stmt]:
        return [s for s, _, _ in walk_stmts(self.body)]

    def with_proofs(self, *proofs: Proof) -> Program:
        return self.replace(proofs=self.proofs + tuple(proofs))

    def replace(self, **changes) -> Program:
        fields = {"name": self.name, "tensors": self.tensors, "body": self.body, "proofs": self.proofs,
                  "params": self.params, "defs": self.defs}
        fields.update(changes)
        return Program(**fields)

    def polyhedral(self):
        """The isl view of this program (domains, accesses, schedule): see :mod:`flashlight.ir.poly`."""
        from flashlight.ir.poly import PolyView

        return PolyView.of(self)

    def __str__(self) -> str:
        from flashlight.ir.printer import format_program

        return format_program(self)


def scatters(stmt: Stmt, loops: Sequence[Loop]) -> bool:
    """A sum into an element its index computes (``out[idx[q], r] += v[q, r]``, the gradient of a
    gather; ``t[i - j] += x[i, j]``): points of one tile, or of different programs, may add into
    one element, so each adds atomically, and its reduce loops may be spread over programs too.
    A target whose indices are affine in parallel iterators, each in one index and of mixed radix
    (``4 hk + r`` with ``r`` in ``0:4``: each coefficient exceeds the span of the smaller terms),
    is one element per point: no scatter."""
    if not stmt.may_scatter:
        return False
    bounds = {l.iterator: l for l in loops}
    seen = {ix.name for ix in stmt.target.indices if isinstance(ix, Iter)}
    for ix in stmt.target.indices:
        if isinstance(ix, (Iter, Const)):
            continue
        form = affine_form(ix)
        if form is None:
            return True
        span = 0
        for it, a in sorted(form[0].items(), key=lambda kv: abs(kv[1])):
            l = bounds.get(it)
            if (l is None or l.kind != "parallel" or it in seen or abs(a) <= span
                    or not (isinstance(l.lower, Const) and isinstance(l.upper, Const))):
                return True
            seen.add(it)
            span += abs(a) * (int(l.upper.value) - int(l.lower.value) - 1)
    return False


def dims_at(dims: tuple[int | str | Expr, ...], sizes: Mapping[str, int]) -> tuple[int, ...]:
    """A shape or strides (numbers, size parameters, expressions of them) at these sizes."""
    return tuple(d if isinstance(d, int) else sizes[d] if isinstance(d, str) else evaluate(d, sizes) for d in dims)


def bind_sizes(program: Program, shapes: Sequence[tuple[int, ...]]) -> dict[str, int]:
    """The value of each size parameter given the inputs' shapes (in declaration order): from the
    first input whose declared shape has it. An input whose shape disagrees with its declaration
    at those values is refused, and so is a parameter no input's shape binds."""
    sizes: dict[str, int] = {}
    for decl, shape in zip(program.inputs, shapes):
        same_rank = len(shape) == len(decl.shape)
        if same_rank:
            for d, n in zip(decl.shape, shape):
                if isinstance(d, str):
                    sizes.setdefault(d, int(n))
        if not same_rank or tuple(shape) != dims_at(decl.shape, sizes):
            raise ValueError(f"program {program.name}: input {decl.name!r} has shape {list(shape)}, expected "
                             f"{list(decl.shape)} ({decl.dtype})"
                             + (f" with {', '.join(f'{k} = {v}' for k, v in sizes.items())}" if sizes else ""))
    for name, definition in program.defs:
        value = evaluate(definition, sizes)
        if sizes.setdefault(name, value) != value:
            raise ValueError(f"program {program.name}: {name} = {definition} is {value}, but an input's shape "
                             f"makes it {sizes[name]}")
    unbound = [p for p in program.params if p not in sizes]
    if unbound:
        raise ValueError(f"program {program.name}: no input's shape binds the size parameter {', '.join(unbound)}")
    return sizes


def walk_stmts(body: tuple[Node, ...], loops: tuple[Loop, ...] = (), guards: tuple[Expr, ...] = ()
               ) -> Iterator[tuple[Stmt, tuple[Loop, ...], tuple[Expr, ...]]]:
    """Each statement with its enclosing loops (outermost first) and guard conditions."""
    for node in body:
        if isinstance(node, Stmt):
            yield node, loops, guards
        elif isinstance(node, Loop):
            yield from walk_stmts(node.body, loops + (node,), guards)
        else:
            yield from walk_stmts(node.body, loops, guards + (node.cond,))


def walk_loops(body: tuple[Node, ...]) -> Iterator[Loop]:
    """Every loop of ``body``, outer loops before the loops inside them."""
    for node in body:
        if isinstance(node, Loop):
            yield node
        if not isinstance(node, Stmt):
            yield from walk_loops(node.body)


def node_exprs(node: Node) -> Iterator[Expr]:
    """Every expression a node and its descendants evaluate: loop bounds, tile ranges, bounds and
    tests, guard conditions, statement targets, values, rescales and fold scales."""
    if isinstance(node, Stmt):
        yield node.target
        yield node.expr
        if node.scale is not None:
            yield node.scale
        if node.fold_scale is not None:
            yield node.fold_scale
        return
    if isinstance(node, Loop):
        yield node.lower
        yield node.upper
        for r in node.ranges:
            yield r.lower
            yield r.upper
        for b in node.bounds:
            yield from (b.operand, b.lower, b.upper)
        if node.tile_test is not None:
            yield node.tile_test.possible
            if node.tile_test.certain is not None:
                yield node.tile_test.certain
    else:
        yield node.cond
    for child in node.body:
        yield from node_exprs(child)


def tensors_touched(node: Node) -> frozenset[str]:
    """The tensors a node reads or writes anywhere, guards and loop annotations included;
    remembered per node (nodes are immutable, and passes ask it of every other nest of a
    program, for each nest)."""
    hit = _TOUCHED.get(id(node))
    if hit is None or hit[0] is not node:
        if len(_TOUCHED) > 100_000:
            _TOUCHED.clear()
        hit = _TOUCHED[id(node)] = (node, frozenset(ld.tensor for e in node_exprs(node) for ld in loads(e)))
    return hit[1]


_TOUCHED: dict[int, tuple[Node, frozenset[str]]] = {}  # holds each node: its id is not reused meanwhile


def grid_chain(nest: Node) -> list[Loop]:
    """The ``@grid`` loops perfectly nested at the top of a kernel's nest, outermost first."""
    chain: list[Loop] = []
    node = nest
    while isinstance(node, Loop) and node.mapping == "grid":
        chain.append(node)
        if len(node.body) != 1 or not isinstance(node.body[0], Loop) or node.body[0].mapping != "grid":
            break
        node = node.body[0]
    return chain


def fixup_after(nest: Node, loop: Loop, target: Load) -> Stmt | None:
    """The NaN fixup that overwrites all of ``target`` right after ``loop``, a loop of the kernel
    ``nest`` (a top-level nest): the first statement after the loop that touches ``target``'s
    tensor, if it is an unguarded statement tagged :class:`NanFixup` that assigns exactly
    ``target``, within the loops that enclose ``loop`` below the grid (which may repeat it); None
    otherwise. That fixup stores every element the loop's accumulator would, before anything
    reads it: what lets supersede-stores drop the accumulator's store, and the verifier check it."""
    grid = grid_chain(nest)
    after = False

    def walk(nodes: tuple[Node, ...], guarded: bool) -> Stmt | bool | None:
        nonlocal after
        for n in nodes:
            if n is loop:
                after = True
            elif isinstance(n, Stmt) and after:
                if isinstance(n.tag, NanFixup) and n.target == target and not guarded:
                    return n
                if target.tensor in tensors_touched(n):
                    return False  # read or written first: the accumulator's store is needed
            elif isinstance(n, Guard) and after and any(ld.tensor == target.tensor for ld in loads(n.cond)):
                return False
            elif isinstance(n, (Loop, Guard)):
                before = after
                found = walk(n.body, guarded or isinstance(n, Guard))
                if found is not None:
                    return found
                if isinstance(n, Loop) and after and not before:
                    return False  # leaving a loop around ``loop``: its next iteration comes first
        return None

    found = walk(grid[-1].body if grid else (nest,), False)
    return found if isinstance(found, Stmt) else None
