"""Building isl objects from named dimensions: every set, map and function the passes check.

The passes never write isl syntax: they name the dimensions (statement iterators, schedule
coordinates, tile indices, parameters) and call a builder here, which makes the object with
islpy's API: a set from comparisons of :class:`islpy.PwAff` (``a.le_set(b)``), a map from a
:class:`islpy.MultiAff` of its terms. Those are the objects isl's parser makes of the same text,
down to their internal form, which matters: the relations a proof prints are simplified from
them (``tests/test_isl_build.py`` checks each builder against its text). Every name goes
through :func:`isl_name`, so an iterator called ``mod`` stays an iterator.

A term of a map's range (:data:`Term`) is an integer (a constant coordinate, as the 2d+1
schedule's positions), an iterator's name, :class:`TileOf` (the index ``floor(i / T)`` of the
tile that holds ``i``) or any quasi-affine IR expression of the iterators (``-i``).

IR expressions become isl objects through :func:`expr_aff` (a quasi-affine integer expression)
and :func:`expr_set` (a boolean combination of affine comparisons); both give None for anything
else, which the callers over-approximate.

.. autofunction:: isl_name
.. autoclass:: TileOf
.. autofunction:: set_space
.. autofunction:: universe
.. autofunction:: empty
.. autofunction:: box
.. autofunction:: param_box
.. autofunction:: constant
.. autofunction:: affine_map
.. autofunction:: schedule_map
.. autofunction:: tile_map
.. autofunction:: tiles_differ
.. autofunction:: group_pairs_apart
.. autofunction:: expr_aff
.. autofunction:: expr_set
.. autofunction:: free_vars
.. autofunction:: is_quasi_affine
.. autofunction:: is_affine_condition
.. autofunction:: statement_domain
.. autofunction:: access_map
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Union

import islpy as isl

from flashlight.ir.expr import Call, Const, Expr, affine_form, free_iters

# Words the isl parser reserves; a tensor or iterator with such a name gets a trailing underscore.
_ISL_KEYWORDS = frozenset({
    "and", "or", "not", "mod", "floor", "ceil", "min", "max", "exists", "true", "false",
    "infty", "NaN", "rat", "implies", "xor", "cnd", "floord", "ceild",
})


def isl_name(name: str) -> str:
    """``name`` as isl spells it: a reserved word gets a trailing underscore."""
    return name + "_" if name in _ISL_KEYWORDS else name


@dataclass(frozen=True)
class TileOf:
    """The index ``floor(iterator / size)`` of the tile of ``size`` points that holds ``iterator``."""

    iterator: str
    size: int


Term = Union[int, str, TileOf, Expr]


# {{{ spaces and their variables

def set_space(name: str | None, dims: Sequence[str], params: Sequence[str] = ()) -> isl.Space:
    """The space ``[params] -> { name[dims] }`` (``name`` None: an anonymous tuple)."""
    space = isl.Space.create_from_names(isl.DEFAULT_CONTEXT, set=[isl_name(d) for d in dims],
                                        params=[isl_name(p) for p in params])
    return space if name is None else space.set_tuple_name(isl.dim_type.set, isl_name(name))


def _map_space(src: isl.Space, dst: isl.Space) -> isl.Space:
    return isl.Space.map_from_domain_and_range(src, dst)


def _vars(space: isl.Space) -> dict:
    """Each dimension (and parameter) of a set space as a piecewise function on it, keyed by its
    isl name; key 0 is the zero function. Comparing two of them gives a set."""
    return isl.affs_from_space(space)


def _aff_vars(space: isl.Space) -> dict:
    """Each dimension of a set space as an (unpieced) affine function, keyed as :func:`_vars`:
    the terms of a :class:`islpy.MultiAff`, the map isl's parser makes of ``S[i] -> [i, 0]``."""
    ls = isl.LocalSpace.from_space(space)
    v: dict = {name: isl.Aff.var_on_domain(ls, kind, k)
               for kind in (isl.dim_type.param, isl.dim_type.set)
               for k, name in enumerate(space.get_var_names(kind))}
    v[0] = isl.Aff.zero_on_domain(ls)
    return v


