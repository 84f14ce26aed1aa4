"""Deterministic text form of programs and expressions (parsed back by :mod:`flashlight.ir.parser`).

::

    program attention(q: f32[2,7,4], k: f32[2,5,4]) -> (out0: f32[2,7])
      buffer s: f32[2,7,5]
      local m: f32[2,7]
      for i0 in 0:2 parallel, i1 in 0:7 parallel
        for i2 in 0:5 reduce
          if i2 <= i1
            S1: m[i0,i1] max= s[i0,i1,i2] then * 0.5

Perfectly nested loops of the same kind and mapping share one ``for`` line. Operators use
the precedence ``| < & < comparisons < + - < * / // % < unary``; a literal whose dtype is not
the default of its kind (``f32`` for reals, ``i64`` for integers) prints as a cast, ``f16(0.5)``.
"""

from __future__ import annotations

import re

from flashlight.ir.expr import INFIX, PREFIX, Call, Const, Expr, Iter, Load
from flashlight.ir.nodes import Given, Guard, LibraryCall, Loop, Node, Program, Stmt, TensorDecl

_ATOM = 7
_NON_ASSOCIATIVE_LEFT = ("lt", "le", "gt", "ge", "eq", "ne")


def format_literal(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _default_dtype(value: float | int | bool) -> str:
    if isinstance(value, bool):
        return "b1"
    return "f32" if isinstance(value, float) else "i64"


def _prec(e: Expr) -> int:
    if isinstance(e, Call):
        if e.op in INFIX:
            return INFIX[e.op][1]
        if e.op in PREFIX:
            return PREFIX[e.op][1]
    if isinstance(e, Const) and not isinstance(e.value, bool) and (e.value < 0 or repr(e.value) == "-0.0"):
        return PREFIX["neg"][1]
    return _ATOM


def format_expr(e: Expr) -> str:
    if isinstance(e, Const):
        lit = format_literal(e.value)
        return lit if e.dtype == _default_dtype(e.value) else f"{e.dtype}({lit})"
    if isinstance(e, Iter):
        return e.name
    if isinstance(e, Load):
        return f"{e.tensor}[{','.join(format_expr(i) for i in e.indices)}]"
    assert isinstance(e, Call)
    if e.op in INFIX:
        sym, p = INFIX[e.op]
        a, b = e.args
        left = format_expr(a)
        if _prec(a) < p or (_prec(a) == p and e.op in _NON_ASSOCIATIVE_LEFT):
            left = f"({left})"
        right = format_expr(b)
        if _prec(b) <= p:
            right = f"({right})"
        return f"{left} {sym} {right}"
    if e.op in PREFIX:
        sym, p = PREFIX[e.op]
        inner = format_expr(e.args[0])
        if _prec(e.args[0]) < p:
            inner = f"({inner})"
        return f"{sym}{inner}"
    return f"{e.op}({', '.join(format_expr(a) for a in e.args)})"


def format_type(t: TensorDecl) -> str:
    return f"{t.dtype}[{','.join(str(s) for s in t.shape)}]"


def _loop_item(loop: Loop) -> str:
    text = f"{loop.iterator} in {format_expr(loop.lower)}:{format_expr(loop.upper)} {loop.kind}"
    if loop.tile is not None:
        text += f" tile {loop.tile}"
    if loop.mapping is not None:
        text += f" @{loop.mapping}"
    if loop.launch is not None:
        text += f" launch heaviest-first group {loop.launch.group}"
    if loop.state is not None:
        parts = [f"{k} {', '.join(names)}" for k, names in
                 (("running", loop.state.running), ("previous", loop.state.previous), ("rescaled", loop.state.rescaled))
                 if names]
        text += f" state [{'; '.join(parts)}]"
    if loop.superseded:
        text += f" superseded [{', '.join(loop.superseded)}]"
    if loop.ranges:
        items = [f"{format_expr(r.lower)}:{format_expr(r.upper)} {'masked' if r.masked else 'full'}"
                 for r in loop.ranges]
        text += f" tiles [{', '.join(items)}]"
    if loop.bounds:
        items = [f"{format_expr(b.operand)} in {format_expr(b.lower)}:{format_expr(b.upper)}" for b in loop.bounds]
        text += f" bounds [{', '.join(items)}]"
    if loop.tile_test is not None:
        test = loop.tile_test
        certain = "" if test.certain is None else f"; certain {format_expr(test.certain)}"
        text += f" test [possible {format_expr(test.possible)}{certain}]"
    return text


def format_stmt(s: Stmt) -> str:
    text = f"{s.name}: {format_expr(s.target)} {s.op} {format_expr(s.expr)}"
    if s.fold_scale is not None:
        text += f" then * {format_expr(s.fold_scale)}"
    if s.scale is not None:
        text += f" rescale {format_expr(s.scale)}"
    if s.dot is not None:
        text += f" as dot over {s.dot}"
    if isinstance(s.tag, Given):
        text += " as given"
    elif isinstance(s.tag, LibraryCall):
        text += f" as library {s.tag.op}"
    elif s.tag is not None:
        text += " as nan fixup"
    return text


def _format_body(body: tuple[Node, ...], depth: int, out: list[str]) -> None:
    pad = "  " * depth
    for node in body:
        if isinstance(node, Stmt):
            out.append(pad + format_stmt(node))
        elif isinstance(node, Guard):
            out.append(f"{pad}if {format_expr(node.cond)}")
            _format_body(node.body, depth + 1, out)
        else:
            chain = [node]
            while (len(chain[-1].body) == 1 and isinstance(chain[-1].body[0], Loop)
                   and chain[-1].body[0].kind == node.kind and chain[-1].body[0].mapping == node.mapping):
                chain.append(chain[-1].body[0])
            out.append(pad + "for " + ", ".join(_loop_item(l) for l in chain))
            _format_body(chain[-1].body, depth + 1, out)


def format_program(p: Program) -> str:
    ins = ", ".join(f"{t.name}: {format_type(t)}" + (f" >= {t.at_least!r}" if t.at_least is not None else "")
                    for t in p.inputs)
    outs = ", ".join(f"{t.name}: {format_type(t)}" for t in p.outputs)
    defined = dict(p.defs)
    sizes = f"[{', '.join(n + (f' = {defined[n]}' if n in defined else '') for n in p.params)}]" if p.params else ""
    lines = [f"program {p.name}{sizes}({ins}) -> ({outs})"]
    for t in p.temps:
        lines.append(f"  {'local' if t.storage == 'local' else 'buffer'} {t.name}: {format_type(t)}")
    _format_body(p.body, 1, lines)
    return "\n".join(lines)


def format_canonical(p: Program) -> str:
    """The text of ``p`` with its name and its tensors' names replaced by positional ones (``p``;
    ``t0``, ``t1``, ... in declaration order): programs equal up to names print alike (a model's
    layers, cut apart, are one program each; they share a tuning choice)."""
    names = {t.name: f"t{k}" for k, t in enumerate(p.tensors)}
    text = format_program(p.replace(name="p"))
    # a tensor's name is followed by its index or its type; an operator's by its arguments
    return re.sub(r"\b([A-Za-z_][A-Za-z0-9_]*)(?=[\[:])", lambda m: names.get(m.group(1), m.group(1)), text)
