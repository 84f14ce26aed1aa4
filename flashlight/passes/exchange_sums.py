"""Exchange sums: a row sum over a contraction becomes a contraction with a given input.

The backward of softmax(q kᵀ) v reads ``Δ_i = Σ_j dP_ij P_ij`` with ``dP_ij = Σ_d dO_id V_jd``::

    R: r[I] += T[I, J] * F(I, J)          for J reduce         (Δ, over whole rows of keys)
    C: T[I, J] += X(I, d) * Y(J, d)       for d reduce         (dP = dO Vᵀ)
    D: W[I, d] += F(I, J) * Y(J, d)       for J reduce         (the forward's O = P V)
    G: o[I, d] = W[I, d] as given                               (the saved O holds it)

so ``Σ_J F Σ_d X Y = Σ_d X Σ_J F Y = Σ_d X · o``, and R becomes ``r[I] += X(I, d) * o[I, d]``
over ``d``: an ``O(S·D)`` sum instead of two matrix products over every key. The rewritten
reduction no longer reads ``T``, so the backward's query-major kernel needs no first pass over
the keys to finish Δ before dQ can start (the dependence ``Δ[i, last j] -> dS[i, 0]`` that
fuse-reductions refuses to run backwards).

Legality, four facts checked before each rewrite:
* the lemma: finite sums commute and products distribute over them, ``Σ_j F Σ_d X Y =
  Σ_d X Σ_j F Y`` where ``F`` does not depend on ``d`` and ``X`` not on ``j`` (checked with sympy,
  :func:`~flashlight.passes.algebra.exchange_lemma`; read off the free iterators);
* structure: ``R`` is a ``+=`` reduction of a product with ``T`` as a factor, read at its own
  iterators; ``C`` is ``T``'s only writer, a ``+=`` of a product; ``D`` is the only writer of
  what ``G`` reads, and its expression is ``F * Y`` after renaming its iterators (the match
  binds ``D``'s reduced iterators to ``R``'s one to one); float casts are dropped when comparing,
  since they are roundings, the identity in exact arithmetic (the given is exact only up to the
  forward's own rounding anyway); no guards (the pass runs before masks become domains);
* domains: isl checks that ``D``'s domain, renamed, is the set of ``(I, d, J)`` that ``R`` and
  ``C`` sum over together;
* values: every temporary that ``F`` and ``Y`` read has one writer (the lifted program's form),
  so ``R`` and ``D`` read the same values.

Where ``R`` has the structure but no given holds its inner sum, it is refused with the reason
(the sum is not a forward output, or no input states it). Every given is removed afterwards, with
the statements whose results nothing reads any more (a given's definition, which would compute
the forward's output again; a contraction that only the exchanged sum read): nothing runs a
given, and a temporary nothing reads is dead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Expr, Iter, Load
import islpy as isl

from flashlight.ir.isl_build import access_map, statement_domain
from flashlight.ir.nodes import Given, Loop, Node, Program, Proof, Stmt, walk_stmts
from flashlight.ir.printer import format_expr
from flashlight.passes.algebra import exchange_lemma
from flashlight.passes.declare import Pass
from flashlight.passes.tree import drop_unused_temps, map_stmts, nest_of, readers, writers

COMMUTATIVE = {"mul", "add", "max", "min", "and", "or", "eq", "ne"}
Binding = dict[str, Expr]


def exchange_sums(program: Program) -> Program:
    """Rewrite each row sum over a contraction whose exchanged inner sum an input holds (see the
    module docstring); then remove the givens and what only they read."""
    givens = [(s, loops) for s, loops, _ in walk_stmts(program.body) if isinstance(s.tag, Given)]
    places = {s.name: (loops, guards) for s, loops, guards in walk_stmts(program.body)}
    proofs: list[Proof] = []
    body = list(program.body)
    for k, nest in enumerate(body):
        found = list(walk_stmts((nest,)))
        if len(found) != 1 or isinstance(found[0][0].tag, Given):
            continue
        stmt, loops, guards = found[0]
        shape = _shape(program, stmt, loops, guards, places)
        if shape is None:
            continue
        result = _exchange(program, stmt, loops, shape, givens, places)
        if isinstance(result, Proof):
            proofs.append(result)
            continue
        body[k], proof = result
        proofs.append(proof)
    program = program.replace(body=tuple(body))
    if givens:
        program = _drop_givens(program)
    return program.with_proofs(*proofs)


@dataclass(frozen=True)
class _Shape:
    """``R: r[I] += T[I, J] * F`` with ``C: T[...] += X * Y``, both renamed into ``R``'s iterators."""

    contraction: Stmt            # C
    inner: Expr                  # F
    x: Expr                      # X (free of J)
    y: Expr                      # Y
    summed: tuple[Loop, ...]     # C's reduce loops, renamed apart from R's iterators (d)


