"""A generated program: its data (dimensions, inputs, ops, outputs, compile options), its Python
source, and its eager values.

A :class:`Program` is what a seed makes (``generator.py``), what the minimizer shrinks and what a
reproducer prints: :func:`render_core` writes it as source (dimension constants,
``make_inputs()``, ``def prog(...)``, ``OPTIONS``). Ops are lines of source that assign their
variable, so the minimizer edits programs as text: :func:`uses` and :func:`subst` find and
replace a name in a line, and :func:`prune` drops what no output needs.
"""

from __future__ import annotations

import re
import sys
import types
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .quiet import quiet

MAX_NUMEL = 4096  # elements per tensor: under Triton's interpreter, larger programs take too long


@dataclass(frozen=True)
class Input:
    """An argument of ``prog``, made in ``make_inputs`` from the seeded generator ``g``."""
    name: str
    shape: tuple[str, ...]  # dimension expressions: "1", "A", "A*B"
    dtype: str              # torch dtype name: float32, float16, bfloat16, int32, int64, bool
    kind: str               # randn | pos | randint | bool | index:N | negindex:N | doc:K (N, K: dim expressions)
    grad: bool = False      # requires_grad: the check compares its gradient too (floating-point inputs only)


@dataclass(frozen=True)
class Op:
    """One op of ``prog``: lines of source that assign ``var``."""
    var: str
    lines: tuple[str, ...]  # assign `var` (helper names are `var_...`)


@dataclass(frozen=True)
class Program:
    """A program as data; :func:`render_core` writes its source."""
    seed: int
    dims: dict[str, int]
    inputs: tuple[Input, ...]
    ops: tuple[Op, ...]
    outputs: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    tuple_out: bool = False  # return a tuple even for one output


def _shape_src(shape: tuple[str, ...]) -> str:
    if not shape:
        return "()"
    return "(" + ", ".join(shape) + ("," if len(shape) == 1 else "") + ")"


def input_line(x: Input) -> str:
    """The line of ``make_inputs`` that makes ``x``."""
    shape = _shape_src(x.shape)
    if x.kind == "randint":
        return f"{x.name} = torch.randint(-9, 10, {shape}, generator=g, dtype=torch.{x.dtype})"
    if x.kind.startswith("index:"):  # indices into a dimension of size N
        n = x.kind.split(":")[1]
        return f"{x.name} = torch.randint(0, {n}, {shape}, generator=g, dtype=torch.{x.dtype})"
    if x.kind.startswith("negindex:"):  # negative indices too
        n = x.kind.split(":")[1]
        return f"{x.name} = torch.randint(-{n}, {n}, {shape}, generator=g, dtype=torch.{x.dtype})"
    if x.kind.startswith("doc:"):  # sorted document ids
        k = x.kind.split(":")[1]
        return f"{x.name} = torch.sort(torch.randint(0, {k}, {shape}, generator=g)).values.to(torch.{x.dtype})"
    if x.kind == "bool":
        return f"{x.name} = torch.rand({shape}, generator=g) < 0.5"
    base = f"torch.randn({shape}, generator=g)" if x.kind == "randn" else f"(torch.rand({shape}, generator=g) + 0.5)"
    return (f"{x.name} = {base}" + ("" if x.dtype == "float32" else f".to(torch.{x.dtype})")
            + (".requires_grad_()" if x.grad else ""))


def render_core(p: Program) -> str:
    """Dimension constants, ``make_inputs``, ``prog`` and ``OPTIONS``: the program as source."""
    out = []
    if p.dims:
        out.append(", ".join(p.dims) + " = " + ", ".join(str(v) for v in p.dims.values()))
        out.append("")
    out += ["", "def make_inputs():", f"    g = torch.Generator().manual_seed({p.seed})"]
    out += [f"    {input_line(x)}" for x in p.inputs]
    names = ", ".join(x.name for x in p.inputs)
    out.append(f"    return ({names}{',' if len(p.inputs) == 1 else ''})")
    out += ["", "", f"def prog({names}):"]
    for op in p.ops:
        out += [f"    {line}" for line in op.lines]
    if len(p.outputs) == 1 and not p.tuple_out:
        out.append(f"    return {p.outputs[0]}")
    else:
        out.append(f"    return {', '.join(p.outputs)}" + ("," if len(p.outputs) == 1 else ""))
    out += ["", "", f"OPTIONS = {p.options!r}"]
    return "\n".join(out) + "\n"


def materialize(p: Program) -> dict[str, Any]:
    """The program's source executed: its namespace, with ``make_inputs``, ``prog``, ``OPTIONS``."""
    # a registered module: some versions of Dynamo import the module a traced function's globals name
    module = types.ModuleType(f"flashlight_fuzz_seed_{p.seed}")  # one per seed: guards look names up in it
    module.torch = torch  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    exec(compile(render_core(p), f"<fuzz seed {p.seed}>", "exec"), module.__dict__)
    return module.__dict__


def eval_vars(p: Program) -> dict[str, torch.Tensor] | None:
    """Every input and op variable's eager value, or ``None`` if eager fails."""
    ns: dict[str, Any] = {"torch": torch, **p.dims, "g": torch.Generator().manual_seed(p.seed)}
    try:
        with quiet():
            for x in p.inputs:
                exec(input_line(x), ns)
            for op in p.ops:
                for line in op.lines:
                    exec(line, ns)
    except Exception:
        return None
    names = [x.name for x in p.inputs] + [op.var for op in p.ops]
    return {n: ns[n] for n in names}


# a name as a whole word, not an attribute (``x1`` but not ``t.x1`` or ``x10``)
_WORD = r"(?<![\w.]){}(?!\w)"


def uses(text: str, name: str) -> bool:
    """Whether ``text`` reads the variable ``name``."""
    return re.search(_WORD.format(re.escape(name)), text) is not None


def subst(text: str, name: str, new: str) -> str:
    """``text`` with the variable ``name`` replaced by ``new``."""
    return re.sub(_WORD.format(re.escape(name)), new, text)


def prune(p: Program) -> Program:
    """Drop ops no output needs, then inputs no op uses, then dimensions nothing mentions."""
    need = set(p.outputs)
    keep = []
    for op in reversed(p.ops):
        if op.var in need:
            keep.append(op)
            text = "\n".join(op.lines)
            need |= {o.var for o in p.ops if uses(text, o.var)} | {x.name for x in p.inputs if uses(text, x.name)}
    ops = tuple(reversed(keep))
    text = "\n".join(line for op in ops for line in op.lines) + "\n" + " ".join(p.outputs)
    inputs = tuple(x for x in p.inputs if uses(text, x.name))
    used = text + " " + " ".join(s for x in inputs for s in x.shape) + " " + " ".join(x.kind for x in inputs)
    dims = {d: v for d, v in p.dims.items() if re.search(rf"\b{d}\b", used)}
    return replace(p, dims=dims, inputs=inputs, ops=ops)


def tags(p: Program) -> list[str]:
    """The program's families that a campaign counts apart: ``sdpa`` (calls
    F.scaled_dot_product_attention), ``grad`` (inputs that require grad: gradients are compared
    too), ``f64`` (float64 inputs), ``empty`` (a dimension of size 0)."""
    text = "\n".join(line for op in p.ops for line in op.lines)
    return ([t for t, hit in (("sdpa", "scaled_dot_product_attention" in text),
                              ("grad", any(x.grad for x in p.inputs)),
                              ("f64", any(x.dtype == "float64" for x in p.inputs)),
                              ("empty", 0 in p.dims.values())) if hit])
