"""The polyhedral (isl) view of a program: iteration domains, access relations and schedule.

Each statement instance is a point ``S[i0, ..., in]`` over its enclosing iterators. Its domain
comes from the loop bounds and the affine guard conditions (a guard that is not affine is left
out: the domain over-approximates, which keeps every dependence analysis sound). Accesses with
quasi-affine indices are exact; an index that is not (a gather) makes that dimension of the
access range over the whole tensor. The schedule is the 2d+1 form of the program's tree,
padded to one length, since isl silently ignores pairs of schedules of different lengths.

Shapes are static, so every set is parameter-free and every witness is a concrete instance.

.. autoclass:: PolyView
.. autofunction:: aff_str
.. autofunction:: cond_str
"""

from __future__ import annotations

from dataclasses import dataclass

import islpy as isl

from flashlight.ir.expr import Call, Const, Expr, Load, affine_form
from flashlight.ir.nodes import Guard, Loop, Node, Program, Stmt

# Words the isl parser reserves; a tensor or iterator with such a name gets a trailing underscore.
_ISL_KEYWORDS = frozenset({
    "and", "or", "not", "mod", "floor", "ceil", "min", "max", "exists", "true", "false",
    "infty", "NaN", "rat", "implies", "xor", "cnd", "floord", "ceild",
})


def isl_name(name: str) -> str:
    return name + "_" if name in _ISL_KEYWORDS else name


# {{{ expressions to isl syntax

def aff_str(e: Expr) -> str | None:
    """isl syntax for a quasi-affine integer expression, or None."""
    form = affine_form(e)
    if form is not None:
        coeffs, c = form
        parts = [f"{v}*{isl_name(k)}" for k, v in coeffs.items()]
        parts.append(str(c))
        return " + ".join(parts)
    if isinstance(e, Call) and e.op in ("floordiv", "mod") and isinstance(e.args[1], Const):
        inner = aff_str(e.args[0])
        if inner is None:
            return None
        d = int(e.args[1].value)
        return f"floor(({inner})/{d})" if e.op == "floordiv" else f"(({inner}) mod {d})"
    if isinstance(e, Call) and e.op in ("add", "sub"):
        a, b = aff_str(e.args[0]), aff_str(e.args[1])
        if a is None or b is None:
            return None
        return f"({a}) {'+' if e.op == 'add' else '-'} ({b})"
    if isinstance(e, Call) and e.op == "mul":
        for x, y in (e.args, e.args[::-1]):
            if isinstance(x, Const) and x.dtype == "i64":
                inner = aff_str(y)
                return None if inner is None else f"{int(x.value)}*({inner})"
    if isinstance(e, Call) and e.op == "neg":
        inner = aff_str(e.args[0])
        return None if inner is None else f"-({inner})"
    return None


_CMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "="}
_NEGATED = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}


def cond_str(e: Expr, negate: bool = False) -> str | None:
    """isl constraint syntax for a boolean combination of affine comparisons, or None."""
    if isinstance(e, Const) and e.dtype == "b1":
        return "1 = 1" if bool(e.value) != negate else "1 = 0"
    if not isinstance(e, Call):
        return None
    if e.op == "not":
        return cond_str(e.args[0], not negate)
    if e.op in ("and", "or"):
        a, b = cond_str(e.args[0], negate), cond_str(e.args[1], negate)
        if a is None or b is None:
            return None
        joiner = ("and" if e.op == "and" else "or") if not negate else ("or" if e.op == "and" else "and")
        return f"(({a}) {joiner} ({b}))"
    if e.op in _NEGATED:
        op = _NEGATED[e.op] if negate else e.op
        a, b = aff_str(e.args[0]), aff_str(e.args[1])
        if a is None or b is None:
            return None
        if op == "ne":
            return f"(({a}) < ({b}) or ({a}) > ({b}))"
        return f"({a}) {_CMP[op]} ({b})"
    return None

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
    space = f"{isl_name(stmt.name)}[{', '.join(isl_name(i) for i in its)}]"
    exact = True
    constraints = []
    for l in loops:
        lo, hi = aff_str(l.lower), aff_str(l.upper)
        if lo is None or hi is None:
            raise ValueError(f"loop {l.iterator} of {stmt.name} has non-affine bounds")
        constraints.append(f"{lo} <= {isl_name(l.iterator)} < {hi}")
    for g in guards:
        c = cond_str(g)
        if c is None:
            exact = False
        else:
            constraints.append(c)
    domain = isl.Set(f"{{ {space} : {' and '.join(constraints) or '1 = 1'} }}")

    def access(load: Load) -> isl.Map:
        nonlocal exact
        decl = program.tensor(load.tensor)
        outs, extra = [], []
        for k, idx in enumerate(load.indices):
            a = aff_str(idx)
            if a is None:
                exact = False
                outs.append(f"o{k}")
                extra.append(f"0 <= o{k} < {decl.shape[k]}")
            else:
                outs.append(a)
        body = f"{space} -> {isl_name(load.tensor)}[{', '.join(outs)}]"
        if extra:
            body += " : " + " and ".join(extra)
        return isl.Map(f"{{ {body} }}").intersect_domain(domain)

    writes = isl.UnionMap.from_map(access(stmt.target))
    read_loads = [x for e in (stmt.expr, stmt.scale, *stmt.target.indices) if e is not None for x in _loads_in(e)]
    if stmt.is_reduction:
        read_loads.append(stmt.target)
    reads = isl.UnionMap("{ }")
    for ld in read_loads:
        reads = reads.union(isl.UnionMap.from_map(access(ld)))
    dims = []
    for k in range(depth + 1):
        dims.append(str(positions[k]) if k < len(positions) else "0")
        if k < depth:
            dims.append(isl_name(its[k]) if k < len(its) else "0")
    schedule = isl.Map(f"{{ {space} -> [{', '.join(dims)}] }}").intersect_domain(domain)
    return StmtView(stmt.name, its, domain, writes, reads, schedule, exact)


def _loads_in(e: Expr) -> list[Load]:
    from flashlight.ir.expr import loads

    return loads(e)


# {{{ isl sets back to IR conditions

def set_to_condition(s: isl.Set, iterators: tuple[str, ...]) -> Expr | None:
    """An IR condition equal to ``s`` (a set over ``iterators``), or None if it needs
    existential variables. Each basic set is a conjunction of affine constraints; a union is a
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
