"""Building a program one operator at a time: one loop nest per operator.

:class:`ProgramBuilder` owns the tensors and top-level nests of the program being lifted. Each
``emit`` call creates one statement in its own perfect nest over fresh iterators and returns
the :class:`~flashlight.frontend.values.Value` that reads its result.

Two normalisations happen here, so that the lifted program exposes the tile structure:

* *Delinearisation.* An iterator that every access uses only through ``x // c`` and ``x % c``
  (a batch dimension that a ``view`` merged, as ``matmul`` does for ``bmm``) is split into
  digits, and the result tensor keeps the unmerged shape.
* *Iterator naming* (:func:`name_iterators`). Iterators that index the same dimension of the
  same tensor get one name (``i0``, ``i1``, ... in order of appearance), unless that would merge
  two loops of one statement.
  Names are only a proposal for aligning nests during fusion; legality never relies on them,
  since every fusion is checked with isl on the actual accesses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr, Iter, Load
from flashlight.ir.nodes import Given, Loop, Node, Program, Stmt, TensorDecl, walk_stmts
from flashlight.frontend.values import Size, Value, index_ranges, placeholder, placeholders

PARAM_NAMES = ("S", "T", "U", "V", "W")


@dataclass
class ProgramBuilder:
    name: str
    tensors: dict[str, TensorDecl] = field(default_factory=dict)
    body: list[Node] = field(default_factory=list)
    # symbolic sizes met so far (Dynamo's symbol, ``s77``) and the size parameter each became
    params: dict[str, str] = field(default_factory=dict)
    # symbolic sizes to lift as these numbers instead (a program specialized to one call's sizes)
    bound: dict[str, int] = field(default_factory=dict)
    # derived size parameters: name -> its affine expression of earlier parameters (``16 * S``)
    defs: dict[str, Expr] = field(default_factory=dict)
    _counter: int = 0

    # {{{ names and tensors

    def fresh(self, hint: str) -> str:
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in hint) or "t"
        if not (base[0].isalpha() or base[0] == "_"):
            base = "t" + base
        name, k = base, 1
        while name in self.tensors or name.startswith("_p"):
            name, k = f"{base}_{k}", k + 1
        return name

    def param(self, symbol: str) -> str:
        """The size parameter for a symbolic size: ``S``, ``T``, ... in order of first use."""
        if symbol not in self.params:
            k = len(self.params)
            self.params[symbol] = PARAM_NAMES[k] if k < len(PARAM_NAMES) else f"S{k}"
        return self.params[symbol]

    def derived(self, key: str, definition: Expr) -> str:
        """The derived size parameter for a size that is an affine expression of parameters (a
        paged cache's length ``16 * S``), one per expression (``key``: its text)."""
        if key not in self.params:
            self.params[key] = self.param(key)
            self.defs[self.params[key]] = definition
        return self.params[key]

    def add_tensor(self, hint: str, dtype: str, shape: Sequence[Size], role: str) -> str:
        name = self.fresh(hint)
        self.tensors[name] = TensorDecl(name, dtype, tuple(s if isinstance(s, str) else int(s) for s in shape), role)
        return name

    def input(self, hint: str, shape: Sequence[Size], dtype: str) -> Value:
        name = self.add_tensor(hint, dtype, shape, "input")
        return Value(Load(name, placeholders(len(shape))), tuple(shape), dtype)

    def snapshot(self) -> tuple[int, frozenset[str], int]:
        return len(self.body), frozenset(self.tensors), self._counter

    def rollback(self, snap: tuple[int, frozenset[str], int]) -> None:
        n, names, counter = snap
        del self.body[n:]
        for k in list(self.tensors):
            if k not in names:
                del self.tensors[k]
        self._counter = counter

    # }}}

    def emit(self, hint: str, dtype: str, extents: Sequence[Size], kinds: Sequence[str],
             target_dims: Sequence[int], op: str, make_expr: Callable[[list[Iter]], Expr],
             role: str = "temp") -> Value:
        """One statement in its own nest.

        ``extents``/``kinds`` describe the iterators (outermost first); the target is indexed by
        the iterators listed in ``target_dims``, in that order; ``make_expr`` builds the
        right-hand side from the iterators.
        """
        its = [Iter(f"x{self._counter}_{k}") for k in range(len(extents))]
        self._counter += 1
        ranges = index_ranges([it.name for it in its], extents)
        # a dimension of extent one is no loop: its iterator is the constant 0
        unit = {it.name: E.index(0) for it, n in zip(its, extents) if n == 1}
        rhs = E.simplify_index(E.substitute(make_expr(its), unit), ranges)
        target_idx: list[Expr] = [unit.get(its[d].name, its[d]) for d in target_dims]
        loops = [(it.name, n, kind) for it, n, kind in zip(its, extents, kinds) if n != 1]

        # delinearise merged dimensions
        splits: dict[str, list[tuple[str, int, int]]] = {}  # iterator -> digits (name, extent, radix)
        for it, n, _ in list(loops):
            digits = _digits(it, n, rhs) if isinstance(n, int) else None
            if digits is None:
                continue
            mapping = {it: _join_digits(digits)}
            new_ranges = dict(ranges)
            del new_ranges[it]
            new_ranges.update({d: (0, ext - 1) for d, ext, _ in digits})
            candidate = E.simplify_index(E.substitute(rhs, mapping), new_ranges)
            names = {d for d, _, _ in digits}
            before = sum(1 for x in E.walk(rhs) if _divmod_of(x, {it}))
            after = sum(1 for x in E.walk(candidate) if _divmod_of(x, names))
            if after >= before:
                continue  # the split removed no division: keep the merged iterator
            rhs, ranges = candidate, new_ranges
            splits[it] = digits
            k = next(k for k, l in enumerate(loops) if l[0] == it)
            loops[k:k + 1] = [(d, ext, loops[k][2]) for d, ext, _ in digits]
        shape, value_idx, new_target = [], [], []
        for pos, t in enumerate(target_idx):
            if not isinstance(t, Iter):  # a unit dimension
                shape.append(1)
                new_target.append(t)
                value_idx.append(E.index(0))
                continue
            name = t.name  # other target indices are plain iterators
            if name in splits:
                for d, ext, radix in splits[name]:
                    shape.append(ext)
                    new_target.append(Iter(d))
                    x = placeholder(pos)
                    digit = x if radix == 1 else E.floordiv(x, radix)
                    top = radix * ext == extents[its.index(Iter(name))]
                    value_idx.append(digit if top else E.mod(digit, ext))
            else:
                shape.append(extents[its.index(t)])
                new_target.append(t)
                value_idx.append(placeholder(pos))
        tname = self.add_tensor(hint, dtype, shape, role)
        stmt = Stmt(f"S{len(self.body)}", Load(tname, tuple(new_target)), op, rhs)
        node: Node = stmt
        for it, n, kind in reversed(loops):
            node = Loop(it, E.index(0), E.index(n) if isinstance(n, int) else Iter(n), kind, (node,))
        self.body.append(node)
        logical_shape = tuple(extents[d] for d in target_dims)
        return Value(Load(tname, tuple(value_idx)), logical_shape, dtype)

    def emit_scatter(self, tensor: str, extents: Sequence[Size], kinds: Sequence[str],
                     make_target: Callable[[list[Iter]], list[Expr]], op: str,
                     make_expr: Callable[[list[Iter]], Expr]) -> None:
        """One statement in its own nest that folds into the existing ``tensor`` at the indices
        ``make_target`` computes from the iterators (a scatter: they may read memory)."""
        its = [Iter(f"x{self._counter}_{k}") for k in range(len(extents))]
        self._counter += 1
        ranges = index_ranges([it.name for it in its], extents)
        unit = {it.name: E.index(0) for it, n in zip(its, extents) if n == 1}
        rhs = E.simplify_index(E.substitute(make_expr(its), unit), ranges)
        target = tuple(E.simplify_index(E.substitute(t, unit), ranges) for t in make_target(its))
        node: Node = Stmt(f"S{len(self.body)}", Load(tensor, target), op, rhs)
        for it, n, kind in reversed(list(zip(its, extents, kinds))):
            if n != 1:
                node = Loop(it.name, E.index(0), E.index(n) if isinstance(n, int) else Iter(n), kind, (node,))
        self.body.append(node)

    def emit_given(self, held: Value, definition: Value) -> None:
        """State that the input ``held`` reads holds ``definition`` at every index: a statement
        ``as given`` (:class:`~flashlight.ir.nodes.Given`) in its own nest over ``held``'s shape."""
        its = [Iter(f"x{self._counter}_{k}") for k in range(held.rank)]
        self._counter += 1
        ranges = index_ranges([it.name for it in its], held.shape)
        unit = {it.name: E.index(0) for it, n in zip(its, held.shape) if n == 1}
        target = E.simplify_index(E.substitute(held.at(its), unit), ranges)
        rhs = E.simplify_index(E.substitute(definition.at(its), unit), ranges)
        assert isinstance(target, Load) and held.dtype == definition.dtype, (target, held.dtype, definition.dtype)
        node: Node = Stmt(f"S{len(self.body)}", target, "=", rhs, tag=Given())
        for it, n in reversed(list(zip(its, held.shape))):
            if n != 1:
                node = Loop(it.name, E.index(0), E.index(n) if isinstance(n, int) else Iter(n), "parallel", (node,))
        self.body.append(node)

    def program(self, outputs: Sequence[tuple[str, Value]]) -> Program:
        """Finish: one copy statement per output, canonical iterator and statement names."""
        for hint, v in outputs:
            self.emit(hint, v.dtype, v.shape, ["parallel"] * v.rank, list(range(v.rank)), "=",
                      lambda its, v=v: v.at(its), role="output")
        order = {"input": 0, "output": 1, "temp": 2}
        tensors = tuple(sorted(self.tensors.values(), key=lambda t: order[t.role]))
        prog = Program(self.name, tensors, tuple(self.body), params=tuple(self.params.values()),
                       defs=tuple((n, d) for n, d in self.defs.items() if n in self.params.values()))
        return name_statements(name_iterators(prog))


# {{{ delinearisation

def _digits(it: str, extent: int, e: Expr) -> list[tuple[str, int, int]] | None:
    """Split ``it`` into digits if it only occurs as ``it // c`` or ``it % c`` (``it`` alone)."""
    radices: set[int] = set()
    plain = False

    def scan(x: Expr, under_divmod: bool) -> None:
        nonlocal plain
        if isinstance(x, Iter) and x.name == it and not under_divmod:
            plain = True
            return
        if isinstance(x, Call) and x.op in ("floordiv", "mod") and x.args[0] == Iter(it):
            c = int(x.args[1].value)  # type: ignore[union-attr]
            radices.add(c)
            return
        for c in E.children(x):
            scan(c, False)

    scan(e, False)
    if plain or not radices:
        return None
    chain = sorted(r for r in radices if 1 < r < extent)
    if not chain or any(extent % r for r in chain) or any(b % a for a, b in zip(chain, chain[1:])):
        return None
    bounds = [1] + chain + [extent]
    digits = []
    for k in range(len(bounds) - 1, 0, -1):  # most significant first
        digits.append((f"{it}d{k - 1}", bounds[k] // bounds[k - 1], bounds[k - 1]))
    return digits


def _divmod_of(x: Expr, its: set[str]) -> bool:
    return isinstance(x, Call) and x.op in ("floordiv", "mod") and bool(E.free_iters(x) & its)


def _join_digits(digits: list[tuple[str, int, int]]) -> Expr:
    out: Expr = E.index(0)
    for name, _, radix in digits:
        out = E.add(out, E.mul(E.index(radix), Iter(name)))
    return out

# }}}


# {{{ naming

class _Classes:
    """Union-find over (tensor, dim) and (statement, iterator), refusing any union that would put
    two iterators of one statement in one class."""

    def __init__(self) -> None:
        self.parent: dict[object, object] = {}
        self.members: dict[object, set[tuple[str, str]]] = {}

    def find(self, x: object) -> object:
        self.parent.setdefault(x, x)
        if x not in self.members:
            self.members[x] = {x[1:]} if x[0] == "it" else set()  # type: ignore[index]
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: object, b: object) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ma, mb = self.members[ra], self.members[rb]
        stmts_a = {s: it for s, it in ma}
        if any(s in stmts_a and stmts_a[s] != it for s, it in mb):
            return  # would merge two loops of one statement
        self.parent[rb] = ra
        self.members[ra] = ma | mb


def name_iterators(prog: Program) -> Program:
    """Give iterators that index the same tensor dimension the same name (``i0``, ``i1``, ...).

    Values flowing between statements are unified first; reads of one input unify only where
    they do not merge two loops of one statement (``q @ q.T`` reads q's rows with two loops).
    """
    uf = _Classes()
    stmts = list(walk_stmts(prog.body))
    written = {s.target.tensor for s, _, _ in stmts}
    for computed in (True, False):
        for stmt, loops, _ in stmts:
            for load in [stmt.target] + E.loads(stmt.expr):
                if (load.tensor in written) != computed:
                    continue
                for k, x in enumerate(load.indices):
                    if isinstance(x, Iter):
                        uf.union(("dim", load.tensor, k), ("it", stmt.name, x.name))
    names: dict[object, str] = {}
    renames: dict[str, dict[str, str]] = {}
    for stmt, loops, _ in stmts:
        used: set[str] = set()
        renames[stmt.name] = {}
        for l in loops:
            root = uf.find(("it", stmt.name, l.iterator))
            name = names.setdefault(root, f"i{len(names)}")
            if name in used:
                name = names.setdefault(("fresh", stmt.name, l.iterator), f"i{len(names)}")
            used.add(name)
            renames[stmt.name][l.iterator] = name

    def rename(node: Node, stmt_name_of: Callable[[Node], str]) -> Node:
        if isinstance(node, Stmt):
            m = {k: Iter(v) for k, v in renames[node.name].items()}
            return replace(node, target=E.substitute(node.target, m), expr=E.substitute(node.expr, m))
        sname = stmt_name_of(node)
        body = tuple(rename(c, stmt_name_of) for c in node.body)
        if isinstance(node, Loop):
            return replace(node, iterator=renames[sname][node.iterator], body=body)
        return replace(node, body=body)

    def first_stmt(node: Node) -> str:
        return next(walk_stmts((node,)))[0].name

    return prog.replace(body=tuple(rename(n, first_stmt) for n in prog.body))


def name_statements(prog: Program) -> Program:
    """Statements are named ``S0``, ``S1``, ... in program order."""
    counter = iter(range(1 << 30))

    def rename(node: Node) -> Node:
        if isinstance(node, Stmt):
            return replace(node, name=f"S{next(counter)}")
        return replace(node, body=tuple(rename(c) for c in node.body))

    return prog.replace(body=tuple(rename(n) for n in prog.body))

# }}}


def broadcast_index(its: Sequence[Expr], out_shape: Sequence[int], shape: Sequence[int]) -> list[Expr]:
    """Index into an operand of ``shape`` broadcast to ``out_shape`` (dimensions aligned right)."""
    off = len(out_shape) - len(shape)
    return [E.index(0) if s == 1 and out_shape[a + off] != 1 else its[a + off] for a, s in enumerate(shape)]


def literal(value: float | int | bool, dtype: str) -> Const:
    if dtypes.is_int(dtype) and isinstance(value, float):
        raise ValueError(f"a real literal {value} in an integer computation")
    return E.const(value, dtype)
