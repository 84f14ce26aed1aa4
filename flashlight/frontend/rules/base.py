"""What a lifting rule is: a function from a node's context to the value it computes.

A rule reads its node's arguments through a :class:`RuleContext` (the builder of the program
being lifted, the values of the nodes lifted so far) and returns a
:class:`~flashlight.frontend.values.Value`: an index expression for a view, else the value of
the statements it emitted. Each family module declares its rules in a :class:`Rules` table with
the ``handles`` decorator; :mod:`flashlight.frontend.rules` merges the families into one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from dataclasses import dataclass

import torch
import torch.fx as fx

from flashlight.frontend.builder import ProgramBuilder
from flashlight.frontend.torch_dtypes import ir_dtype
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.symbolic import is_size, shape_symbols, symbol, value_at
from flashlight.frontend.values import Size, Value
from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter


def affine_in_params(b: ProgramBuilder, expr: Any) -> Expr | None:
    """An integer-linear expression of size symbols (Dynamo's sympy ``16*s44 + 1``) as an IR
    index expression over size parameters (a bound symbol is its number); None for anything else
    (``s0 * s1``, ``s0 // 2``)."""
    if not expr.is_polynomial():
        return None
    terms = expr.as_coefficients_dict()
    if not all(coeff.is_Integer and (term == 1 or term.is_Symbol) for term, coeff in terms.items()):
        return None  # checked before naming any parameter: a refused expression leaves none behind
    out: Expr = E.index(0)
    for term, coeff in terms.items():
        if term == 1:
            x: Expr = E.index(1)
        else:
            name = str(term)
            # a size of an input's shape (the program's inputs not yet read may name it later)
            x = E.index(b.bound[name]) if name in b.bound else Iter(b.param(name))
        out = E.add(out, E.mul(E.index(int(coeff)), x))
    return out


def size_of(b: ProgramBuilder, s: object) -> Size:
    """A dimension of a traced tensor: its size, or the size parameter that a symbolic size (a
    SymInt Dynamo made for a varying length) is; an affine expression of them (``16*s44``, a
    paged cache's length) is a derived size parameter (``U = 16 * S``)."""
    n = value_at(s, b.bound)
    if n is not None:
        return n
    name = symbol(s)  # type: ignore[arg-type]
    if name is not None:
        return b.param(name)
    definition = affine_in_params(b, s.node.expr)  # type: ignore[union-attr]
    if definition is None:
        raise Unsupported(f"a size that is an expression of varying sizes ({s}) is not a size parameter")
    return b.derived(str(s.node.expr), definition)  # type: ignore[union-attr]

aten = torch.ops.aten
prims = torch.ops.prims


@dataclass
class RuleContext:
    b: ProgramBuilder
    env: dict[fx.Node, Value]
    node: fx.Node

    @property
    def out_shape(self) -> tuple[Size, ...]:
        return tuple(size_of(self.b, s) for s in self.node.meta["val"].shape)

    @property
    def out_dtype(self) -> str:
        return ir_dtype(self.node.meta["val"].dtype)

    def arg(self, k: int, default: object = None) -> object:
        args = self.node.args
        return self._sized(args[k]) if k < len(args) else default

    def kwarg(self, key: str, default: object = None) -> object:
        return self._sized(self.node.kwargs.get(key, default))

    def scalar_size(self, a: fx.Node) -> int | Expr:
        """A varying integer argument (a SymInt graph input) used as a value: its number where the
        lift binds it, the size parameter of a tensor dimension it equals, else refused (a
        parameter no input's shape binds could not be bound when the program runs)."""
        s = a.meta["val"]
        n = value_at(s, self.b.bound)
        if n is not None:
            return n
        if symbol(s) in self.b.params:
            return Iter(self.b.params[symbol(s)])  # type: ignore[index]
        affine = self._affine_in_params(s.node.expr)
        if affine is not None:  # a cache's offset ``T - S``: an affine expression of parameters
            return affine
        raise Unsupported(f"a varying integer {s} that is no input's size")

    def _affine_in_params(self, expr: Any) -> Expr | None:
        shapes = shape_symbols(self.node.graph)
        if any(str(sym) not in shapes and str(sym) not in self.b.bound for sym in expr.free_symbols):
            return None  # a symbol no input's shape has could not be bound when the program runs
        return affine_in_params(self.b, expr)

    def _sized(self, a: object) -> object:
        """An argument with each symbolic size in it (a node whose value is a SymInt) read as
        :func:`size_of` reads it: a number if the lift binds it, else a size parameter."""
        if isinstance(a, fx.Node) and is_size(a):
            return size_of(self.b, a.meta["val"])
        if isinstance(a, (list, tuple)):
            return type(a)(self._sized(x) for x in a)
        return a

    def value(self, a: object) -> Value:
        if isinstance(a, fx.Node) and a in self.env:
            return self.env[a]
        raise Unsupported(f"expected a tensor argument, got {a!r}")

    def hint(self) -> str:
        return self.node.name


LiftFn = Callable[[RuleContext], Value]


@dataclass(frozen=True)
class Rule:
    """How one aten operator lifts, and the properties of that operator the driver reads."""

    lift: LiftFn
    view: bool = False         # only index expressions: a run of views alone makes no program
    reads_empty: bool = False  # the rule drops empty operands itself (others refuse them)


class Rules(dict[object, Rule]):
    """A table of rules keyed by operator overload packet (``aten.add``, not ``aten.add.Tensor``)."""

    def handles(self, *packets: object, view: bool = False, reads_empty: bool = False) -> Callable[[LiftFn], LiftFn]:
        def deco(fn: LiftFn) -> LiftFn:
            for p in packets:
                self[p] = Rule(fn, view, reads_empty)
            return fn

        return deco


def overload_packet(target: object) -> object:
    """The overload packet of a node's target (the key of the rule tables)."""
    return getattr(target, "overloadpacket", target)


def op_name(target: object) -> str:
    return str(getattr(target, "__name__", target))
