"""Partition a joint forward/backward graph: the forward keeps row statistics, not S x S tensors.

AOT autograd traces the forward and the backward of a graph as one joint graph and asks a
partition function which forward values the backward reads from memory (saved) and which it
computes again (recomputed). PyTorch's partitions save the attention probabilities (an
``Sq x Sk`` tensor per batch and head). Ours saves only:

* the graph's inputs and outputs (alive anyway),
* row statistics: the results of reductions (``amax``, ``sum``, ...) no larger than the largest
  input or output (for softmax: the row max and the row sum, ``O(B*H*S)``): recomputing them
  would take another pass over the reduced dimension,
* matrix products no larger than the largest input or output that sum a larger intermediate value
  away, for the same reason (attention's output ``P V`` inside a model, which the output
  projection's backward reads; the scores ``q kᵀ`` multiply smaller values and are recomputed),
* what cannot be recomputed: the results of impure operations (random numbers).

A forward value the backward *compares* with recomputed values (the tie mask ``x == amax`` of a
maximum's gradient) is recomputed as well, even a row statistic or an output: a value saved from
the forward's fused kernel may differ in the last bit from its recomputation, and an equality
between the two would then fail everywhere.

A saved row sum of ``exp(x - amax(x))`` over the dimensions of the max (softmax's denominator)
carries a fact to the backward program: it is at least 1 wherever it is finite (the maximum's own
term is ``exp(0) = 1``, every other term is at least 0; NaN only where the whole row is ``-inf``).
masks-to-domains needs it: a masked probability ``exp(-inf - max) / sum`` is 0 only for a sum
that is not 0, and with it the backward's probabilities skip the masked tiles as the forward's do.

A forward output that is a sum over a value the backward recomputes (attention's ``O = P V``) is
saved too, with a statement of its definition for the backward (:mod:`.givens`).

Every other forward value the backward reads is recomputed in the backward from those, which is
legal because each recomputed node is a pure function of saved values (AOT autograd's graphs
are functional; impure nodes are saved, never recomputed). Each saved value carries its reason,
which ``explain`` shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx

from flashlight.frontend.givens import CASTS, state_givens
from flashlight.frontend.symbolic import hint

ATEN = torch.ops.aten
REDUCTIONS = {ATEN.sum, ATEN.amax, ATEN.amin, ATEN.max, ATEN.min, ATEN.mean, ATEN.prod, ATEN.logsumexp,
              ATEN.var, ATEN.std, ATEN.var_mean, ATEN.any, ATEN.all, ATEN.argmax, ATEN.argmin}
CONTRACTIONS = {ATEN.bmm, ATEN.mm, ATEN.addmm, ATEN.baddbmm}
COMPARISONS = {ATEN.eq, ATEN.ne, ATEN.lt, ATEN.le, ATEN.gt, ATEN.ge}
# ops that only re-view or copy a value: a comparison through them compares the value itself
TRANSPARENT = {ATEN.alias, ATEN.view, ATEN.expand, ATEN.unsqueeze, ATEN.squeeze, ATEN.permute, ATEN.clone,
               ATEN._unsafe_view, ATEN.reshape}


@dataclass(frozen=True)
class SavedChoice:
    """A forward value the backward reads from memory, and why it is kept rather than recomputed."""

    node: str
    reason: str


def _numel(n: fx.Node) -> int | None:
    val = n.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    out = 1
    for d in val.shape:
        out *= hint(d)
    return out


def _is_reduction(n: fx.Node) -> bool:
    packet = getattr(n.target, "overloadpacket", None)
    return n.op == "call_function" and packet in REDUCTIONS


def _is_impure(n: fx.Node) -> bool:
    if n.op != "call_function":
        return False
    try:
        return n.is_impure(impure_random=True)
    except TypeError:  # torch before the keyword: random operators count as impure there
        return n.is_impure()


def choose_saved(joint: fx.Graph, forward: set[fx.Node], outputs: Sequence[fx.Node]) -> tuple[
        list[fx.Node], list[fx.Node], list[SavedChoice]]:
    """The forward tensors and sizes the backward reads (saved values, saved symbolic sizes) and
    the reason for each tensor: walk back from the forward values the backward uses, saving
    inputs, outputs, row statistics and impure results, recomputing everything else."""
    from torch._functorch.partitioners import _is_primal

    kept = set(outputs)
    largest = max([_numel(n) or 0 for n in [*outputs, *filter(_is_primal, joint.nodes)]], default=0)
    wanted = [n for n in joint.nodes if n in forward and any(u not in forward for u in n.users)]
    compared = _compared_in_backward(joint, forward)
    saved: list[fx.Node] = []
    sizes: list[fx.Node] = []
    why: list[SavedChoice] = []
    seen: set[fx.Node] = set()
    while wanted:
        n = wanted.pop()
        if n in seen:
            continue
        seen.add(n)
        numel = _numel(n)
        if numel is None:  # a size (SymInt) or a non-tensor value: sizes are saved, others recomputed
            if isinstance(n.meta.get("val"), torch.SymInt):
                sizes.append(n)
            else:
                wanted += n.all_input_nodes
            continue
        reason = None
        if _is_primal(n):
            reason = "an input of the graph"
        elif n in compared:
            pass  # compared with recomputed values (max's tie mask): recomputed too, so both agree bit for bit
        elif n in kept:
            reason = "an output of the graph"
        elif _is_impure(n):
            reason = f"{n.target} is impure (random or stateful): recomputing it would give other values"
        elif _is_reduction(n) and numel <= largest:
            reason = (f"a row statistic ({n.target}, {numel} elements, no more than the largest input or "
                      "output): recomputing it would take another pass over what it reduces")
        elif _packet(n) in CONTRACTIONS and numel <= largest and _sums_a_larger_intermediate(n, numel):
            reason = (f"a matrix product ({n.target}, {numel} elements, no more than the largest input or "
                      "output) of a larger intermediate value (attention's output P V inside a model): "
                      "recomputing it would take another pass over what it sums")
        if reason is None:
            wanted += n.all_input_nodes  # recomputed in the backward from what it reads
            continue
        saved.append(n)
        why.append(SavedChoice(n.name, reason))
    order = {n: k for k, n in enumerate(joint.nodes)}
    saved.sort(key=order.__getitem__)
    sizes.sort(key=order.__getitem__)
    return saved, sizes, why


def _sums_a_larger_intermediate(n: fx.Node, numel: int) -> bool:
    """Whether an operand of the matrix product ``n`` (through views and casts) is an
    intermediate value, not an input, with more elements than the product: ``P V`` sums the
    ``S x S`` probabilities away; the scores ``q kᵀ`` multiply inputs (or smaller projections)
    and are recomputed, never saved."""
    for a in n.all_input_nodes:
        core = a
        while _packet(core) in TRANSPARENT | CASTS and core.all_input_nodes:
            core = core.all_input_nodes[0]
        if core.op == "call_function" and (_numel(a) or 0) > numel:
            return True
    return False


def at_least_one(n: fx.Node) -> bool:
    """Whether ``n`` is ``sum(exp(x - amax(x, dims)), dims)``: at least 1 wherever finite."""
    if n.op != "call_function" or n.target != ATEN.sum.dim_IntList or _packet(n.args[0]) != ATEN.exp:
        return False
    sub = n.args[0].args[0]
    if _packet(sub) != ATEN.sub or not isinstance(sub.args[1], fx.Node) or _packet(sub.args[1]) != ATEN.amax:
        return False
    x, amax = sub.args[0], sub.args[1]
    rank = len(x.meta["val"].shape) if isinstance(x, fx.Node) and "val" in x.meta else 0
    if amax.args[0] is not x or rank == 0 or len(amax.args) < 2 or len(n.args) < 2 or \
            not all(isinstance(a, (list, tuple)) for a in (amax.args[1], n.args[1])):
        return False
    return sorted(d % rank for d in amax.args[1]) == sorted(d % rank for d in n.args[1])


def _packet(n: fx.Node) -> Any:
    return getattr(n.target, "overloadpacket", None) if n.op == "call_function" else None


def _compared_in_backward(joint: fx.Graph, forward: set[fx.Node]) -> set[fx.Node]:
    """Forward values a backward comparison reads (through views). The backward of ``amax``
    compares the saved maximum with the recomputed scores (``x == amax``): a maximum computed by
    the forward's kernel may differ from the recomputation in the last bit (another summation
    order in the matrix product before it), and then no element is the maximum and the gradient
    divides by a count of 0. Such values are recomputed with what they are compared with."""
    out: set[fx.Node] = set()
    for c in joint.nodes:
        if c in forward or _packet(c) not in COMPARISONS:
            continue
        for a in c.all_input_nodes:
            while _packet(a) in TRANSPARENT and a.all_input_nodes:
                if a in forward:
                    out.add(a)
                a = a.all_input_nodes[0]
            if a in forward:
                out.add(a)
    return out


def partition_statistics(joint_module: fx.GraphModule, _joint_inputs: Any, *, num_fwd_outputs: int,
                         **_: Any) -> tuple[fx.GraphModule, fx.GraphModule]:
    """A partition function for AOT autograd (``partition_fn``): see the module docstring. The
    reasons are recorded on the forward module's ``meta["flashlight_saved_reasons"]``."""
    from torch._functorch.partitioners import (_extract_fwd_bwd_modules, _has_tag_is_forward, _is_fwd_seed_offset,
                                               _is_primal, _is_tangent)

    graph = joint_module.graph
    last = None
    for n in graph.nodes:
        if _has_tag_is_forward(n) or _is_primal(n) or _is_fwd_seed_offset(n):
            last = n
    forward: set[fx.Node] = set()
    for n in graph.nodes:
        if not _is_tangent(n) and n.op != "output":
            forward.add(n)
        if n is last:
            break
    outputs = [a for a in next(n for n in graph.nodes if n.op == "output").args[0][:num_fwd_outputs]
               if isinstance(a, fx.Node)]
    saved, sizes, why = choose_saved(graph, forward, outputs)
    for o in state_givens(graph, forward, outputs, saved, num_fwd_outputs):
        if o in saved:
            why = [replace(c, reason=c.reason + "; its definition is stated to the backward, which may read a "
                                    "sum of its own from it (exchange-sums)") if c.node == o.name else c for c in why]
            continue
        saved.append(o)
        why.append(SavedChoice(o.name, "an output of the graph, a sum over values the backward recomputes: saved "
                                       "with its definition, from which the backward may read a sum of its own "
                                       "(exchange-sums)"))
    order = {n: k for k, n in enumerate(graph.nodes)}
    saved.sort(key=order.__getitem__)
    fw, bw = _extract_fwd_bwd_modules(joint_module, saved, sizes, num_fwd_outputs=num_fwd_outputs)
    fw.meta["flashlight_saved_reasons"] = {c.node: c.reason for c in why}
    bounded = {n.name for n in saved if at_least_one(n)}
    for ph in bw.graph.find_nodes(op="placeholder"):
        if ph.name in bounded:
            ph.meta["flashlight_at_least"] = 1.0
    return fw, bw
