"""Split wide state: a kernel whose running vectors per row exceed ``state_limit`` becomes two.

A kernel keeps its running vectors per row (the accumulators of ``P @ V``, one per softmax
chain) in registers: an H100 thread holds at most 255 of them, and a program of 64 rows on 4
warps spends ``W/2`` on ``W`` columns a row. When the reductions over a kernel's serial loops
that keep a vector a row add up to more than ``state_limit`` columns, the kernel is split in two
if a *slice* of its statements can run first as a kernel of its own: one wide accumulator, the
statements it reads, whoever reads a tile of the slice's serial loop (tiles never leave a
kernel), and whoever reads only the slice's results, to a fixed point. The rest runs second and
reads the slice's final per-row values from memory (contract-buffers leaves what crosses as a
buffer): O(rows x columns). Differential attention at head dim 128 keeps two accumulators of
256 columns: fused in one kernel 4.68 ms on the H100, best of 24 tile configurations 4.84, where
two FlexAttention calls take 3.3; split, 3.4-3.5 (benchmarks/RESULTS.md, run 14).

Each part keeps the loops, guards, mappings and order of the fused kernel around its own
statements, and each serial loop keeps the part of its declared online state that the part's
statements write.

Legality: splitting reorders statement instances (every instance of the slice before every
instance of the rest) and changes nothing they compute. isl computes the memory dependences
(RAW, WAR, WAW) of the fused kernel under its schedule and checks that the schedule of the two
kernels runs none of them backwards (``deps ∩ lex_ge(split) = ∅``). A statement of the rest that
read a running value of the slice inside the loop would see the final value instead: the
anti-dependence from its read to the slice's next update runs backwards, so isl refuses that
split. A refusal records isl's witness; the kernel then stays whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

from flashlight.ir import expr as E
from flashlight.ir.nodes import Loop, Node, OnlineState, Program, Proof, Stmt, walk_stmts
from flashlight.ir.poly import PolyView
from flashlight.passes.declare import Pass, option
from flashlight.passes.dependences import memory_dependences, violations, witness
from flashlight.passes.tree import is_nan_fixup, map_stmts

# Running vectors a row one kernel may keep (fp32 accumulators summed over its statements); see
# the module docstring for the H100 measurement behind it.
STATE_LIMIT = 256


def split_wide_state(program: Program, state_limit: int = STATE_LIMIT) -> Program:
    """Split every kernel whose running state per row exceeds ``state_limit``, as often as isl allows."""
    if state_limit < 1:
        raise ValueError(f"split-wide-state: state_limit must be at least 1, got {state_limit}")
    body: list[Node] = []
    proofs: list[Proof] = []
    todo = list(program.body)
    while todo:
        nest = todo.pop(0)
        parts, proof = _split_nest(program, nest, state_limit)
        proofs += [proof] if proof is not None else []
        if parts is None:
            body.append(nest)
        else:
            todo[:0] = parts  # a part may still be too wide
    if not proofs:
        return program
    return program.replace(body=tuple(body)).with_proofs(*proofs)


def _split_nest(program: Program, nest: Node, state_limit: int) -> tuple[list[Node] | None, Proof | None]:
    entries = list(walk_stmts((nest,)))
    wide = _wide_state(entries)
    if sum(wide.values()) <= state_limit:
        return None, None
    stmts = [s for s, _, _ in entries]
    serial = {s.name: {l.iterator for l in loops if l.mapping == "serial"} for s, loops, _ in entries}
    previous = {t for _, loops, _ in entries for l in loops if l.state for t in l.state.previous}
    # copies of running values and empty-row fixups follow the statement they serve: not listed
    listed = [s.name for s in stmts if not (s.target.tensor in previous or is_nan_fixup(s))]
    deps = memory_dependences(PolyView.of(program.replace(body=(nest,)))).all  # of the fused kernel
    refusals: list[Proof] = []
    for w in wide:
        need = _slice(w, stmts, serial)
        rest = [s for s in stmts if s.name not in need]
        if not rest or all(x in need for x in wide):  # the first part would be as wide as the whole
            continue
        first = map_stmts((nest,), lambda s: s if s.name in need else None)
        second = map_stmts((nest,), lambda s: None if s.name in need else s)
        split = PolyView.of(program.replace(body=_with_own_state(first + second)))
        bad = violations(deps, split.schedule)
        head = [n for n in listed if n in need]
        tail = [n for n in listed if n not in need]
        if not bad.is_empty():
            refusals.append(Proof(
                f"split [{', '.join(listed)}] before {tail[0] if tail else rest[0].name}", False,
                f"running the slice of {w} first would run a dependence backwards", relation=str(bad),
                witness=witness(bad)))
            continue
        written = {s.target.tensor for s in stmts if s.name in need}
        crossing = sorted({ld.tensor for s in rest for ld in _loads(s) if ld.tensor in written})
        proof = Proof(
            f"split [{', '.join(listed)}] into [{', '.join(head)}] and [{', '.join(tail)}]", True,
            f"one kernel would hold {sum(wide.values())} running values a row "
            f"({', '.join(f'{s}: {n}' for s, n in wide.items())}; limit {state_limit}); the reordered nests "
            f"run no dependence backwards, and the second kernel reads {', '.join(crossing) or 'nothing'} "
            "of the first from memory", relation="∅")
        return list(_with_own_state(first + second)), proof
    return None, refusals[0] if refusals else Proof(
        f"split [{', '.join(listed)}]", False,
        f"{sum(wide.values())} running values a row exceed the limit {state_limit}, but every slice "
        "of one accumulator takes the whole kernel")


def _wide_state(entries: list) -> dict[str, int]:
    """Per reduction over a serial loop that keeps a vector a row (an attention accumulator), the
    length of that vector: the extents of its block loops that index its target."""
    out = {}
    for s, loops, _ in entries:
        serial = {l.iterator for l in loops if l.mapping == "serial"}
        target = {i for x in s.target.indices for i in E.free_iters(x)}
        if not serial or not s.is_reduction or target & serial:
            continue
        cols = math.prod(int(l.upper.value) - int(l.lower.value)  # type: ignore[union-attr]
                         for l in loops if l.mapping == "block" and l.iterator in target)
        if cols > 1:
            out[s.name] = cols
    return out


def _slice(w: str, stmts: list[Stmt], serial: dict[str, set[str]]) -> set[str]:
    """``w``, what it reads, whoever reads a tile of the slice (its result is indexed by a serial
    iterator), and whoever reads the slice's results and nothing of the rest, to a fixed point."""
    by_name = {s.name: s for s in stmts}
    writers: dict[str, set[str]] = {}
    for s in stmts:
        writers.setdefault(s.target.tensor, set()).add(s.name)

    def reads(s: Stmt) -> set[str]:
        return {n for ld in _loads(s) for n in writers.get(ld.tensor, ()) if n != s.name}

    def tiled(s: Stmt) -> bool:
        return bool(serial[s.name] & {i for x in s.target.indices for i in E.free_iters(x)})

    need: set[str] = set()
    todo = [w]
    while todo:
        n = todo.pop()
        if n not in need:
            need.add(n)
            s = by_name[n]
            todo += reads(s) | (writers[s.target.tensor] - {n})
            if tiled(s):
                todo += [x.name for x in stmts if n in reads(x)]
        if not todo:
            todo = [x.name for x in stmts if x.name not in need and reads(x) and reads(x) <= need]
    return need


