"""Which compiler compiles a program segment: flashlight, or Inductor (``torch._inductor``).

flashlight's kernels gain over a compiler that calls the vendor GEMM for each matrix product, as
Inductor does, where a kernel keeps a product in registers that it reduces again
(:func:`kept_products`): attention's scores, a loss's logits, an attention backward's recomputed
probabilities. Storing such a product costs more than computing it, or (for a softmax or a
log-sum-exp over it) memory the size of the product. Elsewhere (norms, projections, an MLP, a
softmax over stored values) Inductor's kernels ran 1.8-2.7x faster (benchmarks/RESULTS.md, run
21) and our fusions have nothing to gain. So, on the GPU by default and on every device with
``inductor=True``, a program of fixed sizes is first compiled once, untuned, to find the products
its kernels keep; the lift then cuts it into programs of what computes and reduces those products
(:func:`kept_region`: flashlight's) and programs of the rest (Inductor's, without our passes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx

from flashlight.frontend.segments import is_empty
from flashlight.ir import expr as E
from flashlight.ir.expr import loads
from flashlight.ir.nodes import Program, Stmt, walk_stmts
from flashlight.ir.products import expanding_products, is_contraction
from flashlight.passes.tree import constant_extent

# Storing an element of a product and reading it back costs 4 bytes of bf16 traffic; computing it
# costs 2·K flops for K terms. On an H100 (about 800 TFLOP/s, 3 TB/s) the store costs more than
# twice the product's arithmetic while K <= 256 (a head dimension); over a model dimension (1024
# and more) the vendor GEMM's speed outweighs what a fused product saves.
SHORT_PRODUCT = 256


def kept_products(lifted: Program, final: Program) -> dict[str, str]:
    """The matrix products of ``lifted`` (by name) that a kernel of ``final`` (the program after
    the passes) keeps in registers and reduces again where Inductor would store them, each with
    the reason: reduced again by a reduction that is not a product (a softmax's max and sum, a
    log-sum-exp) where storing it would cost more than computing it (a short sum,
    :data:`SHORT_PRODUCT`: attention's scores, a decode step's) or more memory than its factors
    (a loss's logits over a vocabulary); or fed to another product while its own sum is short
    (attention backward's probabilities). A projection followed by a norm is neither: the vendor
    GEMM's speed outweighs the store."""
    terms = _reduced_extents(final)  # of the final program: a recomputed product has a name of its own
    larger = expanding_products(final)
    stored = {t.name for t in final.tensors if t.storage == "global"}
    kept: dict[str, str] = {}
    for k, nest in enumerate(final.body):
        stmts = [st for st, _, _ in walk_stmts((nest,))]
        for c in stmts:
            t = c.target.tensor
            if t in stored or t in kept or t not in terms or not _is_product(c):
                continue
            for r in stmts:
                if r is c or not r.is_reduction or t not in _read(r):
                    continue
                if not _is_product(r) and (terms[t] <= SHORT_PRODUCT or t in larger):
                    kept[t] = (f"kernel {k} computes the matrix product {t}{_shape(final, t)} and reduces it again "
                               f"({r.target.tensor}) without storing it; Inductor would store it and read it back")
                elif _is_product(r) and terms[t] <= SHORT_PRODUCT:
                    kept[t] = (f"kernel {k} computes the matrix product {t}{_shape(final, t)}, a sum of "
                               f"{terms[t]} terms, and feeds it to the product {r.target.tensor} without storing it; "
                               "storing it, as Inductor would, costs more than computing it")
                if t in kept:
                    break
    return kept


def kept_with(lifted: Program, final: Program, products: Iterable[str]) -> set[str]:
    """The tensors of ``lifted`` that a kernel of ``final`` keeping one of ``products`` also
    writes (a group's sum of key gradients that merge-sums moved into the key-major kernel): they
    stay with the products, or the kernel would store per query head what it sums."""
    names = {t.name for t in lifted.tensors}
    kept = set(products)
    out: set[str] = set()
    for nest in final.body:
        targets = {st.target.tensor for st, _, _ in walk_stmts((nest,))}
        if targets & kept:
            out |= targets & names
    return out - kept


def kept_region(lifted: Program, products: Iterable[str], with_them: Iterable[str] = ()) -> set[str]:
    """The tensors of ``lifted`` that flashlight computes around the kept ``products``: each
    product, what reads it through elementwise steps and reductions up to and including the
    products that read those (attention's ``P @ V``) and their elementwise epilogues (a scale, a
    transposing copy), the tensors ``with_them`` (:func:`kept_with`) and their elementwise
    readers, and the elementwise steps that compute an operand of such a step (a mask, a bias).
    Not what computes a product's operands (rotary embeddings of Q and K): a product loads its
    operands tile by tile, many times over, so they are better stored once, by the other
    compiler, than recomputed in each program."""
    writer: dict[str, list[Stmt]] = {}
    readers: dict[str, list[Stmt]] = {}
    for s in lifted.statements():
        writer.setdefault(s.target.tensor, []).append(s)
        for t in _read(s):
            readers.setdefault(t, []).append(s)
    region: set[str] = set()
    seeds = set(products)
    todo = [(t, False) for t in seeds] + [(t, True) for t in with_them]
    walked: set[tuple[str, bool]] = set()
    while todo:  # forward: what reads a product, up to the products that read it and their epilogues
        t, epilogue = todo.pop()
        if (t, epilogue) in walked:
            continue
        walked.add((t, epilogue))
        region.add(t)
        epilogue = epilogue or (t not in seeds and any(_is_product(w) for w in writer.get(t, [])))
        todo += [(r.target.tensor, epilogue) for r in readers.get(t, []) if not (epilogue and r.is_reduction)]
    todo = [u for t in region for w in writer.get(t, []) if not _is_product(w) for u in _read(w)]
    while todo:  # the elementwise steps that compute the operands of steps in the region
        u = todo.pop()
        ws = writer.get(u, [])
        if u in region or not ws or any(w.is_reduction for w in ws):
            continue
        region.add(u)
        todo += [a for w in ws for a in _read(w)]
    return region


def _is_product(s: Stmt) -> bool:
    return s.dot is not None or is_contraction(s)


_LONG = 1 << 16  # the extent counted for a loop over a size that varies: long


def _reduced_extents(p: Program) -> dict[str, int]:
    """For each tensor a reduction of ``p`` writes, the number of terms of one of its sums: the
    product of the extents of the reduced loops its terms use (a serial loop of a fused kernel
    around a product that does not index it is another statement's; loops of symbolic extent
    count as long)."""
    out: dict[str, int] = {}
    for s, loops, _ in walk_stmts(p.body):
        if not s.is_reduction:
            continue
        own = {i for ix in s.target.indices for i in E.free_iters(ix)}
        used = E.free_iters(s.expr)
        extents = [_LONG if (n := constant_extent(lp)) is None else n
                   for lp in loops if lp.kind == "reduce" and lp.iterator not in own and lp.iterator in used]
        out[s.target.tensor] = math.prod(extents)
    return out


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


PLAIN = ("no kernel keeps a matrix product in registers to reduce it again: Inductor's kernels "
         "(the vendor GEMM, fused pointwise and reductions) are as good or better")


def cuts(choice: bool | None, target: str) -> bool:
    """Whether programs are cut and handed over under the option ``inductor`` (``choice``): True
    on every device, None on the GPU (on the CPU the interpreter is flashlight's test target)."""
    return choice is True or (choice is None and target == "cuda")


def decide(lifted: Program, final: Program | None, target: str, choice: bool | None) -> Decision:
    """Who compiles a segment, under the option ``inductor`` (``choice``): False, flashlight;
    otherwise flashlight where a kernel of the final program keeps a product
    (:func:`kept_products`), else Inductor (on the CPU with ``choice`` None the verdict is only
    said: the interpreter is flashlight's test target)."""
    if choice is False:
        return Decision(lifted.name, "flashlight", "inductor=False keeps it")
    kept = kept_products(lifted, final) if final is not None else {}
    if kept:
        return Decision(lifted.name, "flashlight", next(iter(kept.values())))
    if target != "cuda" and choice is None:
        return Decision(lifted.name, "flashlight", f"{PLAIN}; handed to Inductor on the GPU")
    return Decision(lifted.name, "Inductor", PLAIN)


def subgraph(nodes: list[fx.Node], inputs: list[fx.Node], outputs: list[fx.Node]) -> fx.GraphModule:
    """The graph nodes of a segment as a graph of their own (their traced values kept): its inputs
    placeholders, its outputs returned as a tuple."""
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for k, n in enumerate(inputs):
        env[n] = g.placeholder(f"in{k}")
        env[n].meta = dict(n.meta)
    copy_nodes(g, nodes, env)
    g.output(tuple(env[n] for n in outputs))
    return fx.GraphModule(torch.nn.Module(), g)


def copy_nodes(g: fx.Graph, nodes: Sequence[fx.Node], env: dict[fx.Node, fx.Node]) -> None:
    """``nodes`` copied into ``g`` as Inductor takes them (``env``: the copy of each value, which
    this extends): capture's prims as aten operators, and an empty value that a lifted program
    dropped (a cache of length 0) made again."""
    members = set(nodes)
    for a in dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in env and a not in members):
        if is_empty(a):
            val = a.meta["val"]
            env[a] = g.call_function(torch.empty, (list(val.shape),), {"dtype": val.dtype, "device": val.device})
            env[a].meta = dict(a.meta)
    for n in nodes:
        env[n] = g.node_copy(n, lambda a: env[a])
        if n.target in _ATEN_OF_PRIMS:
            env[n].target = _ATEN_OF_PRIMS[n.target]


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
    """A program segment Inductor compiles: inside the whole graph (flashlight.inductor_graph),
    or alone (``compile``: ``torch._inductor.compile`` on the segment's nodes and the capture's
    fake inputs; Inductor decomposes the graph its own way, as it does Dynamo's)."""

    program: Program = field(repr=False)  # the lifted program (for reports)
    nodes: list[fx.Node] = field(repr=False)
    inputs: list[fx.Node] = field(repr=False)
    outputs: list[fx.Node] = field(repr=False)
    run: Callable[..., Any] | None = field(default=None, repr=False)  # compiled alone

    def compile(self) -> InductorSegment:
        """Compiled alone (where the whole graph could not be joined)."""
        from torch._guards import TracingContext
        from torch._inductor import compile as inductor_compile  # called as the graph is

        gm = subgraph(self.nodes, self.inputs, self.outputs)
        # Inductor reports its outputs' strides to the capture, as the strides of the whole
        # graph's outputs: a segment's are not, and AOT's backward compile indexed past them
        with TracingContext.report_output_strides():
            self.run = inductor_compile(gm, [n.meta["val"] for n in self.inputs])
        return self

    @property
    def launches(self) -> list:
        return []  # no kernel of flashlight's

    def __call__(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        assert self.run is not None, f"{self.program.name} is compiled inside its whole graph"
        return list(self.run(*inputs))
