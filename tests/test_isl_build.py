"""The isl builders (flashlight/ir/isl_build.py) against the isl text each stands for.

Each builder must give the object isl's parser makes of that text: the same set (``is_equal``) and
the same printed form, since proofs print relations derived from them.
"""

from __future__ import annotations

import islpy as isl
import pytest

from flashlight.ir import expr as E
from flashlight.ir import isl_build as B
from flashlight.ir.expr import Iter

i, j, k = Iter("i"), Iter("j"), Iter("k")


def same(built, text_obj) -> None:
    assert str(built) == str(text_obj)
    assert built.is_equal(text_obj) if hasattr(built, "is_equal") else built.plain_is_equal(text_obj)


def test_isl_name_renames_reserved_words_only():
    assert B.isl_name("mod") == "mod_" and B.isl_name("i0") == "i0"
    same(B.universe("and", ["mod", "o1"]), isl.Set("{ and_[mod_, o1] }"))


@pytest.mark.parametrize("built, text", [
    (lambda: B.universe("T", ["o0", "o1"]), "{ T[o0, o1] }"),
    (lambda: B.empty(None, ["i", "j"]), "{ [i, j] : 1 = 0 }"),
    (lambda: B.empty(None, ["jt"], ["t_i", "t_j"]), "[t_i, t_j] -> { [jt] : 1 = 0 }"),
    (lambda: B.box(["i", "mod", "j"], [7, 5, 128]), "{ [i, mod_, j] : 0 <= i < 7 and 0 <= mod_ < 5 and 0 <= j < 128 }"),
    (lambda: B.box(["i"], [3], name="S"), "{ S[i] : 0 <= i < 3 }"),
    (lambda: B.param_box(["t_i", "t_b"], [2, 3]), "[t_i, t_b] -> { : 0 <= t_i < 2 and 0 <= t_b < 3 }"),
])
def test_sets(built, text):
    same(built(), isl.Set(text))


@pytest.mark.parametrize("params, value, text", [
    (["t_i", "t_b"], 1, "[t_i, t_b] -> { [(1)] }"),
    ([], 0, "{ [(0)] }"),
])
def test_constant(params, value, text):
    same(B.constant(params, value), isl.PwAff(text))


DOMAIN = "{ S1[i, j, k] : 0 <= i < 10 and 0 <= j < 100 and 0 <= k <= j }"


@pytest.mark.parametrize("built, text", [
    (lambda: B.affine_map("S1", ["i", "j", "k"], ["i", "k"]), "{ S1[i, j, k] -> [i, k] }"),
    (lambda: B.affine_map("S1", [], [0, 1]), "{ S1[] -> [0, 1] }"),
    (lambda: B.affine_map(None, ["mod"], [B.TileOf("mod", 8), "mod"]), "{ [mod_] -> [floor(mod_/8), mod_] }"),
    (lambda: B.affine_map(None, ["t0", "t1"], ["t0", E.neg(Iter("t1")), E.add(Iter("t0"), E.floordiv(Iter("t1"), 2))]),
     "{ [t0, t1] -> [t0, -t1, t0 + floor(t1/2)] }"),
    (lambda: B.schedule_map("S1", ["i", "j", "k"], [0, "i", 3, B.TileOf("j", 64), "k", 0], isl.Set(DOMAIN)),
     "{ S1[i, j, k] -> [0, i, 3, floor(j/64), k, 0] : 0 <= i < 10 and 0 <= j < 100 and 0 <= k <= j }"),
    (lambda: B.tile_map(["i", "b", "j"], [64, 1, 32], ["t_i", "t_b"], ["jt"]),
     "[t_i, t_b] -> { [i, b, j] -> [jt] : 64 * t_i <= i < 64 * t_i + 64 and 1 * t_b <= b < 1 * t_b + 1 and "
     "32 * jt <= j < 32 * jt + 32 }"),
    (lambda: B.tiles_differ("S1", 3, 1, "S2", 2, 0, 64),
     "{ S1[a0, a1, a2] -> S2[b0, b1] : floor(a1/64) != floor(b0/64) }"),
    (lambda: B.group_pairs_apart(5, 2, 2),
     "{ [a0, a1, a2, a3, a4] -> [b0, b1, b2, b3, b4] : a0 = 2 and b0 = 2 and (a1 != b1 or a2 != b2) }"),
])
def test_maps(built, text):
    same(built(), isl.Map(text))


def test_a_term_must_be_quasi_affine():
    with pytest.raises(ValueError, match="not quasi-affine"):
        B.affine_map(None, ["i"], [E.Load("x", (i,))])


def test_projection_simplifies_as_the_parsed_map_does():
    """Applying a built map to a domain gives what applying the parsed map gives, redundant
    constraints dropped alike (a MultiAff map, as isl's parser makes)."""
    dom = B.statement_domain("S", [("i0", E.index(0), E.index(1024)), ("i1", E.index(0), E.index(1024)),
                                   ("i2", E.index(0), E.index(16))], [E.call("le", Iter("i1"), Iter("i0"))])[0]
    text = dom.apply(isl.Map("{ S[i0, i1, i2] -> [i0, i1] }"))
    assert str(dom.apply(B.affine_map("S", ["i0", "i1", "i2"], ["i0", "i1"]))) == str(text)