Places = Mapping[str, tuple[tuple[Loop, ...], tuple[Expr, ...]]]  # statement -> its loops and guards


def _shape(program: Program, stmt: Stmt, loops: tuple[Loop, ...], guards: tuple[Expr, ...],
           places: Places) -> _Shape | None:
    """``stmt`` as ``R`` with its contraction ``C``, or None where it does not have that form."""
    e = stmt.expr
    if stmt.op != "+=" or stmt.scale is not None or guards or not isinstance(e, Call) or e.op != "mul":
        return None
    its = {l.iterator for l in loops}
    reduced = {l.iterator for l in loops if l.kind == "reduce"}
    w = writers(program)
    for factor, f in ((e.args[0], e.args[1]), (e.args[1], e.args[0])):
        t = _strip_casts(factor, program.dtypes)  # dP as eager rounds it before the product
        if not isinstance(t, Load) or program.tensor(t.tensor).role != "temp" or len(w.get(t.tensor, [])) != 1:
            continue
        c = w[t.tensor][0]
        if c.op != "+=" or c.scale is not None or not isinstance(c.expr, Call) or c.expr.op != "mul":
            continue
        c_loops, c_guards = places[c.name]
        if c_guards:
            continue
        rename: Binding = {}
        for ix, at in zip(c.target.indices, t.indices):
            if isinstance(ix, Iter):
                rename[ix.name] = at
            elif ix != at:
                break
        else:
            summed = []
            for l in c_loops:
                if l.kind == "reduce":
                    name = l.iterator if l.iterator not in its else f"{l.iterator}_x"
                    rename[l.iterator] = Iter(name)
                    summed.append(Loop(name, E.substitute(l.lower, rename), E.substitute(l.upper, rename), "reduce", ()))
            if not summed or any(l.iterator not in rename for l in c_loops):
                continue
            a, b = (E.substitute(x, rename) for x in c.expr.args)
            x, y = (a, b) if not (E.free_iters(a) & reduced) else (b, a)
            if E.free_iters(x) & reduced or not (E.free_iters(y) & reduced):
                continue
            return _Shape(c, f, x, y, tuple(summed))
    return None


def _exchange(program: Program, stmt: Stmt, loops: tuple[Loop, ...], shape: _Shape,
              givens: list[tuple[Stmt, tuple[Loop, ...]]], places: Places) -> tuple[Node, Proof] | Proof:
    what = f"exchange sums in {stmt.name}"
    reduced = [l for l in loops if l.kind == "reduce"]
    inner = f"Σ_{','.join(l.iterator for l in reduced)} {format_expr(Call('mul', (shape.inner, shape.y)))}"
    w = writers(program)
    why = f"its inner sum {inner} is not a forward output: no input is given to hold it"
    for g, _ in givens:
        core = _strip_casts(g.expr, program.dtypes)
        if not isinstance(core, Load) or len(w.get(core.tensor, [])) != 1:
            continue
        d = w[core.tensor][0]
        d_loops, d_guards = places[d.name]
        if d_guards or d.op != "+=" or d.scale is not None:
            continue
        bind = _unify(_strip_casts(d.expr, program.dtypes),
                      _strip_casts(Call("mul", (shape.inner, shape.y)), program.dtypes), {},
                      {l.iterator for l in d_loops})
        if bind is None or set(bind) != {l.iterator for l in d_loops}:
            why = f"its inner sum {inner} is not {d.name}'s, which {g.name} gives {g.target.tensor} to hold"
            continue
        same, checked = _same_domain(program, stmt, loops, shape, d, d_loops, bind)
        if not same:
            why = checked
            continue
        held = _held_at(program, g, places[g.name][0], core, d, bind)
        if held is None:
            why = f"{g.name} does not say where {g.target.tensor} holds {d.name}'s element"
            continue
        dt = program.dtypes[stmt.target.tensor]
        x = shape.x if E.dtype_of(shape.x, program.dtypes) == dt else Call(dt, (shape.x,))
        value: Expr = held if program.dtypes[held.tensor] == dt else Call(dt, (held,))
        new = Stmt(stmt.name, stmt.target, "+=", E.call("mul", x, value))
        kept = tuple(l for l in loops if l.kind != "reduce")
        node = nest_of(kept + shape.summed, (), new)
        reason = (f"{stmt.name} sums {format_expr(_t_load(stmt, shape))} * F over "
                  f"{', '.join(l.iterator for l in reduced)}, and {shape.contraction.name} makes that factor "
                  f"Σ_{','.join(l.iterator for l in shape.summed)} {format_expr(Call('mul', (shape.x, shape.y)))}; "
                  f"the exchanged inner sum {inner} is {d.name}'s, which the input {held.tensor} holds "
                  f"({g.name} gives it): {stmt.name} sums {format_expr(new.expr)} over "
                  f"{', '.join(l.iterator for l in shape.summed)}")
        return node, Proof(what, True, reason, relation=checked, lemma=exchange_lemma())
    return Proof(what, False, why)