def _multi_aff_map(src: isl.Space, terms: Sequence[isl.Aff]) -> isl.Map:
    """``{ src -> [terms] }``."""
    # an anonymous tuple of len(terms) dimensions over src's size parameters
    dst = (src.drop_dims(isl.dim_type.set, 0, src.dim(isl.dim_type.set)).reset_tuple_id(isl.dim_type.set)
           .add_dims(isl.dim_type.set, len(terms)))
    affs = isl.AffList.alloc(isl.DEFAULT_CONTEXT, len(terms))
    for t in terms:
        affs = affs.add(t)
    return isl.Map.from_multi_aff(isl.MultiAff.from_aff_list(_map_space(src, dst), affs))


def _param_space(params: Sequence[str]) -> isl.Space:
    return isl.Space.create_from_names(isl.DEFAULT_CONTEXT, set=[], params=[isl_name(p) for p in params])


def _term(v: dict, term: Term):
    """``term`` as a function of the variables ``v`` (of :func:`_vars` or :func:`_aff_vars`)."""
    if isinstance(term, TileOf):
        return v[isl_name(term.iterator)].scale_down_val(term.size).floor()
    if isinstance(term, str):
        return v[isl_name(term)]
    if isinstance(term, Expr):
        out = expr_aff(term, v)
        if out is None:
            raise ValueError(f"{term} is not quasi-affine")
        return out
    return v[0] + term


def _all(sets: Sequence[isl.Set], space: isl.Space) -> isl.Set:
    return reduce(lambda a, b: a & b, sets, isl.Set.universe(space))


# }}}


# {{{ sets and functions

def universe(name: str | None, dims: Sequence[str], params: Sequence[str] = ()) -> isl.Set:
    """Every point of ``[params] -> { name[dims] }``."""
    return isl.Set.universe(set_space(name, dims, params))


def empty(name: str | None, dims: Sequence[str], params: Sequence[str] = ()) -> isl.Set:
    """No point of ``[params] -> { name[dims] }``."""
    return isl.Set.empty(set_space(name, dims, params))


def _sizes(extents: Sequence[int | str]) -> list[str]:
    return list(dict.fromkeys(e for e in extents if isinstance(e, str)))


def _below_extent(v: dict, x: str, extent: int | str, per: int = 1):
    """``0 <= x`` and ``per * x < extent``, an extent being a size or a size parameter."""
    bound = v[0] + extent if isinstance(extent, int) else v[isl_name(extent)]
    return v[0].le_set(v[isl_name(x)]) & (v[isl_name(x)] * per).lt_set(bound)


def box(dims: Sequence[str], extents: Sequence[int | str], name: str | None = None) -> isl.Set:
    """``[sizes] -> { name[dims] : 0 <= dims[k] < extents[k] }`` (the size parameters among the
    extents are the set's parameters)."""
    space = set_space(name, dims, _sizes(extents))
    v = _vars(space)
    return _all([_below_extent(v, d, e) for d, e in zip(dims, extents)], space)


def param_box(params: Sequence[str], extents: Sequence[int | str], per: Sequence[int] | None = None) -> isl.Set:
    """``[params, sizes] -> { : 0 <= params[k] and per[k] * params[k] < extents[k] }``: a context
    of parameters (with ``per``, the indices of tiles of ``per[k]`` points over an extent)."""
    space = _param_space([*params, *_sizes(extents)])
    v = _vars(space)
    per = per or [1] * len(params)
    return _all([_below_extent(v, p, e, t) for p, e, t in zip(params, extents, per)], space).params()


def constant(params: Sequence[str], value: int) -> isl.PwAff:
    """``[params] -> { [(value)] }``: a function of the parameters that is ``value`` everywhere."""
    return isl.PwAff.from_aff(isl.Aff.val_on_domain_space(_param_space(params).params(),
                                                          isl.Val(value, isl.DEFAULT_CONTEXT)))

# }}}


# {{{ maps

def affine_map(name: str | None, dims: Sequence[str], terms: Sequence[Term]) -> isl.Map:
    """``{ name[dims] -> [terms] }``: each point to the tuple of its terms."""
    src = set_space(name, dims)
    v = _aff_vars(src)
    return _multi_aff_map(src, [_term(v, t) for t in terms])


def schedule_map(name: str, dims: Sequence[str], terms: Sequence[Term], domain: isl.Set) -> isl.Map:
    """A statement's schedule: ``{ name[dims] -> [terms] }`` on its ``domain`` (the 2d+1 form,
    a fused or a tiled one, by the terms given: positions, iterators, tile indices)."""
    return affine_map(name, dims, terms).intersect_domain(domain)


