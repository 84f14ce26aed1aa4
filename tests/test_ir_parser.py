"""Tests of :mod:`flashlight.ir.parser`: printer round trips, structural equality and errors."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest

from flashlight.ir import dtypes, parse
from flashlight.ir import expr as E
from flashlight.ir.expr import Call, Const, Expr, Iter, Load, call, const, index
from flashlight.ir.nodes import Guard, Loop, Program, Stmt, TensorDecl
from flashlight.ir.combiners import ASSIGN_OPS
from flashlight.ir.parser import ParseError, parse_expr, parse_program


def roundtrip(p: Program) -> Program:
    text = str(p)
    q = parse_program(text)
    assert str(q) == text
    return q


def x(*idx: Expr) -> Load:
    return Load("x", tuple(idx))


i0, i1, i2 = Iter("i0"), Iter("i1"), Iter("i2")


# {{{ programs

def attention() -> Program:
    tensors = (
        TensorDecl("q", "f32", (2, 7, 4), "input"),
        TensorDecl("k", "bf16", (2, 5, 4), "input"),
        TensorDecl("out0", "f32", (2, 7), "output"),
        TensorDecl("out1", "f32", (), "output"),
        TensorDecl("s", "f32", (2, 7, 5), "temp"),
        TensorDecl("m", "f32", (2, 7), "temp", "local"),
        TensorDecl("l", "f32", (2, 7), "temp", "local"),
    )
    s = Load("s", (i0, i1, i2))
    m = Load("m", (i0, i1))
    qk = call("mul", Load("q", (i0, i1, Iter("i3"))), call("f32", Load("k", (i0, i2, Iter("i3")))))
    body = (
        Loop("i0", index(0), index(2), "parallel", (
            Loop("i1", index(0), index(7), "parallel", (
                Loop("i2", index(0), index(5), "parallel", (
                    Loop("i3", index(0), index(4), "reduce", (
                        Stmt("S0", s, "+=", qk),
                    )),
                )),
                Loop("i2", index(0), E.add(i1, index(1)), "reduce", (
                    Guard(call("le", i2, i1), (
                        Stmt("S1", m, "max=", call("mul", s, Const(0.5, "f32"))),
                    )),
                ), tile=16, mapping="serial"),
                Loop("i2", index(0), index(5), "reduce", (
                    Stmt("S2", Load("l", (i0, i1)), "+=", call("exp", call("sub", s, m)),
                         scale=call("exp", call("neg", m))),
                )),
                Stmt("S3", Load("out0", (i0, i1)), "=", call("div", m, Load("l", (i0, i1)))),
            ), tile=4, mapping="block"),
        ), tile=1, mapping="grid"),
        Stmt("S4", Load("out1", ()), "=", Const(-math.inf, "f32")),
    )
    return Program("attention", tensors, body)


def test_roundtrip_attention() -> None:
    p = attention()
    q = roundtrip(p)
    assert q == p
    text = str(p)
    assert "for i0 in 0:2 parallel tile 1 @grid\n" in text
    assert "for i1 in 0:7 parallel tile 4 @block, i2 in 0:5 parallel tile 4 @block" not in text
    assert "out1[] = -inf" in text
    assert [t.role for t in q.tensors] == ["input", "input", "output", "output", "temp", "temp", "temp"]
    assert q.tensor("m").storage == "local" and q.tensor("s").storage == "global"


def test_multi_item_for_line() -> None:
    inner = Stmt("S1", Load("o", (i0, i1, i2)), "=", Const(1.0, "f32"))
    body = (Loop("i0", index(0), index(2), "parallel", (
        Loop("i1", index(0), index(3), "parallel", (
            Loop("i2", index(0), index(4), "parallel", (inner,), tile=2),
        ), tile=2),
    ), tile=2),)
    p = Program("nest", (TensorDecl("o", "f32", (2, 3, 4), "output"),), body)
    text = str(p)
    assert text.splitlines()[1] == ("  for i0 in 0:2 parallel tile 2, i1 in 0:3 parallel tile 2, "
                                    "i2 in 0:4 parallel tile 2")
    assert roundtrip(p) == p


def test_nested_for_lines_with_same_kind_are_merged() -> None:
    text = ("program p() -> (o: f32[2,3])\n"
            "  for i0 in 0:2 parallel\n"
            "    for i1 in 0:3 parallel\n"
            "      S1: o[i0,i1] = 1.0")
    p = parse_program(text)
    assert str(p) == ("program p() -> (o: f32[2,3])\n"
                      "  for i0 in 0:2 parallel, i1 in 0:3 parallel\n"
                      "    S1: o[i0,i1] = 1.0")
    assert p == parse_program(str(p))


def test_statement_ops_and_scalar_tensors() -> None:
    tensors = (TensorDecl("a", "i32", (), "input"), TensorDecl("o", "i32", (), "output"))
    body = tuple(Stmt(f"S{k}", Load("o", ()), op, Load("a", ()))
                 for k, op in enumerate(ASSIGN_OPS))
    body += (Stmt("S9", Load("o", ()), "max=", Load("a", ()), scale=Const(3, "i32")),)
    p = Program("scalars", tensors, body)
    assert "S2: o[] *= a[]" in str(p) and "max= a[] rescale i32(3)" in str(p)
    assert roundtrip(p) == p


def test_guards_nested_and_empty_bodies() -> None:
    cond = call("and", call("lt", i0, index(3)), call("not", call("eq", i0, index(1))))
    body = (
        Loop("i0", index(0), index(8), "seq", (
            Guard(cond, (Guard(call("isnan", Load("x", (i0,))), (
                Stmt("S1", Load("o", (i0,)), "=", Const(0.0, "f32")),)),)),
            Guard(Const(True, "b1"), ()),
            Loop("i1", index(0), index(0), "seq", ()),
        )),
        Loop("i9", index(1), index(2), "reduce", ()),
    )
    p = Program("g", (TensorDecl("x", "f32", (8,), "input"), TensorDecl("o", "f32", (8,), "output")), body)
    assert "if i0 < 3 & ~(i0 == 1)" in str(p)
    assert roundtrip(p) == p


def test_an_input_carries_a_lower_bound() -> None:
    """A fact proved where the input was computed (a softmax's saved row sum is at least 1)."""
    text = "program p(x: f32[4], l: f32[4] >= 1.0) -> (o: f32[4])\n  for i in 0:4 parallel\n    S: o[i] = x[i] / l[i]"
    p = parse(text)
    assert p.tensor("l").at_least == 1.0 and p.tensor("x").at_least is None
    assert str(p) == text and roundtrip(p) == p


def test_a_given_states_what_an_input_holds_and_runs_nowhere() -> None:
    """``as given``: a statement about an input (a saved forward output), never run; writing a
    temporary with it, or an input without it, is malformed."""
    from flashlight.ir.interpret import interpret
    from flashlight.ir.nodes import Given
    from flashlight.ir.verify import VerificationError, verify

    text = ("program p(x: f32[4,3], o: f32[4]) -> (y: f32[4])\n  buffer w: f32[4]\n"
            "  for i in 0:4 parallel\n    for j in 0:3 reduce\n      D: w[i] += x[i,j]\n"
            "  for i in 0:4 parallel\n    G: o[i] = w[i] as given\n"
            "  for i in 0:4 parallel\n    S: y[i] = o[i] * 2.0")
    p = parse(text)
    assert isinstance(p.statements()[1].tag, Given) and str(p) == text and roundtrip(p) == p
    verify(p)
    x, o = np.ones((4, 3), np.float32), np.arange(4, dtype=np.float32)
    assert (interpret(p, {"x": x, "o": o})["y"] == 2 * o).all()  # o as given, not as G computes it
    for bad, message in ((text.replace("G: o[i] = w[i] as given", "G: o[i] = w[i]"), "writes the input 'o'"),
                         (text.replace("G: o[i]", "G: w[i]"), "'as given' states what an input holds")):
        with pytest.raises(VerificationError, match=message):
            verify(parse(bad))


def test_empty_program() -> None:
    p = Program("empty", (), ())
    assert str(p) == "program empty() -> ()"
    assert roundtrip(p) == p


def test_affine_and_quasi_affine_bounds_and_indices() -> None:
    lin = E.add(E.mul(index(3), i0), i1)
    idx = (E.floordiv(lin, 3), E.mod(lin, 3), E.sub(E.neg(i0), index(2)), E.sub(E.mul(index(2), i1), i0))
    body = (Loop("i0", index(0), index(4), "parallel", (
        Loop("i1", E.sub(i0, index(1)), E.add(E.mul(index(2), i0), index(3)), "seq", (
            Stmt("S1", Load("o", idx), "=", Load("x", (lin,))),
        )),
    )),)
    tensors = (TensorDecl("x", "f32", (16,), "input"), TensorDecl("o", "f32", (4, 3, 4, 4), "output"))
    p = Program("aff", tensors, body)
    text = str(p)
    assert "(3 * i0 + i1) // 3" in text and "-i0 - 2" in text and "2 * i1 - i0" in text
    assert roundtrip(p) == p


def test_names_that_look_like_keywords() -> None:
    # Statement and tensor names may be keywords: a statement is 'NAME:', a load 'NAME['.
    tensors = (TensorDecl("for", "f32", (2,), "input"), TensorDecl("inf", "f32", (2,), "input"),
               TensorDecl("buffer", "f32", (2,), "output"), TensorDecl("exp", "f32", (2,), "temp"))
    it = Iter("tile")
    body = (Loop("tile", index(0), index(2), "parallel", (
        Stmt("if", Load("exp", (it,)), "=", call("exp", Load("inf", (it,)))),
        Stmt("for", Load("buffer", (it,)), "+=", Load("for", (it,)), scale=Load("exp", (it,))),
    ), tile=2),)
    p = Program("program", tensors, body)
    assert roundtrip(p) == p


def test_blank_lines_and_trailing_newline_are_ignored() -> None:
    p = attention()
    assert parse_program("\n" + str(p).replace("\n  buffer", "\n\n  buffer") + "\n") == p
    assert parse(str(p)) == p


def test_comment_lines_are_ignored_and_dropped_by_a_round_trip() -> None:
    text = ("// RUN: a directive for the file-driven tests\n"
            "program p(x: f32[4,5]) -> (o: f32[4])\n"
            "  # a comment at any indentation, even one that is not a multiple of two\n"
            "   // another\n"
            "  for i in 0:4 parallel\n"
            "    for j in 0:5 reduce\n"
            "# between a loop and its body\n"
            "      S: o[i] += x[i,j] // 2.0\n")
    p = parse_program(text)
    assert "#" not in str(p) and "RUN" not in str(p)
    assert "S: o[i] += x[i,j] // 2.0" in str(p), "'//' inside a line is floor division, not a comment"
    assert roundtrip(p) == p
    with pytest.raises(ParseError):
        parse_program("program p() -> (o: f32[])\n  S: o[] = 1.0  # trailing comments are not comments\n")

# }}}


# {{{ expressions

a, b, c = Load("a", (i0,)), Load("b", (i0,)), Load("c", (i0,))


@pytest.mark.parametrize("e, text", [
    (call("sub", a, call("sub", b, c)), "a[i0] - (b[i0] - c[i0])"),
    (call("sub", call("sub", a, b), c), "a[i0] - b[i0] - c[i0]"),
    (call("div", a, call("mul", b, c)), "a[i0] / (b[i0] * c[i0])"),
    (call("floordiv", a, call("mod", b, c)), "a[i0] // (b[i0] % c[i0])"),
    (call("mul", call("add", a, b), c), "(a[i0] + b[i0]) * c[i0]"),
    (call("or", a, call("or", b, c)), "a[i0] | (b[i0] | c[i0])"),
    (call("lt", call("lt", a, b), c), "(a[i0] < b[i0]) < c[i0]"),
    (call("eq", a, call("ne", b, c)), "a[i0] == (b[i0] != c[i0])"),
    (call("and", call("ge", a, b), call("gt", b, c)), "a[i0] >= b[i0] & b[i0] > c[i0]"),
    (call("neg", call("add", a, b)), "-(a[i0] + b[i0])"),
    (call("neg", call("neg", a)), "--a[i0]"),
    (call("not", call("not", a)), "~~a[i0]"),
    (call("mul", call("neg", a), b), "-a[i0] * b[i0]"),
    (call("sub", a, Const(-0.5, "f32")), "a[i0] - -0.5"),
    (call("mul", Const(-2.0, "f32"), a), "-2.0 * a[i0]"),
    (call("add", a, Const(1e-05, "f32")), "a[i0] + 1e-05"),
    (call("mul", a, Const(1e20, "f64")), "a[i0] * f64(1e+20)"),
    (call("max", a, Const(-math.inf, "bf16")), "max(a[i0], bf16(-inf))"),
    (call("where", call("isinf", a), Const(math.nan, "f32"), Const(math.inf, "f32")),
     "where(isinf(a[i0]), nan, inf)"),
    (call("where", Const(True, "b1"), Const(False, "b1"), call("b1", a)), "where(true, false, b1(a[i0]))"),
    (call("pow", call("exp2", a), call("atan2", b, c)), "pow(exp2(a[i0]), atan2(b[i0], c[i0]))"),
    (const(0.5, "f16"), "f16(0.5)"),
    (const(3, "i32"), "i32(3)"),
    (const(-3, "u8"), "u8(-3)"),
    (const(-0.0, "f32"), "-0.0"),
    (const(-(2 ** 63), "i64"), "-9223372036854775808"),
    (Call("neg", (Const(0.5, "f16"),)), "-f16(0.5)"),
    (Call("neg", (Const(-2, "i64"),)), "--2"),
    (call("neg", Const(True, "b1")), "-true"),
    (call("not", Const(-1, "i8")), "~i8(-1)"),
    (Load("s", ()), "s[]"),
    (Load("s", (Load("idx", (i0,)), E.floordiv(E.add(E.mul(index(3), i0), i1), 3))),
     "s[idx[i0],(3 * i0 + i1) // 3]"),
    (E.sub(E.neg(E.mul(index(2), i0)), i1), "-(2 * i0) - i1"),
    (E.add(i0, E.floordiv(i1, 4)), "i0 + i1 // 4"),
    (E.mul(E.mod(i1, 4), index(3)), "i1 % 4 * 3"),
    (call("add", Iter("inf_"), Iter("nan2")), "inf_ + nan2"),
    (Load("inf", (Load("nan", ()),)), "inf[nan[]]"),
])
def test_expression_roundtrip(e: Expr, text: str) -> None:
    assert str(e) == text
    assert parse_expr(text) == e
    assert str(parse_expr(text)) == text


@pytest.mark.parametrize("text, expected", [
    ("f16(0.5)", Const(0.5, "f16")),
    ("bf16(-inf)", Const(-math.inf, "bf16")),
    ("i32(3)", Const(3, "i32")),
    ("f32(2)", Const(2.0, "f32")),
    ("-0.5", Const(-0.5, "f32")),
    ("-7", Const(-7, "i64")),
    ("-inf", Const(-math.inf, "f32")),
    ("nan", Const(math.nan, "f32")),
    ("2 + 3 * i0 - i0", E.add(E.mul(index(2), i0), index(2))),
    ("i0 * 3 + 1 - 1", E.mul(index(3), i0)),
    ("-(i0 + 1)", E.sub(E.neg(i0), index(1))),
    ("((a[i0]))", a),
    ("  max( a[ i0 ] ,b[i0])  ", Call("max", (a, b))),
    ("a[i0] < b[i0] == true", None),
])
def test_expression_values(text: str, expected: Expr | None) -> None:
    if expected is None:
        with pytest.raises(ParseError, match="cannot be chained"):
            parse_expr(text)
    else:
        assert parse_expr(text) == expected


def _random_expr(rng: random.Random, depth: int) -> Expr:
    """A random expression built with the builders, as passes build them."""
    if depth == 0 or rng.random() < 0.2:
        kind = rng.randrange(6)
        if kind == 0:
            return Iter(rng.choice(["i0", "i1", "i2"]))
        if kind == 1:
            return index(rng.randint(-5, 5))
        if kind == 2:
            dtype = rng.choice(dtypes.FLOATS)
            return const(rng.choice([0.5, -0.5, 1e-05, -0.0, 3.0, math.inf, -math.inf, math.nan]), dtype)
        if kind == 3:
            return const(rng.randint(-9, 9), rng.choice(dtypes.SIGNED + (dtypes.BOOL,)))
        if kind == 4:
            return Load("s", ())
        return Load("x", tuple(_random_expr(rng, 1) for _ in range(rng.randint(1, 2))))
    kind = rng.randrange(5)
    if kind == 0:
        op = rng.choice(list(E.INFIX))
        if op in ("floordiv", "mod") and rng.random() < 0.5:
            return {"floordiv": E.floordiv, "mod": E.mod}[op](_random_expr(rng, depth - 1), rng.randint(1, 4))
        return call(op, _random_expr(rng, depth - 1), _random_expr(rng, depth - 1))
    if kind == 1:
        return call(rng.choice(list(E.PREFIX)), _random_expr(rng, depth - 1))
    if kind == 2:
        op = rng.choice(E.UNARY_FUNCS + E.CASTS)
        arg = _random_expr(rng, depth - 1)
        if op in E.CASTS and isinstance(arg, Const) and not math.isfinite(arg.value):
            arg = Const(1.5, arg.dtype)  # inf and nan have no integer casts
        return call(op, arg)
    if kind == 3:
        return call(rng.choice(E.BINARY_FUNCS), _random_expr(rng, depth - 1), _random_expr(rng, depth - 1))
    return call("where", *(_random_expr(rng, depth - 1) for _ in range(3)))


def test_random_builder_expressions_roundtrip() -> None:
    rng = random.Random(1234)
    for _ in range(2000):
        e = _random_expr(rng, 4)
        text = str(e)
        parsed = parse_expr(text)
        assert str(parsed) == text
        assert parsed == e, text

# }}}


# {{{ errors

def _error(text: str, expr: bool = False) -> ParseError:
    with pytest.raises(ParseError) as info:
        (parse_expr if expr else parse_program)(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"line {err.line}, column {err.column}: ")
    return err


HEAD = "program p(x: f32[4]) -> (o: f32[4])\n"


@pytest.mark.parametrize("text, line, column, message", [
    ("", 1, 1, "expected the header 'program NAME(...) -> (...)', found end of input"),
    ("  for i in 0:4 parallel\n", 1, 3, "expected the header"),
    ("prog p() -> ()", 1, 1, "expected the header 'program NAME(...) -> (...)', found 'prog'"),
    ("program p(x: f33[4]) -> ()", 1, 14, "unknown dtype 'f33'; expected one of f64, f32"),
    ("program p(x: f32[4) -> ()", 1, 19, "expected ']' after the shape, found ')'"),
    ("program p(x: f32[4], ) -> ()", 1, 22, "expected a tensor name, found ')'"),
    ("program p(x: f32[4] >= y) -> ()", 1, 24, "expected a number after '>=' (a lower bound of x's values)"),
    ("program p(x f32[4]) -> ()", 1, 13, "expected ':' after the tensor name, found 'f32'"),
    ("program p() (o: f32[])", 1, 13, "expected '->' between inputs and outputs, found '('"),
    ("program p() -> () extra", 1, 19, "expected end of line, found 'extra'"),
    (HEAD + "  buffer t: f32[2.5]", 2, 17, "expected a dimension size, found '2.5'"),
    (HEAD + "  for i in 0:4 parallel\n     S1: o[i] = x[i]", 3, 6,
     "expected indentation by a multiple of 2 spaces, found 5 spaces"),
    (HEAD + "  for i in 0:4 parallel\n\tS1: o[i] = x[i]", 3, 1, "expected spaces for indentation, found tab"),
    (HEAD + "  for i in 0:4 parallel\n      S1: o[i] = x[i]", 3, 7,
     "unexpected indentation: expected 4 spaces, found 6"),
    (HEAD + "  S0: o[] = 1.0\n    S1: o[] = 2.0", 3, 5, "unexpected indentation: expected 2 spaces, found 4"),
    (HEAD + "    S1: o[] = 2.0", 2, 5, "unexpected indentation: expected 2 spaces, found 4"),
    (HEAD + "S1: o[] = 2.0", 2, 1, "expected a body line indented by 2 spaces or end of input, found 'S1'"),
    (HEAD + "  for i in 0:4 paralel\n    S1: o[i] = x[i]", 2, 16,
     "unknown loop kind 'paralel'; expected one of parallel, reduce, seq"),
    (HEAD + "  for i in 0:4 parallel @gird\n    S1: o[i] = x[i]", 2, 26,
     "unknown mapping 'gird'; expected one of grid, serial, block"),
    (HEAD + "  for i in 0:4 parallel tile x\n    S1: o[i] = x[i]", 2, 30, "expected a tile size, found 'x'"),
    (HEAD + "  for i in 0:4 parallel j in 0:4 seq", 2, 25,
     "expected 'tile', '@', ',' or end of line after the loop, found 'j'"),
    (HEAD + "  for i 0:4 parallel", 2, 9, "expected 'in' after the loop iterator, found '0'"),
    (HEAD + "  for i in 0 4 parallel", 2, 14, "expected ':' between the loop bounds, found '4'"),
    (HEAD + "  for i in 0:4", 2, 15, "expected a loop kind (parallel, reduce, seq), found end of line"),
    (HEAD + "  for i in 0:4 parallel\n    S1: o[i,] = x[i]", 3, 13, "expected an expression, found ']'"),
    (HEAD + "  for i in 0:4 parallel\n    S1: o[i = x[i]", 3, 13, "expected ']' after index list, found '='"),
    (HEAD + "  S1: o[0 1] = 1.0", 2, 11, "expected ']' after index list, found '1'"),
    (HEAD + "  S1: o[0] -= 1.0", 2, 12,
     "expected an assignment operator (=, +=, *=, max=, min=), found '-'"),
    (HEAD + "  S1: o = 1.0", 2, 7, "expected a target 'tensor[indices]', found 'o'"),
    (HEAD + "  S1: o[0] = 1.0 scale 2.0", 2, 18, "expected 'then *', 'rescale', 'as dot over', 'as nan fixup', 'as given' or 'as library', end of line, found 'scale'"),
    (HEAD + "  S1: o[0] = 1.0 rescale 2.0)", 2, 29, "expected 'then *', 'as dot over', 'as nan fixup', 'as given' or 'as library', end of line, found ')'"),
    (HEAD + "  S1: o[0] = foo(1.0)", 2, 14, "unknown function 'foo'; expected one of exp,"),
    (HEAD + "  S1: o[0] = add(1.0, 2.0)", 2, 14, "unknown function 'add'; write the operator '+' instead"),
    (HEAD + "  S1: o[0] = exp(1.0, 2.0)", 2, 14, "function 'exp' takes 1 argument, found 2"),
    (HEAD + "  S1: o[0] = where(true, 1.0)", 2, 14, "function 'where' takes 3 arguments, found 2"),
    (HEAD + "  S1: o[0] = f16()", 2, 14, "cast to f16 takes 1 argument, found 0"),
    (HEAD + "  S1: o[0] = i32(nan)", 2, 14, "cannot cast nan to i32"),
    (HEAD + "  S1: o[0] = 1.0 ^ 2.0", 2, 18, "unexpected character '^'"),
    (HEAD + "  S1: o[0] = (1.0 + 2.0", 2, 24, "expected ')' to close the parenthesis, found end of line"),
    (HEAD + "  S1: o[0] = 1.0 +", 2, 19, "expected an expression, found end of line"),
    (HEAD + "  if 0 < 1 < 2\n    S1: o[0] = 1.0", 2, 12, "comparisons cannot be chained; found '<'"),
    (HEAD + "  S1: o[0] = 1.0\n  buffer t: f32[2]", 3, 3,
     "tensor declarations must come right after the header, found 'buffer'"),
    (HEAD + "  while i\n", 2, 3,
     "expected a statement 'NAME: tensor[indices] OP expr', 'for' or 'if', found 'while'"),
])
def test_program_errors(text: str, line: int, column: int, message: str) -> None:
    err = _error(text)
    assert (err.line, err.column) == (line, column), str(err)
    assert message in str(err)


@pytest.mark.parametrize("text, column, message", [
    ("a[i0,", 6, "expected an expression, found end of line"),
    ("a[i0 i1]", 6, "expected ']' after index list, found 'i1'"),
    ("  a[i0] )", 9, "expected end of line, found ')'"),
    ("max(a[i0] b[i0])", 11, "expected ')' after the arguments, found 'b'"),
    ("a[i0] == b[i0] != c[i0]", 16, "comparisons cannot be chained"),
    ("", 1, "expected an expression, found end of line"),
    ("a[i0] $ 2", 7, "unexpected character '$'"),
])
def test_expression_errors(text: str, column: int, message: str) -> None:
    err = _error(text, expr=True)
    assert (err.line, err.column) == (1, column), str(err)
    assert message in err.message

# }}}


def test_tile_bounds_parse_and_verify() -> None:
    from flashlight.ir import VerificationError, verify

    text = """\
program p(x: f32[2,8], seg: i64[2,8]) -> (out: f32[2,8])
  buffer lo: i64[2,2]
  buffer hi: i64[2,2]
  for b in 0:2 parallel tile 1 @grid, i in 0:8 parallel tile 4 @grid
    for j in 0:8 reduce tile 4 @serial tiles [0:2 masked] bounds [seg[b,j] in lo[b,j // 4]:hi[b,j // 4]]
      if seg[b,i] == seg[b,j]
        S: out[b,i] += x[b,j]"""
    prog = parse_program(text)
    loop = prog.body[0].body[0].body[0]
    (b,) = loop.bounds
    assert b.operand == Load("seg", (Iter("b"), Iter("j"))) and b.lower.tensor == "lo" and b.upper.tensor == "hi"
    assert str(prog) == text
    verify(prog)
    with pytest.raises(VerificationError, match="only tiled serial loops list tile bounds"):
        verify(parse_program(text.replace("@serial tiles [0:2 masked]", "@block")))
    with pytest.raises(VerificationError, match="another dtype"):
        verify(parse_program(text.replace("buffer hi: i64[2,2]", "buffer hi: f32[2,2]")))
    with pytest.raises(ParseError, match="after a tile bound's operand"):
        parse_program(text.replace("seg[b,j] in lo", "seg[b,j] lo"))


def test_a_local_tensor_touched_by_two_kernels_is_malformed() -> None:
    """Registers of one kernel are gone when the next starts: a local read by another top-level
    nest, even only in a guard, is an error at compile time, not a crash at launch."""
    from flashlight.ir import VerificationError, verify

    text = """\
program p(x: f32[4,8]) -> (out: f32[4,8])
  local n: i64[4]
  for i in 0:4 parallel tile 1 @grid
    for j in 0:8 reduce tile 8 @block
      S0: n[i] += i64(x[i,j] > 0.0)
  for i in 0:4 parallel tile 1 @grid, j in 0:8 parallel tile 8 @grid
    if n[i] > 0
      S1: out[i,j] = x[i,j]"""
    with pytest.raises(VerificationError, match="local tensor 'n' is touched by top-level nests 0, 1"):
        verify(parse_program(text))
    verify(parse_program(text.replace("local n", "buffer n")))


SCALED_MAX_AND_FIXUP = """\
program p(S: f32[2,8,8]) -> (o: f32[2,8])
  buffer m: f32[2,8]
  buffer l: f32[2,8]
  for h in 0:2 parallel tile 1 @grid, i in 0:8 parallel tile 4 @grid
    for j in 0:8 reduce tile 4 @serial state [running m] superseded [l]
      if j < i
        M: m[h,i] max= S[h,i,j] then * 0.125
      if j < i
        L: l[h,i] += exp(S[h,i,j] * 0.125 - m[h,i])
    L_empty: l[h,i] = where(i >= 1 & m[h,i] == -inf, nan, l[h,i]) as nan fixup
    O: o[h,i] = l[h,i]"""


def test_fold_scales_fixup_tags_and_superseded_stores_round_trip_and_verify() -> None:
    from flashlight.ir import verify
    from flashlight.ir.nodes import NanFixup, walk_loops

    prog = verify(parse_program(SCALED_MAX_AND_FIXUP))
    assert str(prog) == SCALED_MAX_AND_FIXUP
    stmts = {s.name: s for s in prog.statements()}
    assert stmts["M"].fold_scale == Const(0.125, "f32") and stmts["M"].expr == Load("S", (Iter("h"), Iter("i"), Iter("j")))
    assert stmts["L_empty"].tag == NanFixup() and stmts["L"].tag is None
    assert [l.superseded for l in walk_loops(prog.body) if l.mapping == "serial"] == [("l",)]


@pytest.mark.parametrize("old, new, message", [
    ("then * 0.125", "then * -0.125", "'then * -0.125' needs a max= or min= of floats and a positive finite constant"),
    ("then * 0.125", "then * inf", "needs a max= or min= of floats and a positive finite constant"),
    ("L: l[h,i] += exp(S[h,i,j] * 0.125 - m[h,i])", "L: l[h,i] += exp(S[h,i,j] - m[h,i]) then * 0.125",
     "'then * 0.125' needs a max= or min="),
    ("m[h,i] == -inf, nan", "m[h,i] == 0.0, nan", "tagged 'as nan fixup' but not of the form"),
    ("where(i >= 1 & m[h,i] == -inf, nan, l[h,i])", "where(m[h,i] == -inf, 0.0, l[h,i])", "not of the form"),
    ("where(i >= 1 & m[h,i] == -inf, nan, l[h,i])", "where(m[h,i] == -inf, nan, l[h,0])", "not of the form"),
    # the fixup's tag, not its shape, makes it one: untagged, it supersedes nothing
    (" as nan fixup", "", "no NaN fixup of all of l[h,i] follows the loop"),
    ("    L_empty:", "    P: o[h,i] = l[h,i]\n    L_empty:", "no NaN fixup of all of l[h,i] follows the loop"),
    ("    L_empty:", "    if i >= 2\n      L_empty:", "no NaN fixup of all of l[h,i] follows the loop"),
    ("superseded [l]", "superseded [m, o]", "superseded o is no accumulator the loop carries"),
])
def test_verifier_rejects_malformed_fold_scales_fixups_and_superseded_stores(old: str, new: str, message: str) -> None:
    from flashlight.ir import VerificationError, verify

    assert old in SCALED_MAX_AND_FIXUP
    with pytest.raises(VerificationError, match=re.escape(message)):
        verify(parse_program(SCALED_MAX_AND_FIXUP.replace(old, new)))


def test_a_fixup_after_an_enclosing_loop_supersedes_no_store() -> None:
    """The loop runs again in the next iteration of a loop around it, before the fixup: the fixup
    does not follow each of its runs, so each run's store is needed."""
    from flashlight.ir import VerificationError, verify

    lines = SCALED_MAX_AND_FIXUP.splitlines()
    k = next(n for n, line in enumerate(lines) if line.startswith("    for j"))
    nested = lines[:k] + ["    for k in 0:2 seq"] + ["  " + line for line in lines[k:k + 5]] + lines[k + 5:]
    text = "\n".join(nested)
    with pytest.raises(VerificationError, match=re.escape("no NaN fixup of all of l[h,i] follows the loop")):
        verify(parse_program(text))


def test_a_derived_size_prints_parses_binds_and_verifies() -> None:
    """``U = 16 * P``: a size that is an affine expression of earlier ones (a paged cache's
    length), printed in the header, parsed back, bound from its definition at each call, and
    refused where it reads a later parameter or is not affine."""
    from flashlight.ir import VerificationError, verify
    from flashlight.ir.nodes import bind_sizes

    text = """program paged[P, U = 16 * P](x: f32[P,16]) -> (o: f32[1])
  for j in 0:U reduce
    M: o[0] += x[j // 16,j % 16]"""
    prog = verify(parse_program(text))
    assert str(prog) == text and prog.defs == (("U", E.mul(E.index(16), E.Iter("P"))),)
    assert bind_sizes(prog, [(3, 16)]) == {"P": 3, "U": 48}
    with pytest.raises(VerificationError, match="derived size U"):
        verify(parse_program(text.replace("[P, U = 16 * P]", "[U = 16 * P, P]")))
    with pytest.raises(VerificationError, match="derived size U"):
        verify(parse_program(text.replace("U = 16 * P", "U = P * P")))


def test_correctly_rounded_arithmetic_on_float_literals_folds_in_their_dtype():
    """``f64(1.0) / sqrt(f64(64.0))`` is its value; in f32 the value f32 arithmetic gives (not
    the double's); exp, a different dtype per argument, or bf16 literals stay calls."""
    f64 = lambda x: Const(x, "f64")  # noqa: E731
    f32 = lambda x: Const(x, "f32")  # noqa: E731
    assert call("div", f64(1.0), call("sqrt", f64(64.0))) == f64(0.125)
    assert call("div", f32(1.0), f32(3.0)) == f32(float(np.float32(1.0) / np.float32(3.0))) != f64(1.0 / 3.0)
    assert call("div", f64(1.0), f64(0.0)) == f64(math.inf)
    assert isinstance(call("exp", f64(1.0)), Call) and isinstance(call("add", f64(1.0), f32(1.0)), Call)
    assert isinstance(call("mul", Const(2.0, "bf16"), Const(3.0, "bf16")), Call)


def test_programs_equal_up_to_names_print_alike_canonically():
    """A model's layers, cut apart, are programs equal up to their names: canonically they print
    alike (the autotuner keys its choices by it), and a program that differs does not."""
    from flashlight.ir.printer import format_canonical

    layer = """\
program NAME(qA: f32[4,8], kA: f32[4,8]) -> (out0: f32[4])
  buffer exp: f32[4,4]
  for i in 0:4 parallel, j in 0:4 parallel
    S0: exp[i,j] = exp(qA[i,0] * kA[j,0])
  for i in 0:4 parallel
    for j in 0:4 reduce
      S1: out0[i] += exp[i,j]"""
    first = parse(layer.replace("NAME", "llama_part1"))
    third = parse(layer.replace("NAME", "llama_part3").replace("qA", "add_11").replace("kA", "cat_7"))
    assert format_canonical(first) == format_canonical(third)
    assert "exp(t0[i,0] * t1[j,0])" in format_canonical(first)  # the operator exp stays, the tensor is t3
    assert "t3[i,j] = exp(" in format_canonical(first)
    other = parse(layer.replace("NAME", "p").replace("qA[i,0]", "qA[i,1]"))
    assert format_canonical(other) != format_canonical(first)