def _loads(s: Stmt) -> list[E.Load]:
    exprs = [s.expr, *s.target.indices] + ([s.scale] if s.scale is not None else [])
    return [ld for e in exprs for ld in E.loads(e)]


def _with_own_state(body: tuple[Node, ...]) -> tuple[Node, ...]:
    """Each serial loop's declared online state restricted to what its own statements write."""
    out = []
    for node in body:
        if isinstance(node, Stmt):
            out.append(node)
            continue
        inner = _with_own_state(node.body)
        if isinstance(node, Loop) and node.state is not None:
            written = {s.target.tensor for s, _, _ in walk_stmts(inner)}
            st = node.state
            state = OnlineState(*(tuple(t for t in ts if t in written) for ts in (st.running, st.previous, st.rescaled)))
            node = replace(node, state=state if state.tensors else None)
        out.append(replace(node, body=inner))
    return tuple(out)


@dataclass(frozen=True)
class SplitWideState(Pass):
    """Split wide state: a kernel whose running vectors per row exceed ``state_limit`` becomes two."""

    name: ClassVar[str] = "split-wide-state"
    state_limit: int = option(STATE_LIMIT, "most columns of running vectors (accumulators) a row that one kernel "
                                           "keeps in registers; a kernel that needs more is split in two where "
                                           "isl allows")

    def apply(self, program: Program) -> Program:
        return split_wide_state(program, state_limit=self.state_limit)
