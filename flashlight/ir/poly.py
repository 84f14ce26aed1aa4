"""The polyhedral (isl) view of a program: iteration domains, access relations and schedule.

Each statement instance is a point ``S[i0, ..., in]`` over its enclosing iterators. Its domain
comes from the loop bounds and the affine guard conditions (a guard that is not affine is left
out: the domain over-approximates, which keeps every dependence analysis sound). Accesses with
quasi-affine indices are exact; an index that is not (a gather) makes that dimension of the
access range over the whole tensor. The schedule is the 2d+1 form of the program's tree,
padded to one length, since isl silently ignores pairs of schedules of different lengths.

A program's size parameters (``program f[S](...)``) are isl parameters of every set and map:
an analysis of such a program holds for every size, and a witness may be a parametric instance.
The sets and maps are built by :mod:`flashlight.ir.isl_build`, as are those of the passes.

.. autoclass:: PolyView
.. autofunction:: aff_str
.. autofunction:: cond_str
"""

from __future__ import annotations

from dataclasses import dataclass

import islpy as isl

from flashlight.ir.expr import Expr, Load
from flashlight.ir.isl_build import access_map, expr_aff, expr_set, free_vars, schedule_map, statement_domain
from flashlight.ir.isl_build import is_affine_condition, is_quasi_affine, isl_name  # noqa: F401 (re-exported)
from flashlight.ir.nodes import Guard, Loop, Node, Program, Stmt


# {{{ expressions as isl text (a test of exactness wants isl_build.is_affine_condition/is_quasi_affine)

def aff_str(e: Expr) -> str | None:
    """isl's text for ``e`` as a function of its iterators, or None if it is not quasi-affine."""
    a = expr_aff(e, free_vars(e))
    return None if a is None else str(a)


def cond_str(e: Expr, negate: bool = False) -> str | None:
    """isl's text for the points of ``e``'s iterators where the condition ``e`` holds (with
    ``negate``, fails), or None if it is not a boolean combination of affine comparisons."""
    s = expr_set(e, free_vars(e), negate)
    return None if s is None else str(s)

# }}}


@dataclass(frozen=True)
class StmtView:
    name: str
    iterators: tuple[str, ...]
    domain: isl.Set
    writes: isl.UnionMap
    reads: isl.UnionMap
    schedule: isl.Map
    exact: bool  # False if the domain or an access was over-approximated


@dataclass(frozen=True)
class PolyView:
    """Domains, access relations and the original 2d+1 schedule of every statement."""

    stmts: dict[str, StmtView]

    @staticmethod
    def of(program: Program) -> PolyView:
        entries: list[tuple[Stmt, tuple[Loop, ...], tuple[Expr, ...], tuple[int, ...]]] = []
        _collect(program.body, (), (), (), entries)
        depth = max((len(loops) for _, loops, _, _ in entries), default=0)
        stmts: dict[str, StmtView] = {}
        for stmt, loops, guards, positions in entries:
            stmts[stmt.name] = _stmt_view(program, stmt, loops, guards, positions, depth)
        return PolyView(stmts)

    def _union(self, attr: str) -> isl.UnionMap:
        out = None
        for s in self.stmts.values():
            part = getattr(s, attr)
            part = part if isinstance(part, isl.UnionMap) else isl.UnionMap.from_map(part)
            out = part if out is None else out.union(part)
        return out if out is not None else isl.UnionMap("{ }")

    @property
    def domain(self) -> isl.UnionSet:
        out = isl.UnionSet("{ }")
        for s in self.stmts.values():
            out = out.union(isl.UnionSet.from_set(s.domain))
        return out

    @property
    def reads(self) -> isl.UnionMap:
        return self._union("reads")

    @property
    def writes(self) -> isl.UnionMap:
        return self._union("writes")

    @property
    def schedule(self) -> isl.UnionMap:
        return self._union("schedule")