def _t_load(stmt: Stmt, shape: _Shape) -> Expr:
    e = stmt.expr
    assert isinstance(e, Call)
    return e.args[0] if e.args[1] is shape.inner else e.args[1]


def _same_domain(program: Program, stmt: Stmt, loops: tuple[Loop, ...], shape: _Shape, d: Stmt,
                 d_loops: tuple[Loop, ...], bind: Binding) -> tuple[bool, str]:
    """isl: ``D``'s domain, renamed by ``bind``, is the set of points ``R`` and ``C`` sum over
    together; with the domain (the relation checked) or, where not, why."""
    d_names = {l.iterator for l in d_loops if l.kind == "reduce"}
    r_reduced = {l.iterator for l in loops if l.kind == "reduce"}
    images = [bind[l.iterator] for l in d_loops]
    if not all(isinstance(i, Iter) for i in images) or len({i.name for i in images}) != len(images) or \
            {bind[n].name for n in d_names} != r_reduced:  # type: ignore[union-attr]
        return False, f"{d.name} sums over other iterators than {stmt.name}"
    theirs = [(bind[l.iterator].name, E.substitute(l.lower, bind), E.substitute(l.upper, bind))  # type: ignore[union-attr]
              for l in d_loops]
    ours_by_name = {l.iterator: l for l in loops + shape.summed}
    try:
        ours = [(n, ours_by_name[n].lower, ours_by_name[n].upper) for n, _, _ in theirs]
        mine, _ = statement_domain("W", ours, (), program.params)
        given, _ = statement_domain("W", theirs, (), program.params)
    except (KeyError, ValueError) as exc:
        return False, f"the domains of {d.name} and {stmt.name} cannot be compared ({exc})"
    if not mine.is_equal(given):
        return False, f"{d.name} sums over {given}, not over {mine}"
    return True, str(mine)


def _held_at(program: Program, g: Stmt, g_loops: tuple[Loop, ...], core: Load, d: Stmt,
             bind: Binding) -> Load | None:
    """The element of the given input that holds ``D``'s element at the renamed point: isl
    inverts ``G``'s read of ``D`` on ``G``'s domain (``{ D[g(K)] -> o[a(K)] }``, which must be a
    single-valued affine function: a view that split a merged dimension, ``bh // H, bh % H``,
    inverts to ``H * b + h``) and it is applied to ``D``'s write index at that point."""
    want = [E.substitute(ix, bind) for ix in d.target.indices]
    try:
        domain, _ = statement_domain(g.name, [(l.iterator, l.lower, l.upper) for l in g_loops], (), program.params)
        reads, exact_r = access_map(domain, core.tensor, core.indices, program.tensor(core.tensor).shape)
        holds, exact_h = access_map(domain, g.target.tensor, g.target.indices, program.tensor(g.target.tensor).shape)
    except (KeyError, ValueError):
        return None
    inverse = reads.reverse().apply_range(holds)
    if not (exact_r and exact_h) or not inverse.is_single_valued():
        return None
    pieces: list = []
    isl.PwMultiAff.from_map(inverse).foreach_piece(lambda _, ma: pieces.append(ma))
    if len(pieces) != 1:
        return None
    out = []
    for k in range(pieces[0].dim(isl.dim_type.out)):
        aff = pieces[0].get_at(k)
        if aff.dim(isl.dim_type.div) or not aff.get_constant_val().is_int():
            return None
        term: Expr = E.index(aff.get_constant_val().to_python())
        for pos, at in enumerate(want):
            c = aff.get_coefficient_val(isl.dim_type.in_, pos)
            if not c.is_int():
                return None
            if c.to_python():
                term = E.add(term, E.mul(E.index(c.to_python()), at))
        for pos in range(aff.dim(isl.dim_type.param)):
            c = aff.get_coefficient_val(isl.dim_type.param, pos)
            if not c.is_zero():
                return None  # a size parameter in the inverse: not needed by any view we lift
        out.append(term)
    return Load(g.target.tensor, tuple(out))


