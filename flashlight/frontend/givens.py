"""Givens: a backward graph states what a saved forward output holds, so that a sum can be read.

The backward of softmax(q kᵀ) v computes ``Δ_i = Σ_j P_ij Σ_d dO_id V_jd``, a dependent sum over a
whole row, which the forward already computed in another order: ``Σ_d dO_id (Σ_j P_ij V_jd)`` is
``Σ_d dO_id O_id``. exchange-sums (a pass) makes that rewrite; it needs the backward program to
know that the saved ``O`` *is* ``Σ_j P_ij V_jd``. The partition states it in the joint graph: for
a forward output or saved value that is a sum over a value the backward recomputes (attention's
``P @ V``, an output or, inside a model, a saved matrix product), it

* saves it (an output is alive anyway: it costs no memory of its own),
* copies the forward nodes that compute it (those the backward does not recompute already; the
  others are shared, so both sides read the same recomputed values), and
* wraps one gradient ``g`` the backward returns as ``flashlight::given(g, o, definition)``:
  ``g`` unchanged, with the statement that the input ``o`` holds ``definition``.

The lift turns the call into a statement ``o[...] = definition[...] as given`` (a fact that runs
nowhere); exchange-sums uses and removes it, and with it the copies nothing else reads. Where the
call runs eagerly (its program could not be compiled) it returns ``g`` and computes the copies,
so :func:`strip_givens` removes both first.

A saved output that the user modifies in place before the backward is then an error of
autograd's, as it is for SDPA's output (which FlashAttention's backward saves too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx

ATEN = torch.ops.aten
SUMS = {ATEN.bmm, ATEN.mm}
CASTS = {torch.ops.prims.convert_element_type, ATEN._to_copy}
VIEWS = {ATEN.alias, ATEN.view, ATEN.expand, ATEN.unsqueeze, ATEN.squeeze, ATEN.permute, ATEN.clone,
         ATEN._unsafe_view, ATEN.reshape}


@torch.library.custom_op("flashlight::given", mutates_args=())
def given(value: torch.Tensor, held: torch.Tensor, definition: torch.Tensor) -> torch.Tensor:
    """``value``, unchanged; states that ``held`` (a saved forward output) equals ``definition``."""
    return value.clone()


@given.register_fake
def _given_fake(value: torch.Tensor, held: torch.Tensor, definition: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(value)


GIVEN = torch.ops.flashlight.given


def _packet(n: object) -> object:
    return getattr(n.target, "overloadpacket", None) if isinstance(n, fx.Node) and n.op == "call_function" else None


def _recomputed(forward: set[fx.Node], saved: set[fx.Node]) -> set[fx.Node]:
    """Forward nodes the backward computes again: those it reads, and what they read, up to the
    saved values."""
    out: set[fx.Node] = set()
    todo = [n for n in forward if n not in saved and any(u not in forward for u in n.users)]
    while todo:
        n = todo.pop()
        if n in out or n in saved or n not in forward or n.op != "call_function":
            continue
        out.add(n)
        todo += n.all_input_nodes
    return out


def _definition(o: fx.Node, frontier: set[fx.Node], shared: set[fx.Node]) -> list[fx.Node] | None:
    """The forward nodes to copy to compute ``o`` again (graph order), or None where it would read
    an impure value or a placeholder that is not saved."""
    nodes: set[fx.Node] = set()
    todo = [o]
    while todo:
        n = todo.pop()
        if n in nodes or n in frontier or n in shared:
            continue
        if n.op != "call_function" or n.is_impure():
            return None
        nodes.add(n)
        todo += n.all_input_nodes
    return [n for n in o.graph.nodes if n in nodes]


def state_givens(joint: fx.Graph, forward: set[fx.Node], outputs: Sequence[fx.Node], saved: list[fx.Node],
                 num_fwd_outputs: int) -> list[fx.Node]:
    """State the definitions of the outputs and saved values that are sums over recomputed values
    in the backward (see the module docstring); returns those values (the outputs among them are
    to be saved)."""
    shared = _recomputed(forward, set(saved))
    # what the backward has: the saved values and the tangents (a primal input it does not save is
    # not one of its inputs: a definition that reads it cannot be stated, fuzz seed 9602157)
    frontier = set(saved) | {n for n in joint.nodes if n.op == "placeholder" and n not in forward}
    out_node = next(n for n in joint.nodes if n.op == "output")
    results = list(out_node.args[0])
    grads = [k for k in range(num_fwd_outputs, len(results)) if isinstance(results[k], fx.Node)]
    stated: list[fx.Node] = []
    for o in dict.fromkeys([*outputs, *saved]):
        core = o
        while _packet(core) in VIEWS | CASTS and core.all_input_nodes:
            core = core.all_input_nodes[0]
        if not grads or _packet(o) is None or _packet(core) not in SUMS or not any(a in shared for a in core.all_input_nodes):
            continue
        nodes = _definition(o, frontier - {o}, shared)
        if not nodes or nodes[-1] is not o:
            continue  # impure, or the backward recomputes the output itself: nothing to state
        copies: dict[fx.Node, fx.Node] = {}
        with joint.inserting_before(out_node):
            for n in nodes:
                copies[n] = joint.node_copy(n, lambda a: copies.get(a, a))
            g = results[grads[0]]
            marker = joint.call_function(GIVEN.default, (g, o, copies[o]))
        marker.meta["val"] = g.meta["val"]
        results[grads[0]] = marker
        stated.append(o)
    out_node.args = (type(out_node.args[0])(results),) + tuple(out_node.args[1:])
    return stated


def strip_givens(gm: fx.GraphModule) -> bool:
    """Remove every ``given`` call of ``gm`` and what only it reads (for a graph that runs eagerly:
    the copies would compute the forward's output again for nothing); whether there was one."""
    markers = list(gm.graph.find_nodes(op="call_function", target=GIVEN.default))
    for m in markers:
        m.replace_all_uses_with(m.args[0])
        gm.graph.erase_node(m)
    if markers:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return bool(markers)
