"""Tests of the reference interpreter :mod:`flashlight.ir.interpret` (numpy only)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flashlight.ir.expr import Call, Const, Expr, Iter, Load, add, call, const, index, mul, sub
from flashlight.ir.interpret import interpret, numpy_dtype, round_bf16, to_numpy
from flashlight.ir.interpret import _round_bf16_scalar
from flashlight.ir.nodes import Guard, Loop, Node, Program, Stmt, TensorDecl

# {{{ builders


def inp(name: str, dtype: str, *shape: int) -> TensorDecl:
    return TensorDecl(name, dtype, tuple(shape), "input")


def out(name: str, dtype: str, *shape: int) -> TensorDecl:
    return TensorDecl(name, dtype, tuple(shape), "output")


def tmp(name: str, dtype: str, *shape: int) -> TensorDecl:
    return TensorDecl(name, dtype, tuple(shape), "temp")


def _ix(i: str | int | Expr) -> Expr:
    if isinstance(i, str):
        return Iter(i)
    if isinstance(i, int):
        return index(i)
    return i


def ld(tensor: str, *indices: str | int | Expr) -> Load:
    return Load(tensor, tuple(_ix(i) for i in indices))


def loop(it: str, lower: int | Expr, upper: int | Expr, *body: Node, kind: str = "parallel") -> Loop:
    return Loop(it, _ix(lower), _ix(upper), kind, tuple(body))


def stmt(name: str, target: Load, op: str, expr: Expr, scale: Expr | None = None) -> Stmt:
    return Stmt(name, target, op, expr, scale)


def f32(v: float) -> Const:
    return const(v, "f32")


def f64(v: float) -> Const:
    return const(v, "f64")


def program(tensors: list[TensorDecl], *body: Node, name: str = "p") -> Program:
    return Program(name, tuple(tensors), tuple(body))


def pointwise(op: str, dtype: str, n: int, nargs: int = 1, out_dtype: str | None = None) -> Program:
    """``o[i] = op(a[i], b[i], ...)`` over ``n`` elements."""
    names = "abc"[:nargs]
    expr = Call(op, tuple(ld(x, "i") for x in names))
    return program([*(inp(x, dtype, n) for x in names), out("o", out_dtype or dtype, n)],
                   loop("i", 0, n, stmt("S", ld("o", "i"), "=", expr)))


def run1(prog: Program, **inputs: np.ndarray) -> np.ndarray:
    (result,) = interpret(prog, inputs).values()
    return result

# }}}


# {{{ reductions and kernels


def matmul(dtype: str, m: int, k: int, n: int) -> Program:
    return program(
        [inp("a", dtype, m, k), inp("b", dtype, k, n), out("c", dtype, m, n)],
        loop("i", 0, m, loop("j", 0, n, loop(
            "k", 0, k, stmt("S1", ld("c", "i", "j"), "+=", mul(ld("a", "i", "k"), ld("b", "k", "j"))),
            kind="reduce"))))


@pytest.mark.parametrize(("dtype", "rtol"), [("f32", 1e-5), ("f64", 1e-12)])
def test_matmul(dtype: str, rtol: float) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((5, 7)), rng.standard_normal((7, 3))
    c = run1(matmul(dtype, 5, 7, 3), a=a, b=b)
    assert c.dtype == numpy_dtype(dtype)
    np.testing.assert_allclose(c, to_numpy(a, dtype) @ to_numpy(b, dtype), rtol=rtol, atol=rtol)


def test_matmul_f32_sums_in_f32_in_loop_order() -> None:
    a = np.array([[1.0, 1e-8, -1.0]], dtype=np.float32)
    b = np.ones((3, 1), dtype=np.float32)
    # ((0 + 1) + 1e-8) - 1 == 0 in f32, but 1e-8 in f64
    assert run1(matmul("f32", 1, 3, 1), a=a, b=b)[0, 0] == 0.0
    assert run1(matmul("f64", 1, 3, 1), a=a, b=b)[0, 0] == pytest.approx(1e-8, rel=1e-6)


def softmax_two_pass(n: int, m: int) -> Program:
    shifted = sub(ld("x", "i", "j"), ld("m", "i"))
    return program(
        [inp("x", "f64", n, m), out("o", "f64", n, m), tmp("m", "f64", n), tmp("l", "f64", n)],
        loop("i", 0, n, loop("j", 0, m, stmt("S1", ld("m", "i"), "max=", ld("x", "i", "j")), kind="reduce")),
        loop("i", 0, n, loop("j", 0, m, stmt("S2", ld("l", "i"), "+=", call("exp", shifted)), kind="reduce")),
        loop("i", 0, n, loop("j", 0, m, stmt(
            "S3", ld("o", "i", "j"), "=", Call("div", (call("exp", shifted), ld("l", "i")))))),
    )


def softmax_online(n: int, m: int) -> Program:
    shifted = sub(ld("x", "i", "j"), ld("m", "i"))
    return program(
        [inp("x", "f64", n, m), out("o", "f64", n, m),
         tmp("m", "f64", n), tmp("mp", "f64", n), tmp("l", "f64", n)],
        loop("i", 0, n, loop(
            "j", 0, m,
            stmt("S0", ld("mp", "i"), "=", ld("m", "i")),
            stmt("S1", ld("m", "i"), "max=", ld("x", "i", "j")),
            stmt("S2", ld("l", "i"), "+=", call("exp", shifted),
                 scale=call("exp", sub(ld("mp", "i"), ld("m", "i")))),
            kind="seq")),
        loop("i", 0, n, loop("j", 0, m, stmt(
            "S3", ld("o", "i", "j"), "=", Call("div", (call("exp", shifted), ld("l", "i")))))),
    )


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_softmax_two_pass() -> None:
    x = np.random.default_rng(1).standard_normal((4, 6)) * 3
    np.testing.assert_allclose(run1(softmax_two_pass(4, 6), x=x), np_softmax(x), rtol=1e-12)


def test_online_softmax_matches_two_pass() -> None:
    x = np.random.default_rng(2).standard_normal((4, 9)) * 5
    two = interpret(softmax_two_pass(4, 9), {"x": x}, return_temps=True)
    one = interpret(softmax_online(4, 9), {"x": x}, return_temps=True)
    assert set(one) == {"o", "m", "mp", "l"}
    np.testing.assert_allclose(one["m"], x.max(axis=1))
    np.testing.assert_allclose(one["l"], two["l"], rtol=1e-12)
    np.testing.assert_allclose(one["o"], np_softmax(x), rtol=1e-12)


def test_online_max_rescale() -> None:
    # t = max(t + scale, x[j]): a running max that decays by 1 per step
    x = np.array([5.0, 1.0, 3.5, 0.0, 2.0])
    prog = program([inp("x", "f64", 5), out("t", "f64")],
                   loop("j", 0, 5, stmt("S", ld("t"), "max=", ld("x", "j"), scale=f64(-1.0)), kind="reduce"))
    expected = -math.inf
    for v in x:
        expected = max(expected - 1.0, v)
    assert run1(prog, x=x)[()] == expected == 2.0


def test_fold_scale_folds_then_scales() -> None:
    """``m max= x then * c`` is ``max(x) * c``, bit for bit the fold of ``x * c`` (c > 0: rounding
    is monotonic); NaN propagates, and min= scales its fold too."""
    from dataclasses import replace

    x = (np.random.default_rng(7).standard_normal((3, 7)) * 1e3).astype(np.float32)
    x[2, 4] = np.nan
    c = f32(0.1)
    for op, fold in (("max=", np.max), ("min=", np.min)):
        scaled = stmt("S", ld("m", "i"), op, mul(ld("x", "i", "j"), c))
        prog = program([inp("x", "f32", 3, 7), out("m", "f32", 3)], loop("i", 0, 3, loop("j", 0, 7, scaled, kind="reduce")))
        after = program(list(prog.tensors), loop("i", 0, 3, loop("j", 0, 7, replace(scaled, expr=ld("x", "i", "j"),
                                                                                      fold_scale=c), kind="reduce")))
        got = run1(after, x=x)
        np.testing.assert_array_equal(got, run1(prog, x=x))
        np.testing.assert_array_equal(got[:2], fold(x[:2], axis=1) * np.float32(0.1))
        assert np.isnan(got[2])


def test_causal_guard_restricts_max() -> None:
    x = np.random.default_rng(3).standard_normal((5, 5)).astype(np.float32)
    guarded = program(
        [inp("x", "f32", 5, 5), out("m", "f32", 5)],
        loop("i", 0, 5, loop("j", 0, 5, Guard(
            Call("le", (Iter("j"), Iter("i"))),
            (stmt("S", ld("m", "i"), "max=", ld("x", "i", "j")),)), kind="reduce")))
    expected = np.where(np.tril(np.ones((5, 5), bool)), x, -np.inf).max(axis=1)
    np.testing.assert_array_equal(run1(guarded, x=x), expected)
    # the same restriction as a triangular loop bound
    bounded = program(
        [inp("x", "f32", 5, 5), out("m", "f32", 5)],
        loop("i", 0, 5, loop("j", 0, add(Iter("i"), index(1)),
                             stmt("S", ld("m", "i"), "max=", ld("x", "i", "j")), kind="reduce")))
    np.testing.assert_array_equal(run1(bounded, x=x), expected)


def test_sequential_prefix_sum() -> None:
    x = np.arange(1.0, 7.0)
    prog = program(
        [inp("x", "f64", 6), out("c", "f64", 6)],
        stmt("S0", ld("c", 0), "=", ld("x", 0)),
        loop("i", 1, 6, stmt("S1", ld("c", "i"), "=", add(ld("c", sub(Iter("i"), index(1))), ld("x", "i"))),
             kind="seq"))
    np.testing.assert_array_equal(run1(prog, x=x), np.cumsum(x))


def test_reduction_targets_start_at_identity() -> None:
    # an empty reduction loop: the targets keep their initial values
    prog = program(
        [out("mx", "i32", 2), out("mn", "i8", 2), out("pr", "f32", 2), out("sm", "u8", 2), out("fm", "f16", 2)],
        loop("i", 0, 2, loop(
            "j", 0, 0,
            stmt("S1", ld("mx", "i"), "max=", const(0, "i32")),
            stmt("S2", ld("mn", "i"), "min=", const(0, "i8")),
            stmt("S3", ld("pr", "i"), "*=", f32(2.0)),
            stmt("S4", ld("sm", "i"), "+=", const(1, "u8")),
            stmt("S5", ld("fm", "i"), "min=", const(0.0, "f16")),
            kind="reduce")))
    r = interpret(prog, {})
    assert r["mx"].dtype == np.int32 and (r["mx"] == np.iinfo(np.int32).min).all()
    assert r["mn"].dtype == np.int8 and (r["mn"] == 127).all()
    assert (r["pr"] == 1.0).all() and (r["sm"] == 0).all() and (r["fm"] == np.inf).all()


def test_unwritten_data_reads_as_nan_and_zero() -> None:
    prog = program(
        [out("o", "f32", 3), out("k", "i64", 3), tmp("t", "f32", 3), tmp("u", "i64", 3)],
        loop("i", 0, 3,
             stmt("S1", ld("o", "i"), "=", add(ld("t", "i"), f32(1.0))),
             stmt("S2", ld("k", "i"), "=", add(ld("u", "i"), index(1)))))
    r = interpret(prog, {})
    assert set(r) == {"o", "k"}
    assert np.isnan(r["o"]).all() and (r["k"] == 1).all()
    assert set(interpret(prog, {}, return_temps=True)) == {"o", "k", "t", "u"}


def test_conflicting_reduction_identities_are_rejected() -> None:
    prog = program([inp("x", "f32", 3), out("o", "f32")], loop(
        "j", 0, 3, stmt("S1", ld("o"), "+=", ld("x", "j")), stmt("S2", ld("o"), "max=", ld("x", "j")),
        kind="reduce"))
    with pytest.raises(ValueError, match="S2.*identity"):
        interpret(prog, {"x": np.zeros(3)})

# }}}


# {{{ dtypes


def test_bf16_cast_rounds_to_nearest_even() -> None:
    x = np.array([1 + 2**-9, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-7 + 2**-9, np.nan, -np.inf, 3.4e38])
    prog = pointwise("bf16", "f32", len(x), out_dtype="bf16")
    o = run1(prog, a=x)
    assert o.dtype == np.float32
    np.testing.assert_array_equal(o[:4], [1.0, 1.0, 1 + 2**-6, 1 + 2**-7])
    assert np.isnan(o[4]) and o[5] == -np.inf and o[6] == np.inf  # 3e38 overflows bf16's range


def test_bf16_inputs_and_arithmetic_round() -> None:
    prog = pointwise("add", "bf16", 1, nargs=2)
    # the input 1 + 2^-9 rounds to 1; 2^-9 is exact; 1 + 2^-9 rounds back to 1
    assert run1(prog, a=np.array([1 + 2**-9]), b=np.array([2**-9]))[0] == 1.0
    assert run1(prog, a=np.array([1.0]), b=np.array([2**-7]))[0] == 1 + 2**-7


@pytest.mark.parametrize(("dtype", "n", "expected"), [("bf16", 300, 256.0), ("f16", 3000, 2048.0),
                                                      ("f32", 3000, 3000.0)])
def test_low_precision_accumulation_stalls(dtype: str, n: int, expected: float) -> None:
    prog = program([inp("x", dtype, n), out("s", dtype)],
                   loop("j", 0, n, stmt("S", ld("s"), "+=", ld("x", "j")), kind="reduce"))
    s = run1(prog, x=np.ones(n))
    assert s.dtype == numpy_dtype(dtype) and s[()] == expected


def test_round_bf16_scalar_and_vector_agree() -> None:
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 2**32, size=20000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x7FC00000, 0x7F800001, 0xFF800001,
                        0x00000001, 0x80000000, 0x3F808000, 0x3F818000, 0x7F7F8000], dtype=np.uint32)
    x = np.concatenate([bits, special]).view(np.float32)
    vector = round_bf16(x)
    scalar = np.array([_round_bf16_scalar(v) for v in x], dtype=np.float32)
    np.testing.assert_array_equal(vector.view(np.uint32), scalar.view(np.uint32))
    assert (vector.view(np.uint32) & 0xFFFF).max() == 0
    np.testing.assert_array_equal(np.isnan(vector), np.isnan(x))


def test_round_bf16_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2**32, size=20000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[~np.isnan(x)]
    expected = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(round_bf16(x), expected)


def test_f16_computes_in_f32() -> None:
    # exp in f32 rounded to f16, not numpy's float16 loops on their own
    x = np.linspace(-4, 4, 33).astype(np.float16)
    o = run1(pointwise("exp", "f16", 33), a=x)
    assert o.dtype == np.float16
    np.testing.assert_array_equal(o, np.exp(x.astype(np.float32)).astype(np.float16))


def test_output_dtypes() -> None:
    kinds = ["f64", "f32", "f16", "bf16", "i64", "i32", "i16", "i8", "u8", "b1"]
    expected = [np.float64, np.float32, np.float16, np.float32, np.int64, np.int32, np.int16,
                np.int8, np.uint8, np.bool_]
    prog = program([inp("x", "f64", 2), *(out(f"o_{k}", k, 2) for k in kinds)],
                   loop("i", 0, 2, *(stmt(f"S_{k}", ld(f"o_{k}", "i"), "=", call(k, ld("x", "i")))
                                     for k in kinds)))
    r = interpret(prog, {"x": np.array([-2.7, 0.0])})
    for k, t in zip(kinds, expected):
        assert r[f"o_{k}"].dtype == t, k
    assert list(r["o_i64"]) == [-2, 0] and list(r["o_i8"]) == [-2, 0]  # truncation toward zero
    assert list(r["o_b1"]) == [True, False]
    assert r["o_bf16"][0] == np.float32(round_bf16(-2.7))


def test_integer_wraparound() -> None:
    o = run1(pointwise("add", "i8", 2, nargs=2), a=np.array([100, -100]), b=np.array([100, -100]))
    assert o.dtype == np.int8 and list(o) == [-56, 56]
    neg = run1(pointwise("neg", "u8", 1), a=np.array([1]))
    assert neg[0] == 255

# }}}


# {{{ operators


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", ["i64", "i32"])
def test_integer_floordiv_mod_follow_python(dtype: str) -> None:
    pairs = [(a, b) for a in (-7, -6, -1, 0, 1, 6, 7) for b in (-3, -2, 2, 3)]
    a, b = (np.array(v) for v in zip(*pairs))
    q = run1(pointwise("floordiv", dtype, len(pairs), nargs=2), a=a, b=b)
    r = run1(pointwise("mod", dtype, len(pairs), nargs=2), a=a, b=b)
    assert q.dtype == numpy_dtype(dtype)
    assert list(q) == [x // y for x, y in pairs]
    assert list(r) == [x % y for x, y in pairs]
    # division by zero: numpy's 0, no warning
    zero = run1(pointwise("floordiv", dtype, 2, nargs=2), a=np.array([5, -5]), b=np.array([0, 0]))
    assert list(zero) == [0, 0]


@pytest.mark.filterwarnings("error")
def test_float_division_semantics() -> None:
    pairs = [(a, b) for a in (-7.5, -1.0, 0.0, 2.25, 7.5) for b in (-2.0, 0.5, 2.0)]
    a, b = (np.array(v) for v in zip(*pairs))
    assert list(run1(pointwise("floordiv", "f64", len(pairs), nargs=2), a=a, b=b)) == [x // y for x, y in pairs]
    assert list(run1(pointwise("mod", "f64", len(pairs), nargs=2), a=a, b=b)) == [x % y for x, y in pairs]
    d = run1(pointwise("div", "f32", 3, nargs=2), a=np.array([1.0, -1.0, 0.0]), b=np.zeros(3))
    assert d[0] == np.inf and d[1] == -np.inf and np.isnan(d[2])


UNARY_REFERENCE = {
    "exp": np.exp, "exp2": np.exp2, "expm1": np.expm1, "log": np.log, "log2": np.log2,
    "log1p": np.log1p, "sqrt": np.sqrt, "rsqrt": lambda x: 1 / np.sqrt(x), "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "erf": np.vectorize(math.erf), "abs": np.abs,
    "sin": np.sin, "cos": np.cos, "floor": np.floor, "ceil": np.ceil, "round": np.round,
    "reciprocal": lambda x: 1 / x, "neg": np.negative,
}


@pytest.mark.parametrize("op", sorted(UNARY_REFERENCE))
def test_unary_float_ops(op: str) -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 3.7, 0.01, 10.0, -30.0, 0.0])
    got = run1(pointwise(op, "f64", len(x)), a=x)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(got, UNARY_REFERENCE[op](x), rtol=1e-14, atol=0)


def test_round_is_half_to_even_and_predicates() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, np.nan, np.inf])
    r = run1(pointwise("round", "f32", 6), a=x)
    np.testing.assert_array_equal(r[:4], [0.0, 2.0, 2.0, -0.0])
    assert list(run1(pointwise("isnan", "f32", 6, out_dtype="b1"), a=x)) == [False] * 4 + [True, False]
    assert list(run1(pointwise("isinf", "f32", 6, out_dtype="b1"), a=x)) == [False] * 5 + [True]
    assert not run1(pointwise("isnan", "i64", 2, out_dtype="b1"), a=np.array([1, 2])).any()


def test_max_min_propagate_nan() -> None:
    a, b = np.array([1.0, np.nan, 3.0]), np.array([2.0, 0.0, np.nan])
    mx = run1(pointwise("max", "f32", 3, nargs=2), a=a, b=b)
    mn = run1(pointwise("min", "f32", 3, nargs=2), a=a, b=b)
    assert mx[0] == 2.0 and np.isnan(mx[1:]).all()
    assert mn[0] == 1.0 and np.isnan(mn[1:]).all()
    red = program([inp("x", "f32", 3), out("m", "f32")],
                  loop("j", 0, 3, stmt("S", ld("m"), "max=", ld("x", "j")), kind="reduce"))
    assert np.isnan(run1(red, x=np.array([1.0, np.nan, 0.0]))[()])


def test_pow_atan2_and_logic() -> None:
    a, b = np.array([2.0, 9.0, -1.0]), np.array([3.0, 0.5, 1.0])
    np.testing.assert_allclose(run1(pointwise("pow", "f64", 3, nargs=2), a=a, b=b), a**b)
    np.testing.assert_allclose(run1(pointwise("atan2", "f64", 3, nargs=2), a=a, b=b), np.arctan2(a, b))
    p, q = np.array([True, True, False, False]), np.array([True, False, True, False])
    assert list(run1(pointwise("and", "b1", 4, nargs=2), a=p, b=q)) == list(p & q)
    assert list(run1(pointwise("or", "b1", 4, nargs=2), a=p, b=q)) == list(p | q)
    assert list(run1(pointwise("not", "b1", 4), a=p)) == list(~p)
    # logical operators yield b1 whatever their operands: integers are tested for non-zero
    ints = pointwise("and", "i32", 3, nargs=2, out_dtype="b1")
    assert list(run1(ints, a=np.array([6, 0, 5]), b=np.array([3, 3, 0]))) == [True, False, False]
    assert list(run1(pointwise("not", "i32", 2, out_dtype="b1"), a=np.array([5, 0]))) == [False, True]
    assert list(run1(pointwise("lt", "f32", 3, nargs=2, out_dtype="b1"), a=a, b=b)) == [True, False, True]


def test_where_evaluates_only_the_selected_branch() -> None:
    # o[i] = where(i < 3, x[i], 0.0) over 5 points of a 3-element x: a masked load
    masked = Call("where", (Call("lt", (Iter("i"), index(3))), ld("x", "i"), f32(0.0)))
    prog = program([inp("x", "f32", 3), out("o", "f32", 5)],
                   loop("i", 0, 5, stmt("S", ld("o", "i"), "=", masked)))
    np.testing.assert_array_equal(run1(prog, x=np.array([1.0, 2.0, 3.0])), [1, 2, 3, 0, 0])
    # a guard i < 3 & x[i] > 0 does not load x[3]
    cond = Call("and", (Call("lt", (Iter("i"), index(3))), Call("gt", (ld("x", "i"), f32(0.0)))))
    guarded = program([inp("x", "f32", 3), out("o", "f32", 5)],
                      loop("i", 0, 5, stmt("S0", ld("o", "i"), "=", f32(-1.0)),
                           Guard(cond, (stmt("S1", ld("o", "i"), "=", ld("x", "i")),))))
    np.testing.assert_array_equal(run1(guarded, x=np.array([1.0, -2.0, 3.0])), [1, -1, 3, -1, -1])


def test_float_only_ops_on_integers_are_rejected() -> None:
    with pytest.raises(TypeError, match="statement S: div is not defined on i64"):
        interpret(pointwise("div", "i64", 1, nargs=2), {"a": np.ones(1), "b": np.ones(1)})

# }}}


# {{{ loads and errors


def gather() -> Program:
    return program([inp("x", "f32", 6), inp("idx", "i64", 4), out("o", "f32", 4)],
                   loop("i", 0, 4, stmt("S1", ld("o", "i"), "=", ld("x", ld("idx", "i")))))


def test_indirect_load() -> None:
    x = np.arange(6.0) * 10
    np.testing.assert_array_equal(run1(gather(), x=x, idx=np.array([5, 0, 2, 2])), [50, 0, 20, 20])


def test_out_of_bounds_indirect_load_names_statement_and_tensor() -> None:
    with pytest.raises(IndexError, match=r"statement S1: index \[6\] of x\[idx\[i\]\] is out of bounds "
                                         r"for x with shape \[6\] at i=2"):
        interpret(gather(), {"x": np.zeros(6), "idx": np.array([0, 1, 6, 2])})
    with pytest.raises(IndexError, match="statement S1.*out of bounds for x"):
        interpret(gather(), {"x": np.zeros(6), "idx": np.array([0, -1, 1, 2])})


def test_out_of_bounds_store() -> None:
    prog = program([out("o", "f32", 3)], loop("i", 0, 4, stmt("S7", ld("o", "i"), "=", f32(1.0))))
    with pytest.raises(IndexError, match=r"statement S7: index \[3\] of o\[i\].*shape \[3\] at i=3"):
        interpret(prog, {})


def test_bad_inputs() -> None:
    prog = matmul("f32", 2, 3, 4)
    a, b = np.zeros((2, 3)), np.zeros((3, 4))
    with pytest.raises(ValueError, match="missing input 'b'"):
        interpret(prog, {"a": a})
    with pytest.raises(ValueError, match=r"input 'b' has shape \[4, 3\], expected \[3, 4\]"):
        interpret(prog, {"a": a, "b": b.T})
    with pytest.raises(ValueError, match="no input named 'c'"):
        interpret(prog, {"a": a, "b": b, "c": a})


def test_inputs_are_converted_and_not_modified() -> None:
    x = np.array([1.9, -1.9, 1 + 2**-9])
    prog = program([inp("x", "i32", 2), inp("y", "bf16", 1), out("o", "i32", 2), out("p", "bf16", 1)],
                   loop("i", 0, 2, stmt("S1", ld("o", "i"), "=", ld("x", "i"))),
                   stmt("S2", ld("p", 0), "=", ld("y", 0)))
    r = interpret(prog, {"x": x[:2], "y": x[2:]})
    assert list(r["o"]) == [1, -1] and r["p"][0] == 1.0
    assert x[0] == 1.9


def test_scalar_tensors_and_casts_in_expressions() -> None:
    # o = f32(n) * 0.5 with n a scalar i32 input; k = i64(o)
    prog = program([inp("n", "i32"), out("o", "f32"), out("k", "i64")],
                   stmt("S1", ld("o"), "=", mul(call("f32", ld("n")), f32(0.5))),
                   stmt("S2", ld("k"), "=", call("i64", ld("o"))))
    r = interpret(prog, {"n": np.array(7)})
    assert r["o"][()] == 3.5 and r["k"][()] == 3

# }}}


@pytest.mark.parametrize("op", ["+=", "*=", "max=", "min="])
@pytest.mark.parametrize("dtype", ["f32", "f64", "i32", "i64", "u8"])
def test_combiner_identity_is_neutral_and_partner_distributes(op: str, dtype: str) -> None:
    """The one table of combiner facts agrees with the interpreter's arithmetic: the identity
    folds to the other operand, and the partner distributes over the combine."""
    from flashlight.ir.combiners import COMBINERS
    from flashlight.ir.interpret import _operator

    c = COMBINERS[op]
    fold = _operator(c.combine, dtype)
    kind = numpy_dtype(dtype).type
    for x in (kind(3), kind(0), kind(7)):
        assert fold(kind(c.identity(dtype)), x) == x
    if c.partner is not None and dtype.startswith("f"):
        rescale = _operator(c.partner, dtype)
        a, b, k = kind(1.5), kind(-2.25), kind(0.5)
        assert rescale(fold(a, b), k) == fold(rescale(a, k), rescale(b, k))
