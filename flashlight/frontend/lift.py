"""Lifting an aten FX graph into IR programs, cutting out what the IR cannot express.

Every aten operator the IR can express becomes one loop nest (:mod:`.builder`), by its rule
(:mod:`.rules`); views become index expressions. An operator that cannot be lifted (unknown op,
unsupported dtype or argument) runs in eager PyTorch: the graph is split into *segments*
(:mod:`.segments`), maximal runs of liftable nodes that become one
:class:`~flashlight.ir.Program` each, and eager nodes in between.

.. autofunction:: lift_graph
"""

from __future__ import annotations

from dataclasses import replace

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.fx as fx

from flashlight.frontend.builder import ProgramBuilder
from flashlight.frontend.givens import GIVEN, strip_givens
from flashlight.frontend.rules import RULES, RuleContext, op_name, overload_packet
from flashlight.frontend.rules.base import size_of
from flashlight.frontend.segments import EagerSegment, LiftedGraph, ProgramSegment, is_empty
from flashlight.frontend.symbolic import is_size
from flashlight.frontend.torch_dtypes import ir_dtype
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.values import Value
from flashlight.ir.nodes import Program

__all__ = ["EagerSegment", "LiftedGraph", "ProgramSegment", "lift_graph"]


def lift_graph(gm: fx.GraphModule, input_names: Sequence[str] | None = None, name: str = "program",
               arg_order: Sequence[str] = (), sizes: Mapping[str, int] | None = None,
               keep_together: Callable[[Program], set[str]] | None = None) -> LiftedGraph:
    """Lift ``gm`` (an aten graph with ``val`` metadata on every node) into segments.

    ``input_names`` name the graph's placeholders; program inputs are declared in the order of
    ``arg_order`` (the user's parameter names), then in order of first use. A symbolic size
    (Dynamo's ``s77``) becomes a size parameter of the programs, or the number ``sizes`` gives it.
    With ``keep_together`` (the tensors of a lifted program, named after their nodes, that must
    stay in one program: flashlight.handoff.kept_region), a program of fixed sizes is cut into
    programs of those nodes and programs of the others, so that another compiler may take these.
    """
    graph = gm.graph
    if keep_together is not None:
        _state_givens_apart(gm)
    phs = [n for n in graph.nodes if n.op == "placeholder"]
    names = list(input_names) if input_names and len(input_names) == len(phs) else [n.name for n in phs]
    ph_name = dict(zip(phs, names))
    compute = [n for n in graph.nodes if n.op == "call_function"]

    # pass 1: classify every node by lifting it into a scratch program
    reasons: dict[fx.Node, str] = {}
    scratch = ProgramBuilder(name, bound=dict(sizes or {}))
    env: dict[fx.Node, Value] = {}
    for n in phs:
        if not is_size(n):  # a size Dynamo made symbolic: read through the shapes it sizes
            env[n] = _try_input(scratch, n, ph_name[n])  # type: ignore[assignment]
    for n in graph.nodes:  # tensor constants are inputs of the programs that read them
        if n.op == "get_attr" and _is_tensor(n):
            env[n] = _try_input(scratch, n, n.name.lstrip("_"))  # type: ignore[assignment]
    for n in compute:
        reason = _try_lift(scratch, env, n)
        if reason is not None:
            reasons[n] = reason
            env[n] = _try_input(scratch, n, n.name)  # type: ignore[assignment]

    if any(overload_packet(n.target) is GIVEN for n in reasons) and strip_givens(gm):
        # a fact about a saved output whose definition the IR cannot hold: without it the
        # backward computes what it needs itself, and nothing computes the definition for nothing
        return lift_graph(gm, input_names, name, arg_order, sizes)

    # pass 2: liftable nodes become programs, as few as the eager nodes between them allow. A
    # node's level counts the eager nodes its value waits for: program L holds the liftable nodes
    # of level L and runs after the eager nodes of level L, which wait for program L - 1.
    lifted = LiftedGraph(graph, phs)
    lifted.constants = {n: _attr(gm, str(n.target)) for n in graph.nodes if n.op == "get_attr"}
    level: dict[fx.Node, int] = {}
    for n in compute:
        ins = [a for a in n.all_input_nodes if a in level]
        level[n] = max((level[a] + (n in reasons and a not in reasons) for a in ins), default=0)
    runs: list[list[fx.Node]] = [
        [n for n in compute if level[n] == k and n not in reasons] for k in range(max(level.values(), default=-1) + 1)]
    programs = [run for run in runs if run and not all(_is_view_like(n) for n in run)]
    for k, run in enumerate(runs):
        lifted.segments += [EagerSegment(n, reasons[n], not (is_empty(n) or _is_size_arithmetic(n))) for n in compute
                            if level[n] == k and n in reasons]
        if run and run not in programs:
            lifted.segments += [EagerSegment(n, "view only: nothing to compute", False) for n in run]
        elif run:
            members = set(run)
            outputs = [n for n in run if _is_tensor(n) and any(u not in members for u in n.users)]
            prog_name = name if len(programs) == 1 else f"{name}_{programs.index(run)}"
            seg = _lift_run(run, outputs, ph_name, prog_name, list(arg_order), dict(sizes or {}))
            if keep_together is None or seg.params:
                lifted.segments.append(seg)
                continue
            free = _recomputable(run, {st.target.tensor for st in seg.program.statements() if st.is_reduction})
            parts = _cut(run, keep_together(seg.program), free)
            if len(parts) == 1:
                seg.kept = parts[0][1]
                lifted.segments.append(seg)
                continue
            for j, (part, kept) in enumerate(parts):
                if all(_is_view_like(n) for n in part):
                    lifted.segments += [EagerSegment(n, "view only: nothing to compute", False) for n in part]
                    continue
                inside = set(part)
                outs = [n for n in part if _is_tensor(n) and any(u not in inside for u in n.users)
                        and n not in free]
                part_seg = _lift_run(part, outs, ph_name, f"{prog_name}_part{j}", list(arg_order), dict(sizes or {}))
                part_seg.kept = kept
                lifted.segments.append(part_seg)
    return lifted