def tile_map(dims: Sequence[str], sizes: Sequence[int], params: Sequence[str], outs: Sequence[str]) -> isl.Map:
    """A point to its tile: ``[params] -> { [dims] -> [outs] : T_k t_k <= dims[k] < T_k t_k + T_k }``
    with ``T = sizes``, where the tile index ``t`` of the first dimensions is a parameter
    (``params``, in order) and that of the rest an output dimension (``outs``)."""
    assert len(params) + len(outs) == len(dims) == len(sizes)
    src, dst = set_space(None, dims, params), set_space(None, outs, params)
    space = _map_space(src, dst)
    v = _vars(space.wrap())
    index = [isl_name(t) for t in (*params, *outs)]
    parts = [(v[t] * T).le_set(v[isl_name(d)]) & v[isl_name(d)].lt_set(v[t] * T + T)
             for d, T, t in zip(dims, sizes, index)]
    return _all(parts, space.wrap()).unwrap()


def _pairs(src: str | None, src_rank: int, dst: str | None, dst_rank: int) -> isl.Space:
    """The wrapped space ``{ [src[a0, ...] -> dst[b0, ...]] }``."""
    return _map_space(set_space(src, [f"a{k}" for k in range(src_rank)]),
                      set_space(dst, [f"b{k}" for k in range(dst_rank)])).wrap()


def tiles_differ(src: str, src_rank: int, a: int, dst: str, dst_rank: int, b: int, size: int) -> isl.Map:
    """``{ src[a..] -> dst[b..] : floor(a_a / size) != floor(b_b / size) }``: pairs of instances
    whose dimensions ``a`` and ``b`` lie in different tiles of ``size``."""
    space = _pairs(src, src_rank, dst, dst_rank)
    v = _vars(space)
    return _term(v, TileOf(f"a{a}", size)).ne_set(_term(v, TileOf(f"b{b}", size))).unwrap()


def group_pairs_apart(rank: int, group: int, dims: int) -> isl.Map:
    """``{ [a..] -> [b..] : a0 = b0 = group and (a_k != b_k for some 1 <= k <= dims) }`` on
    schedule coordinates of ``rank`` dimensions: pairs of instances of schedule group ``group``
    whose next ``dims`` coordinates differ."""
    space = _pairs(None, rank, None, rank)
    v = _vars(space)
    apart = reduce(lambda x, y: x | y, [v[f"a{k}"].ne_set(v[f"b{k}"]) for k in range(1, dims + 1)])
    return (v["a0"].eq_set(v[0] + group) & v["b0"].eq_set(v[0] + group) & apart).unwrap()

# }}}


# {{{ IR expressions

def expr_aff(e: Expr, v: dict):
    """``e``, a quasi-affine integer expression of the variables ``v`` (a space's dimensions by
    isl name, and 0: :class:`islpy.PwAff` from :func:`free_vars` or :func:`islpy.affs_from_space`,
    or :class:`islpy.Aff`), as a function of the same kind; None if it is not one."""
    form = affine_form(e)
    if form is not None:
        coeffs, c = form
        return reduce(lambda acc, kv: acc + v[isl_name(kv[0])] * kv[1], coeffs.items(), v[0]) + c
    if not isinstance(e, Call):
        return None
    if e.op in ("floordiv", "mod") and isinstance(e.args[1], Const):
        inner = expr_aff(e.args[0], v)
        if inner is None:
            return None
        d = int(e.args[1].value)
        return inner.scale_down_val(d).floor() if e.op == "floordiv" else inner.mod_val(d)
    if e.op in ("add", "sub"):
        a, b = expr_aff(e.args[0], v), expr_aff(e.args[1], v)
        if a is None or b is None:
            return None
        return a + b if e.op == "add" else a - b
    if e.op == "mul":
        for x, y in (e.args, e.args[::-1]):
            if isinstance(x, Const) and x.dtype == "i64":
                inner = expr_aff(y, v)
                return None if inner is None else inner * int(x.value)
    if e.op == "neg":
        inner = expr_aff(e.args[0], v)
        return None if inner is None else inner.neg()
    return None


_COMPARE = {"lt": "lt_set", "le": "le_set", "gt": "gt_set", "ge": "ge_set", "eq": "eq_set"}
_NEGATED = {"lt": "ge", "le": "gt", "gt": "le", "ge": "lt", "eq": "ne", "ne": "eq"}


