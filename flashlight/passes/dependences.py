"""Dependence analysis with isl, and the legality test of a new schedule.

* :func:`memory_dependences`: every pair of accesses to one element, one of them a write,
  ordered by the program's schedule (RAW ∪ WAR ∪ WAW). A schedule that keeps all of them in
  order computes the same values.
* :func:`flow_dependences`: isl's exact value-based flow (the last writer of each read). It is
  what explains a refusal: ``S9[.., i3 = 4] -> S12[.., i3 = 0]`` says that every step of the sum
  needs the *last* step of the max.
* :func:`violations`: the dependences a candidate schedule runs backwards or at once;
  empty means legal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import islpy as isl

from flashlight.ir.isl_build import group_pairs_apart
from flashlight.ir.nodes import Node, walk_loops, walk_stmts
from flashlight.ir.poly import PolyView


@dataclass(frozen=True)
class Dependences:
    raw: isl.UnionMap
    war: isl.UnionMap
    waw: isl.UnionMap

    @property
    def all(self) -> isl.UnionMap:
        return self.raw.union(self.war).union(self.waw).coalesce()


def memory_dependences(view: PolyView, schedule: isl.UnionMap | None = None,
                       before: isl.UnionMap | None = None) -> Dependences:
    if before is None:
        sched = view.schedule if schedule is None else schedule
        before = sched.lex_lt_union_map(sched)
    w, r = view.writes, view.reads
    raw = w.apply_range(r.reverse()).intersect(before)
    war = r.apply_range(w.reverse()).intersect(before)
    waw = w.apply_range(w.reverse()).intersect(before)
    return Dependences(raw.coalesce(), war.coalesce(), waw.coalesce())


def flow_dependences(view: PolyView, schedule: isl.UnionMap | None = None) -> isl.UnionMap:
    """Value-based read-after-write dependences (exact last writer)."""
    sched = view.schedule if schedule is None else schedule
    flow = (isl.UnionAccessInfo.from_sink(view.reads)
            .set_must_source(view.writes)
            .set_schedule_map(sched)
            .compute_flow())
    return flow.get_may_dependence().coalesce()


def violations(deps: isl.UnionMap, schedule: isl.UnionMap) -> isl.UnionMap:
    """Dependences that ``schedule`` runs backwards or simultaneously."""
    return deps.intersect(schedule.lex_ge_union_map(schedule)).coalesce()


def parallel_violations(deps: isl.UnionMap, schedule: isl.UnionMap, group: int, dims: int) -> isl.UnionMap:
    """Dependences inside schedule group ``group`` between instances whose first ``dims``
    coordinates after the group index differ: those forbid running them on separate programs."""
    if dims == 0:
        return isl.UnionMap("{ }")
    rel = deps.apply_domain(schedule).apply_range(schedule)
    out = isl.UnionMap("{ }")
    for m in _maps(rel):
        hit = m.intersect(group_pairs_apart(m.dim(isl.dim_type.in_), group, dims))
        if not hit.is_empty():
            out = out.union(isl.UnionMap.from_map(hit))
    return out


def _maps(u: isl.UnionMap) -> list[isl.Map]:
    out: list[isl.Map] = []
    u.foreach_map(out.append)
    return out


def witness(u: isl.UnionMap) -> str | None:
    """One concrete pair of a non-empty relation, as ``S9[0, 0, 1, 1] -> S12[0, 0, 1, 0]``."""
    if u.is_empty():
        return None
    m = sorted(_maps(u), key=lambda m: str(m))[0]
    text = str(m.wrap().sample_point())  # "{ [S9[0, 0, 6, 4] -> S12[0, 0, 6, 0]] }"
    return re.sub(r"^\{\s*\[|\]\s*\}$", "", text)


def show(u: isl.UnionMap) -> str:
    return str(u.coalesce())


# {{{ dependences by tensor, and the ones associativity licenses

def deps_by_tensor(view: PolyView, stmts: set[str] | None = None) -> dict[str, isl.UnionMap]:
    """Memory dependences split by the tensor they go through (among ``stmts`` if given)."""
    if stmts is not None:
        view = PolyView({k: v for k, v in view.stmts.items() if k in stmts})
    sched = view.schedule
    before = sched.lex_lt_union_map(sched)
    out: dict[str, isl.UnionMap] = {}
    tensors: set[str] = set()
    for part in (view.writes, view.reads):
        part.foreach_map(lambda m: tensors.add(m.get_tuple_name(isl.dim_type.out)))
    for t in sorted(tensors):
        out[t] = memory_dependences(_Restricted(view, t), before=before).all
    return out


class _Restricted:
    def __init__(self, view: PolyView, tensor: str) -> None:
        self.view, self.tensor = view, tensor

    def _only(self, u: isl.UnionMap) -> isl.UnionMap:
        out = isl.UnionMap("{ }")
        maps: list[isl.Map] = []
        u.foreach_map(maps.append)
        for m in maps:
            if m.get_tuple_name(isl.dim_type.out) == self.tensor:
                out = out.union(isl.UnionMap.from_map(m))
        return out

    @property
    def writes(self) -> isl.UnionMap:
        return self._only(self.view.writes)

    @property
    def reads(self) -> isl.UnionMap:
        return self._only(self.view.reads)

    @property
    def schedule(self) -> isl.UnionMap:
        return self.view.schedule


def state_tensors(nest: Node) -> set[str]:
    """The online state the serial loops of a kernel declare: running reductions, the copies
    holding their previous values, and the accumulators rescaled by them."""
    out: set[str] = set()
    for loop in walk_loops((nest,)):
        if loop.state is not None:
            out |= loop.state.tensors
    return out


def without_self_reductions(nest: Node, t: str, d: isl.UnionMap) -> isl.UnionMap:
    """``d`` without a reduction statement's dependences on itself through its own target."""
    reducers = {s.name for s, _, _ in walk_stmts((nest,)) if s.is_reduction and s.target.tensor == t}
    out = isl.UnionMap("{ }")
    maps: list[isl.Map] = []
    d.foreach_map(maps.append)
    for m in maps:
        src, dst = m.get_tuple_name(isl.dim_type.in_), m.get_tuple_name(isl.dim_type.out)
        if not (src == dst and src in reducers):
            out = out.union(isl.UnionMap.from_map(m))
    return out

# }}}