def _strip_casts(e: Expr, types: Mapping[str, str]) -> Expr:
    """``e`` without float-to-float casts (roundings: the identity in exact arithmetic)."""
    def drop(x: Expr) -> Expr | None:
        if isinstance(x, Call) and dtypes.is_float(x.op) and len(x.args) == 1 and \
                dtypes.is_float(E.dtype_of(x.args[0], types)):
            return _strip_casts(x.args[0], types)
        return None

    return E.rewrite(e, drop)


def _unify(p: Expr, s: Expr, bind: Binding, variables: set[str]) -> Binding | None:
    """Bind ``variables`` (iterators of ``p``) so that ``p`` becomes ``s``, or None; products and
    other commutative operators match in either order."""
    if isinstance(p, Iter) and p.name in variables:
        if p.name in bind:
            return bind if bind[p.name] == s else None
        return {**bind, p.name: s}
    if isinstance(p, Load):
        if not isinstance(s, Load) or p.tensor != s.tensor or len(p.indices) != len(s.indices):
            return None
        for a, b in zip(p.indices, s.indices):
            found = _unify_index(a, b, bind, variables)
            if found is None:
                return None
            bind = found
        return bind
    if isinstance(p, Call):
        if not isinstance(s, Call) or p.op != s.op or len(p.args) != len(s.args):
            return None
        orders = [s.args] + ([s.args[::-1]] if p.op in COMMUTATIVE and len(s.args) == 2 else [])
        for args in orders:
            found: Binding | None = bind
            for a, b in zip(p.args, args):
                found = _unify(a, b, found, variables) if found is not None else None
            if found is not None:
                return found
        return None
    if E.free_iters(p) & variables:
        return _unify_index(p, s, bind, variables)
    return bind if p == s else None


def _unify_index(p: Expr, s: Expr, bind: Binding, variables: set[str]) -> Binding | None:
    """An index: a variable binds to ``s``; an affine index with one unbound variable of
    coefficient ±1 (``16 * h + d + 64``) is solved for it; else both sides must be equal."""
    if isinstance(p, Iter) and p.name in variables:
        return _unify(p, s, bind, variables)
    unbound = E.free_iters(p) & variables - set(bind)
    form, target = E.affine_form(p), E.affine_form(s)
    if len(unbound) == 1 and form is not None and target is not None:
        (v,) = unbound
        c = form[0][v]
        rest = E.affine_form(E.substitute(E.from_affine({k: x for k, x in form[0].items() if k != v}, form[1]), bind))
        if abs(c) != 1 or rest is None:
            return None
        coeffs = {k: c * (target[0].get(k, 0) - rest[0].get(k, 0)) for k in {*target[0], *rest[0]}}
        return {**bind, v: E.from_affine({k: x for k, x in coeffs.items() if x}, c * (target[1] - rest[1]))}
    if unbound:
        return None  # an index expression of several iterators not bound yet: not matched
    mine = E.substitute(p, bind)
    if mine == s:
        return bind
    a, b = E.affine_form(mine), E.affine_form(s)
    return bind if a is not None and a == b else None


def _drop_givens(program: Program) -> Program:
    """Remove the givens and, repeatedly, statements whose temporaries only removed statements read."""
    gone = {s.name for s, _, _ in walk_stmts(program.body) if isinstance(s.tag, Given)}
    while True:
        read = readers(program)
        w = writers(program)
        dead = {s.name for t, ss in w.items() for s in ss
                if program.tensor(t).role == "temp" and all(r.name in gone for r in read.get(t, []))
                and s.name not in gone}
        if not dead:
            break
        gone |= dead
    program = program.replace(body=map_stmts(program.body, lambda s: None if s.name in gone else s))
    return drop_unused_temps(program)


@dataclass(frozen=True)
class ExchangeSums(Pass):
    """Exchange sums: a row sum over a contraction reads the forward's output that holds its inner sum."""

    name: ClassVar[str] = "exchange-sums"

    def apply(self, program: Program) -> Program:
        return exchange_sums(program)
