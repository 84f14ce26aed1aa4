"""Dynamo's symbolic sizes, read without being evaluated.

When Dynamo makes a dimension symbolic, the graph gets an input holding the size (a node whose
value is a ``torch.SymInt``, symbol ``s77``) and the shapes of tensors hold expressions of such
symbols. Asking a SymInt for its value (``int(s)``, ``s == 37``) makes Dynamo specialise the graph
to that value, so these helpers only name symbols and substitute numbers one chooses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx


def is_size(n: fx.Node) -> bool:
    """Whether ``n`` is a size (an integer Dynamo made symbolic), not a tensor."""
    return isinstance(n.meta.get("val"), torch.SymInt)


def symbol(s: torch.SymInt) -> str | None:
    """The name of the symbol ``s`` is, or None if it is an expression of symbols (``4*s77``)."""
    expr = s.node.expr
    return str(expr) if expr.is_Symbol else None


def value_at(s: Any, sizes: Mapping[str, int]) -> int | None:
    """``s`` (a number or a SymInt) at these values of its symbols; None if one is not given."""
    if not isinstance(s, torch.SymInt):
        return int(s)
    expr = s.node.expr
    if expr.is_Integer:
        return int(expr)
    names, evaluate = _evaluator(expr)
    if any(n not in sizes for n in names):
        return None
    return int(evaluate(*(sizes[n] for n in names)))


_EVALUATORS: dict[Any, tuple[tuple[str, ...], Callable[..., Any]]] = {}


def _evaluator(expr: Any) -> tuple[tuple[str, ...], Callable[..., Any]]:
    """The names of ``expr``'s symbols and a function of their values computing it. A layout is
    evaluated at each call's sizes, and a decode step meets new sizes every call: sympy's ``subs``
    took 2 ms a step, a function made once takes microseconds. It is PyTorch's own: the Python its
    printer writes for the expression, in the namespace its shape environment evaluates such code
    in (as Inductor's compiled graphs do); checked once against ``subs``, else ``xreplace``
    evaluates."""
    hit = _EVALUATORS.get(expr)
    if hit is not None:
        return hit
    import sympy
    from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP
    from torch.utils._sympy.printers import PythonPrinter

    symbols = sorted(expr.free_symbols, key=str)
    names = tuple(map(str, symbols))

    def replaced(*values: int) -> Any:
        return expr.xreplace({x: sympy.Integer(v) for x, v in zip(symbols, values)})
    evaluate: Callable[..., Any] = replaced
    try:
        made = eval(f"lambda {', '.join(names)}: {PythonPrinter().doprint(expr)}", dict(SYMPY_INTERP))  # noqa: S307
        probe = [5 + 3 * k for k in range(len(symbols))]
        if int(made(*probe)) == int(expr.subs(dict(zip(symbols, probe)))):
            evaluate = made
    except Exception:  # noqa: BLE001  (an expression the printer cannot write: xreplace evaluates it)
        pass
    if len(_EVALUATORS) > 4096:
        _EVALUATORS.clear()
    hit = _EVALUATORS[expr] = (names, evaluate)
    return hit


def size_inputs(placeholders: Sequence[fx.Node]) -> dict[str, int]:
    """The graph inputs that are symbolic sizes: symbol -> position."""
    return {name: k for k, n in enumerate(placeholders) if is_size(n)
            and (name := symbol(n.meta["val"])) is not None}


def hint(x: Any) -> int:
    """A size's value at the captured call (Dynamo's hint), read without a guard on it, so a
    symbolic size stays symbolic (0 where Dynamo has no hint)."""
    if isinstance(x, torch.SymInt):
        return int(x.node.hint) if x.node.hint is not None else 0
    return int(x)


def captured_sizes(example_inputs: Sequence[Any], positions: Mapping[str, int]) -> dict[str, int]:
    """The value of each symbolic size at the call that was captured (Dynamo's hint)."""
    return {s: hint(example_inputs[k]) for s, k in positions.items()
            if isinstance(example_inputs[k], torch.SymInt)}


def shape_symbols(graph: fx.Graph) -> set[str]:
    """The size expressions of the graph's inputs' shapes (Dynamo's ``s44``): the sizes a call's
    tensors bind."""
    return {str(d.node.expr) for n in graph.nodes if n.op == "placeholder"
            for d in getattr(n.meta.get("val"), "shape", ()) if isinstance(d, torch.SymInt)}


def symbols_read(n: fx.Node) -> set[str]:
    """The size symbols an op that cannot be lifted with them varying most likely needs known:
    those of its arguments that are expressions of sizes (``s1 // s2``, a group of heads), or,
    where every argument is a size itself, all of them (``scalar_tensor(s3)`` of ``1 / sqrt(s3)``)."""
    plain: set[str] = set()
    composite: set[str] = set()

    def visit(x: Any) -> None:
        val = x.meta.get("val") if isinstance(x, fx.Node) else x
        if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            expr = val.node.expr
            (plain if expr.is_Symbol else composite).update(str(sym) for sym in expr.free_symbols)

    fx.node.map_aggregate((n.args, n.kwargs), visit)
    return composite or plain

