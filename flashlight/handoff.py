"""Which compiler compiles a program segment: flashlight, or Inductor (``torch._inductor``).

By default, on the GPU, a program none of whose kernels computes a matrix product and reduces it
again (a norm, a softmax, a loss over stored logits, an MLP) is Inductor's (:func:`kept_product`):
our fusions gain nothing there, and Inductor's kernels ran 1.8-2.7x faster (benchmarks/RESULTS.md,
run 21). With ``inductor=True`` a finer model of the lifted program decides
(:func:`kept_in_registers`), after the lift cuts each program into the paths it would fuse
(:func:`fused_region`) and the rest; it misses an attention backward's recomputed products
(docs/design.md 10.4), so it stays opt-in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from flashlight.ir.expr import loads
from flashlight.ir.nodes import Program, Stmt, walk_stmts
from flashlight.ir.products import is_contraction


def kept_in_registers(lifted: Program, final: Program | None) -> str | None:
    """Why the final program beats a compiler that stores every contraction's operands and result:
    the first tensor of :func:`fused_region` that is a contraction's result reduced again, or a
    contraction's computed operand, and that ``final`` does not store; None if there is none.
    With ``final`` None, the first such tensor any schedule might keep (None: the passes cannot
    gain, whatever they do)."""
    region = fused_region(lifted)
    stored = {t.name for t in final.tensors if t.storage == "global"} if final is not None else set()
    temps = {t.name for t in lifted.temps}
    kept = (region & temps) - stored
    for s in lifted.statements():
        if not is_contraction(s):
            continue
        for t in sorted(_read(s) & kept):
            return (f"the operand {t}{_shape(lifted, t)} of the contraction {s.target.tensor} is computed from a "
                    "reduction inside the kernel and never stored; Inductor would store it")
        if s.target.tensor in kept:
            return (f"the contraction {s.target.tensor}{_shape(lifted, s.target.tensor)} is reduced again inside "
                    "the kernel and never stored; Inductor would store it")
    return None


def fused_region(lifted: Program) -> set[str]:
    """The tensors of ``lifted`` whose kernels flashlight keeps (the rest may be Inductor's): each
    contraction reduced again (through elementwise steps) with those steps, the reductions, what
    follows them elementwise up to the contractions that read it (attention's ``P @ V``), and each
    contraction whose operand is computed from a reduction, with that chain; every member also
    brings the elementwise steps that compute its operands (a norm's squares)."""
    stmts = lifted.statements()
    writer = {s.target.tensor: s for s in stmts}
    readers: dict[str, list[Stmt]] = {}
    for s in stmts:
        for t in _read(s):
            readers.setdefault(t, []).append(s)
    region: set[str] = set()

    def forward(t: str, path: tuple[str, ...], to_contraction: bool) -> None:
        """Add the paths from ``t`` through elementwise steps to a reduction that is no contraction
        (or, ``to_contraction``, to a contraction), and what lies on them."""
        for r in readers.get(t, []):
            u = r.target.tensor
            if u in path:
                continue
            if not r.is_reduction:
                forward(u, path + (u,), to_contraction)
            elif is_contraction(r) == to_contraction:
                region.update(path + (u,))
                if not to_contraction:
                    forward(u, (u,), True)  # on to the contraction that reads what it normalises

    for s in stmts:
        if is_contraction(s):
            forward(s.target.tensor, (s.target.tensor,), False)
    for s in stmts:  # a reduction whose result reaches a contraction's operand
        if s.is_reduction and not is_contraction(s):
            forward(s.target.tensor, (s.target.tensor,), True)
    grown = True
    while grown:  # the elementwise steps that compute a member's operands come with it
        grown = False
        for t in list(region):
            w = writer.get(t)
            for u in _read(w) if w is not None else ():
                v = writer.get(u)
                if v is not None and u not in region and not v.is_reduction:
                    region.add(u)
                    grown = True
    return region


def _read(s: Stmt) -> set[str]:
    return {ld.tensor for ld in loads(s.expr)} | ({s.target.tensor} if s.scale is not None else set())


def _shape(p: Program, name: str) -> str:
    return "[" + ", ".join(map(str, p.tensor(name).shape)) + "]"


@dataclass(frozen=True)
class Decision:
    """Who compiles a program segment, and why."""

    program: str
    compiler: str  # "flashlight" or "Inductor"
    reason: str


def kept_product(final: Program) -> str | None:
    """Why flashlight's kernels beat Inductor's on this program (the one after the passes): a
    kernel that computes a matrix product and reduces it again (attention's scores, forward and
    backward, a split decode step, a loss's logits), where Inductor would write the product to
    memory and read it back; None if there is none (a norm, a softmax, a GEMM and its epilogue)."""
    for k, nest in enumerate(final.body):
        stmts = [st for st, _, _ in walk_stmts((nest,))]
        for c in stmts:
            if not (c.dot is not None or is_contraction(c)):
                continue
            t = c.target.tensor
            for r in stmts:
                if r is not c and r.is_reduction and t in _read(r):
                    return (f"kernel {k} computes the matrix product {t} and reduces it again ({r.target.tensor}); "
                            "Inductor would store it and read it back")
    return None


def decide(lifted: Program, final: Program | None, target: str, choice: bool | None) -> Decision:
    """Who compiles a segment, under the option ``inductor`` (``choice``). None (the default): ours
    where :func:`kept_product` finds a matrix product kept in registers and reduced again, else
    Inductor's on the GPU (measured: norms, softmax, losses over stored logits and a SwiGLU MLP ran
    1.8-2.7x faster under Inductor, RESULTS run 21). True: the register model of the lifted
    program (:func:`kept_in_registers`) on every device, after the lift cut programs by
    :func:`fused_region` (measured: it misjudges an attention backward, docs/design.md 10.4).
    False: ours."""
    if choice is False:
        return Decision(lifted.name, "flashlight", "inductor=False keeps it")
    if choice is None:
        kept = kept_product(final) if final is not None else None
        if kept is not None:
            return Decision(lifted.name, "flashlight", kept)
        plain = "no matrix product stays in registers to be reduced again: Inductor's kernels are as good or better"
        if target != "cuda":
            return Decision(lifted.name, "flashlight", f"{plain}; handed to Inductor on the GPU")
        return Decision(lifted.name, "Inductor", plain)
    gain = kept_in_registers(lifted, final)
    if gain is not None:
        return Decision(lifted.name, "flashlight", gain)
    return Decision(lifted.name, "Inductor",
                    "no contraction's result or operand stays in registers (Inductor's kernels move the same bytes)")


def subgraph(nodes: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node]) -> fx.GraphModule:
    """The graph nodes of a segment as a graph of their own (their traced values kept): its inputs
    placeholders, its outputs returned as a tuple."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for k, n in enumerate(inputs):
        env[n] = g.placeholder(f"in{k}")
        env[n].meta = dict(n.meta)
    for n in nodes:
        env[n] = g.node_copy(n, lambda a: env[a])
        if n.target in _ATEN_OF_PRIMS:
            env[n].target = _ATEN_OF_PRIMS[n.target]
    g.output(tuple(env[n] for n in outputs))
    return fx.GraphModule(torch.nn.Module(), g)


aten = torch.ops.aten


def _broadcast_in_dim(a: torch.Tensor, shape: Sequence[int], dims: Sequence[int]) -> torch.Tensor:
    kept = [1] * len(shape)  # a's dimensions where dims puts them (each of size 1 or shape's), 1 elsewhere
    for k, d in enumerate(dims):
        kept[d] = a.shape[k]
    return aten.expand.default(aten.reshape.default(a, kept), list(shape))


def _var(a: torch.Tensor, dims: Sequence[int], correction: float, *, output_dtype: Any = None) -> torch.Tensor:
    return aten.var.correction(a, list(dims), correction=correction)


def _sum(a: torch.Tensor, dims: Sequence[int], *, output_dtype: Any = None) -> torch.Tensor:
    return aten.sum.dim_IntList(a, list(dims), dtype=output_dtype)


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # prims.div truncates integers
    floating = a.is_floating_point() or (isinstance(b, torch.Tensor) and b.is_floating_point())
    return aten.div.Tensor(a, b) if floating else aten.div.Tensor_mode(a, b, rounding_mode="trunc")


# The prims that capture's decompositions leave (torch._refs: var_mean's keepdim, the reductions)
# as the aten operators Inductor lowers: it refuses to functionalize a view outside aten and lowers
# prims.var with another signature (run 22: a layer norm handed over was compiled by us instead)
_ATEN_OF_PRIMS: dict[object, Callable[..., Any]] = {
    torch.ops.prims.broadcast_in_dim.default: _broadcast_in_dim,
    torch.ops.prims.var.default: _var,
    torch.ops.prims.sum.default: _sum,
    torch.ops.prims.amax.default: lambda a, dims: aten.amax.default(a, list(dims)),
    torch.ops.prims.amin.default: lambda a, dims: aten.amin.default(a, list(dims)),
    torch.ops.prims.div.default: _div,
}


def can_hand_off() -> bool:
    """Inductor compiles a segment where it compiles a graph of its own: inside the capture that
    traced it (AOT autograd's compiler call), whose fake tensors the segment's values are."""
    from torch._guards import TracingContext

    return TracingContext.try_get() is not None


@dataclass
class InductorSegment:
    """A program segment compiled by Inductor (``torch._inductor.compile`` on the segment's nodes
    and the capture's fake inputs: Inductor decomposes the graph its own way, as it does Dynamo's)."""

    program: Program = field(repr=False)  # the lifted program (for reports)
    run: Callable[[list], Any] = field(repr=False)

    @classmethod
    def of(cls, program: Program, nodes: list[fx.Node], inputs: list[fx.Node],
           outputs: list[fx.Node]) -> InductorSegment:
        from torch._guards import TracingContext
        from torch._inductor import compile as inductor_compile  # called as the graph is

        gm = subgraph(nodes, inputs, outputs)
        # Inductor reports its outputs' strides to the capture, as the strides of the whole
        # graph's outputs: a segment's are not, and AOT's backward compile indexed past them
        with TracingContext.report_output_strides():
            return cls(program, inductor_compile(gm, [n.meta["val"] for n in inputs]))

    @property
    def launches(self) -> list:
        return []  # no kernel of flashlight's

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.run(*inputs))