# {{{ IR expressions

def _space(*dims):
    return isl.affs_from_space(B.set_space(None, dims))


@pytest.mark.parametrize("e, text", [
    (E.add(E.mul(E.index(2), i), E.index(3)), "{ [i, j] -> [(2i + 3)] }"),
    (E.floordiv(E.add(i, j), 4), "{ [i, j] -> [(floor((i + j)/4))] }"),
    (E.mod(E.sub(i, j), 3), "{ [i, j] -> [((i - j) mod 3)] }"),
    (E.neg(E.floordiv(i, 2)), "{ [i, j] -> [(-floor(i/2))] }"),
    (E.mul(E.index(3), E.floordiv(j, 2)), "{ [i, j] -> [(3 * floor(j/2))] }"),
])
def test_expr_aff(e, text):
    same(B.expr_aff(e, _space("i", "j")), isl.PwAff(text))
    assert B.is_quasi_affine(e)


def test_expr_aff_refuses_what_isl_cannot_say():
    x = E.Load("x", (i,))
    assert B.expr_aff(x, _space("i")) is None and not B.is_quasi_affine(x)
    assert B.expr_aff(E.Call("mul", (i, j)), _space("i", "j")) is None


@pytest.mark.parametrize("e, negate, text", [
    (E.call("le", j, i), False, "{ [i, j] : j <= i }"),
    (E.call("le", j, i), True, "{ [i, j] : j > i }"),
    (E.call("and", E.call("le", j, i), E.call("lt", E.sub(i, j), E.index(4))), False,
     "{ [i, j] : j <= i and i - j < 4 }"),
    (E.call("or", E.call("le", j, i), E.call("lt", j, E.index(4))), True, "{ [i, j] : j > i and j >= 4 }"),
    (E.call("not", E.call("eq", E.mod(i, 2), E.index(0))), False,
     "{ [i, j] : (i mod 2) < 0 or (i mod 2) > 0 }"),
    (E.const(True, "b1"), False, "{ [i, j] : 1 = 1 }"),
    (E.const(True, "b1"), True, "{ [i, j] : 1 = 0 }"),
])
def test_expr_set(e, negate, text):
    same(B.expr_set(e, _space("i", "j"), negate), isl.Set(text))


def test_expr_set_refuses_a_data_dependent_condition():
    g = E.call("lt", E.Load("x", (i,)), E.const(0.0, "f32"))
    assert B.expr_set(g, _space("i")) is None and not B.is_affine_condition(g)

# }}}


# {{{ the statement view's pieces

def test_statement_domain_leaves_out_a_guard_that_is_not_affine():
    bounds = [("i", E.index(0), E.index(4)), ("j", E.index(0), E.add(i, E.index(1)))]
    dom, exact = B.statement_domain("S", bounds, [E.call("lt", E.mod(j, 2), E.index(1))])
    same(dom, isl.Set("{ S[i, j] : 0 <= i < 4 and 0 <= j < i + 1 and (j mod 2) < 1 }"))
    assert exact
    dom, exact = B.statement_domain("S", bounds, [E.call("lt", E.Load("x", (j,)), E.const(0.0, "f32"))])
    same(dom, isl.Set("{ S[i, j] : 0 <= i < 4 and 0 <= j < i + 1 }"))
    assert not exact


def test_statement_domain_without_loops():
    dom, exact = B.statement_domain("S", [], [])
    same(dom, isl.Set("{ S[] : 1 = 1 }"))
    assert exact


def test_statement_domain_refuses_non_affine_bounds():
    with pytest.raises(ValueError, match="non-affine bounds"):
        B.statement_domain("S", [("i", E.index(0), E.Load("n", ()))], [])


def test_access_map_ranges_a_gather_over_the_tensor():
    dom = isl.Set("{ B[i, j] : 0 <= i < 4 and 0 <= j < 6 }")
    m, exact = B.access_map(dom, "x", [E.Load("idx", (i,)), E.floordiv(j, 2), E.Load("idx", (j,))], [5, 3, 7])
    same(m, isl.Map("{ B[i, j] -> x[o0, floor(j/2), o2] : 0 <= o0 < 5 and 0 <= o2 < 7 }").intersect_domain(dom))
    assert not exact
    m, exact = B.access_map(dom, "mod", [j, i], [6, 4])
    same(m, isl.Map("{ B[i, j] -> mod_[j, i] }").intersect_domain(dom))
    assert exact

# }}}


def test_poly_text_helpers_answer_through_the_builders():
    """poly.aff_str/cond_str (kept for callers that test them against None) print the built objects."""
    from flashlight.ir.poly import aff_str, cond_str

    assert aff_str(E.add(i, E.index(1))) == "{ [i] -> [(1 + i)] }"
    assert cond_str(E.call("le", j, i)) == "{ [i, j] : j <= i }"
    assert cond_str(E.call("le", j, i), negate=True) == "{ [i, j] : j > i }"
    assert aff_str(E.Load("x", (i,))) is None and cond_str(E.call("lt", E.Load("x", (i,)), i)) is None