def _cut(run: list[fx.Node], together: set[str], free: set[fx.Node]) -> list[tuple[list[fx.Node], bool]]:
    """``run`` in parts, each with whether it holds nodes named in ``together``, in an order that
    runs each after the parts it reads: those nodes and the others, each part as large as the
    dependences between them allow (a view goes with its first reader). One part if either kind
    is all there is. A node of ``free`` (:func:`_recomputable`) is computed again in each part
    that reads it, not stored by one part and loaded by the others."""
    inside = set(run)
    label: dict[fx.Node, bool | None] = {}
    for n in reversed(run):  # a view goes with its first reader that computes
        if n.name in together:
            label[n] = True
        elif _is_view_like(n) or overload_packet(n.target) is GIVEN:
            readers = [u for u in n.users if label.get(u) is not None]
            label[n] = label[readers[0]] if readers else None
        else:
            label[n] = False
    for n in run:  # a view nothing here computes from (an output's) goes with what it views; a fact
        # about values (``given``: a saved output equals its recomputation) with the values it relates
        if label[n] is None:
            label[n] = any(label[a] for a in n.all_input_nodes if a in inside)
    kinds = {label[n] for n in run if not _is_view_like(n) and n not in free}
    if len(kinds) < 2:
        return [(run, kinds == {True})]
    level: dict[fx.Node, int] = {}
    for n in run:
        if n not in free:
            level[n] = max((level[a] + (label[a] != label[n]) for a in n.all_input_nodes if a in level), default=0)
    keys = sorted({(level[n], label[n]) for n in level})
    parts = []
    for key in keys:
        chosen = {n for n in level if (level[n], label[n]) == key}
        todo = [a for n in chosen for a in n.all_input_nodes if a in free]
        while todo:  # the values computed from inputs alone that the part reads, computed here again
            a = todo.pop()
            if a not in chosen:
                chosen.add(a)
                todo += [b for b in a.all_input_nodes if b in free]
        parts.append(([n for n in run if n in chosen], key[1]))
    return parts


def _state_givens_apart(gm: fx.GraphModule) -> None:
    """Each ``given(g, o, c)`` (a fact riding on the gradient ``g``: the saved output ``o`` equals
    its recomputation ``c``) becomes ``given(c, o, c)`` right after ``c``, and ``g`` is returned
    as is. A cut then keeps the fact with the recomputation it speaks of (exchange-sums reads it
    there), not with the last gradient, which another program computes."""
    moved = False
    for m in list(gm.graph.find_nodes(op="call_function", target=GIVEN.default)):
        g, o, c = m.args[:3]
        if g is c:
            continue
        with gm.graph.inserting_after(c):
            fact = gm.graph.call_function(GIVEN.default, (c, o, c))
        fact.meta = dict(c.meta)
        m.replace_all_uses_with(g)
        gm.graph.erase_node(m)
        moved = True
    if moved:
        gm.recompile()


def _recomputable(run: list[fx.Node], reductions: set[str]) -> set[fx.Node]:
    """The nodes of ``run`` that every part reading them computes again when the run is cut: those
    computed without a reduction from values outside the run alone (an ``arange`` and the causal
    mask it gives, a rotary table from its frequencies, a transposed view of an input). Recomputing
    one reads what storing it would have read, and no part waits on another for it. Not one that
    something outside the run reads: a part computes it once and outputs it."""
    inside = set(run)
    free: set[fx.Node] = set()
    for n in run:
        if n.name not in reductions and overload_packet(n.target) is not GIVEN and \
                all(a in free or a not in inside for a in n.all_input_nodes):
            free.add(n)
    return {n for n in free if n.users and set(n.users) <= inside}