def expr_set(e: Expr, v: dict, negate: bool = False) -> isl.Set | None:
    """The points of ``v``'s space where ``e`` (a boolean combination of affine comparisons) holds,
    or with ``negate`` where it does not; None if ``e`` is not such a combination."""
    space = v[0].get_domain_space()
    if isinstance(e, Const) and e.dtype == "b1":
        return isl.Set.universe(space) if bool(e.value) != negate else isl.Set.empty(space)
    if not isinstance(e, Call):
        return None
    if e.op == "not":
        return expr_set(e.args[0], v, not negate)
    if e.op in ("and", "or"):
        a, b = expr_set(e.args[0], v, negate), expr_set(e.args[1], v, negate)
        if a is None or b is None:
            return None
        return a & b if (e.op == "and") != negate else a | b
    if e.op in _NEGATED:
        op = _NEGATED[e.op] if negate else e.op
        a, b = expr_aff(e.args[0], v), expr_aff(e.args[1], v)
        if a is None or b is None:
            return None
        if op == "ne":
            return a.lt_set(b) | a.gt_set(b)
        return getattr(a, _COMPARE[op])(b)
    return None


def free_vars(e: Expr) -> dict:
    """The variables of the space of ``e``'s iterators (sorted), for :func:`expr_aff`/:func:`expr_set`."""
    return _vars(set_space(None, sorted(free_iters(e))))


def is_quasi_affine(e: Expr) -> bool:
    """Whether ``e`` is a quasi-affine integer expression of iterators (an exact isl function)."""
    return expr_aff(e, free_vars(e)) is not None


def is_affine_condition(e: Expr) -> bool:
    """Whether ``e`` is a boolean combination of affine comparisons (an exact isl set)."""
    return expr_set(e, free_vars(e)) is not None


def statement_domain(name: str, bounds: Sequence[tuple[str, Expr, Expr]],
                     guards: Sequence[Expr], params: Sequence[str] = ()) -> tuple[isl.Set, bool]:
    """``[params] -> { name[iterators] : lower <= iterator < upper and guards }`` for ``bounds``
    of ``(iterator, lower, upper)``, outermost first, and whether it is exact: a guard that is not
    affine is left out (the domain over-approximates). Bounds must be quasi-affine in the
    enclosing iterators and the size parameters ``params``."""
    space = set_space(name, [it for it, _, _ in bounds], params)
    v = _vars(space)
    parts = []
    for it, lower, upper in bounds:
        lo, hi = expr_aff(lower, v), expr_aff(upper, v)
        if lo is None or hi is None:
            raise ValueError(f"loop {it} of {name} has non-affine bounds")
        parts.append(lo.le_set(v[isl_name(it)]) & v[isl_name(it)].lt_set(hi))
    conds = [expr_set(g, v) for g in guards]
    return _all(parts + [c for c in conds if c is not None], space), all(c is not None for c in conds)


def access_map(domain: isl.Set, tensor: str, indices: Sequence[Expr],
               shape: Sequence[int | str]) -> tuple[isl.Map, bool]:
    """``{ S[iterators] -> tensor[indices] }`` on ``domain`` (whose space is ``S[iterators]``),
    and whether it is exact: an index that is not quasi-affine ranges over the whole dimension
    ``o<k>`` of the tensor."""
    src = domain.get_space()
    v = _aff_vars(src)
    affs = [expr_aff(idx, v) for idx in indices]
    out = _multi_aff_map(src, [a for a in affs if a is not None])
    for k, a in enumerate(affs):
        if a is None:  # a gather: the dimension ranges over the tensor
            out = (out.insert_dims(isl.dim_type.out, k, 1).set_dim_name(isl.dim_type.out, k, f"o{k}")
                   .lower_bound_val(isl.dim_type.out, k, 0))
            out = _below(out, k, shape[k])
    exact = all(a is not None for a in affs)
    return out.set_tuple_name(isl.dim_type.out, isl_name(tensor)).intersect_domain(domain), exact

def _below(m: isl.Map, k: int, extent: int | str) -> isl.Map:
    """``m`` with output dimension ``k`` below ``extent``, a size or a size parameter."""
    if isinstance(extent, int):
        return m.upper_bound_val(isl.dim_type.out, k, extent - 1)
    v = isl.affs_from_space(m.get_space().range())
    return m.intersect_range(v[m.get_dim_name(isl.dim_type.out, k)].lt_set(v[isl_name(extent)]))

# }}}