def _collect(body: tuple[Node, ...], loops: tuple[Loop, ...], guards: tuple[Expr, ...],
             prefix: tuple[int, ...], out: list) -> None:
    """Statements with their 2d+1 position vector; guard bodies continue their parent's numbering."""
    counter = [0]

    def visit(nodes: tuple[Node, ...], guards: tuple[Expr, ...]) -> None:
        for node in nodes:
            if isinstance(node, Guard):
                visit(node.body, guards + (node.cond,))
                continue
            pos = prefix + (counter[0],)
            counter[0] += 1
            if isinstance(node, Stmt):
                out.append((node, loops, guards, pos))
            else:
                _collect(node.body, loops + (node,), guards, pos, out)

    visit(body, guards)


def _stmt_view(program: Program, stmt: Stmt, loops: tuple[Loop, ...], guards: tuple[Expr, ...],
               positions: tuple[int, ...], depth: int) -> StmtView:
    its = tuple(l.iterator for l in loops)
    domain, exact = statement_domain(stmt.name, [(l.iterator, l.lower, l.upper) for l in loops], guards,
                                     program.params)

    def access(load: Load) -> isl.Map:
        nonlocal exact
        m, whole = access_map(domain, load.tensor, load.indices, program.tensor(load.tensor).shape)
        exact = exact and whole
        return m

    writes = isl.UnionMap.from_map(access(stmt.target))
    read_loads = [x for e in (stmt.expr, stmt.scale, *stmt.target.indices) if e is not None for x in _loads_in(e)]
    if stmt.is_reduction:
        read_loads.append(stmt.target)
    reads = isl.UnionMap("{ }")
    for ld in read_loads:
        reads = reads.union(isl.UnionMap.from_map(access(ld)))
    terms: list[int | str] = []
    for k in range(depth + 1):
        terms.append(positions[k] if k < len(positions) else 0)
        if k < depth:
            terms.append(its[k] if k < len(its) else 0)
    schedule = schedule_map(stmt.name, its, terms, domain)
    return StmtView(stmt.name, its, domain, writes, reads, schedule, exact)


def _loads_in(e: Expr) -> list[Load]:
    from flashlight.ir.expr import loads

    return loads(e)


# {{{ isl sets back to IR conditions

def set_to_condition(s: isl.Set, iterators: tuple[str, ...]) -> Expr | None:
    """An IR condition equal to ``s`` (a set over ``iterators`` and size parameters), or None if
    it needs existential variables. Each basic set is a conjunction of affine constraints; a union is a
    disjunction."""
    from flashlight.ir import expr as E

    s = s.coalesce()
    disjuncts: list[Expr] = []
    for bs in s.get_basic_sets():
        if bs.dim(isl.dim_type.div):
            return None
        conj: list[Expr] = []
        for c in bs.get_constraints():
            coeffs = {iterators[k]: c.get_coefficient_val(isl.dim_type.set, k).to_python()
                      for k in range(len(iterators))}
            # a size parameter is read as an iterator is (``if W >= 1``: a loop over W runs at all)
            for k in range(bs.dim(isl.dim_type.param)):
                coeffs[bs.get_dim_name(isl.dim_type.param, k)] = c.get_coefficient_val(isl.dim_type.param, k).to_python()
            const = c.get_constant_val().to_python()
            form = E.from_affine({k: v for k, v in coeffs.items() if v}, 0)
            rel = E.Call("eq" if c.is_equality() else "ge", (E.add(form, E.index(const)), E.index(0)))
            conj.append(E.simplify_condition(rel))
        if not conj:
            return E.const(True, "b1")
        term = conj[0]
        for x in conj[1:]:
            term = E.call("and", term, x)
        disjuncts.append(term)
    if not disjuncts:
        return E.const(False, "b1")
    out = disjuncts[0]
    for x in disjuncts[1:]:
        out = E.call("or", out, x)
    return out

# }}}