def _lift_run(run: list[fx.Node], outputs: list[fx.Node], ph_name: dict[fx.Node, str], name: str,
              arg_order: list[str], sizes: dict[str, int]) -> ProgramSegment:
    b = ProgramBuilder(name, bound=sizes)
    env: dict[fx.Node, Value] = {}
    inputs: list[fx.Node] = []
    members = set(run)
    for n in run:
        for a in n.all_input_nodes:
            if a not in members and a not in env and not is_size(a):
                env[a] = _input_value(b, a, ph_name.get(a, a.name.lstrip("_") or "t"))
                inputs.append(a)
        reason = _try_lift(b, env, n)
        assert reason is None, f"node {n.name} lifted in pass 1 but not in pass 2: {reason}"
    outs = [(f"out{k}", env[n]) for k, n in enumerate(outputs)]
    prog = b.program(outs)
    # an empty input is only ever dropped (a cache of length 0 concatenated with new keys)
    keep = [k for k, d in enumerate(prog.inputs) if 0 not in d.shape]
    if len(keep) < len(prog.inputs):
        inputs = [inputs[k] for k in keep]
        prog = prog.replace(tensors=tuple(t for t in prog.tensors if t.role != "input" or 0 not in t.shape))
    rank = {n: arg_order.index(n) if n in arg_order else len(arg_order) + k
            for k, n in enumerate(d.name for d in prog.inputs)}
    pairs = sorted(zip(prog.inputs, inputs), key=lambda p: rank[p[0].name])
    pairs = [(replace(d, at_least=n.meta["flashlight_at_least"]) if "flashlight_at_least" in n.meta else d, n)
             for d, n in pairs]
    decls = [d for d, _ in pairs] + [t for t in prog.tensors if t.role != "input"]
    return ProgramSegment(prog.replace(tensors=tuple(decls)), [n for _, n in pairs], outputs, list(run), dict(b.params),
                          dict(sizes))


def _attr(gm: fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _input_value(b: ProgramBuilder, n: fx.Node, name: str) -> Value:
    val = n.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise Unsupported(f"input {name} is not a tensor")
    return b.input(name, tuple(size_of(b, s) for s in val.shape), ir_dtype(val.dtype))


def _try_input(b: ProgramBuilder, n: fx.Node, name: str) -> Value | None:
    """``n``'s value read as a program input, or None where the IR cannot hold it (not a tensor,
    or a size that is an expression of varying sizes): the nodes that read it then run eagerly."""
    try:
        return _input_value(b, n, name)
    except Unsupported:
        return None


def _is_tensor(n: fx.Node) -> bool:
    return isinstance(n.meta.get("val"), torch.Tensor)


def _is_size_arithmetic(n: fx.Node) -> bool:
    """Arithmetic on sizes (``T - S``, a cache's offset): a number, not a tensor; a lifted reader
    reads it as an expression of size parameters, and eager computing it costs nothing."""
    return isinstance(n.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool))


def _try_lift(b: ProgramBuilder, env: dict[fx.Node, Value], n: fx.Node) -> str | None:
    """Lift ``n`` into ``b`` by its rule and bind its value in ``env``; else say why not (and
    leave ``b`` as it was)."""
    rule = RULES.get(overload_packet(n.target))
    if rule is None:
        return f"{op_name(n.target)} has no lifting rule"
    snap = b.snapshot()
    try:
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise Unsupported("its result is not a single tensor")
        ir_dtype(val.dtype)
        if val.numel() == 0:
            raise Unsupported("its result is empty: nothing to compute")
        for a in n.all_input_nodes:
            if is_size(a):
                continue  # a symbolic size the rule reads from the shapes
            if env.get(a) is None:
                raise Unsupported(f"its input {a.name} is not a tensor the IR can hold")
            if is_empty(a) and not rule.reads_empty:
                raise Unsupported(f"its input {a.name} is empty")
        env[n] = rule.lift(RuleContext(b, env, n))
        return None
    except Unsupported as exc:
        b.rollback(snap)
        return f"{op_name(n.target)}: {exc}"
    except (TypeError, ValueError) as exc:
        if not b.params:
            raise
        # a rule that computes with sizes met a size parameter (``"S" < 4``): it needs a known size
        b.rollback(snap)
        return f"{op_name(n.target)}: needs known sizes, and a size varies ({exc})"


def _is_view_like(n: fx.Node) -> bool:
    rule = RULES.get(overload_packet(n.target))
    return rule is not None and rule.view
