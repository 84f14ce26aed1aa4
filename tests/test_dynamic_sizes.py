"""One compilation serves every length (issue 19): Dynamo makes a dimension a size parameter once
a call changes it, the program compiles once with that parameter, and every later length runs the
same kernels. ``flashlight.counters`` says how many programs were compiled and how many calls ran
eagerly. A length of 1 is Dynamo's own specialisation (its symbolic sizes are at least 2): a first
call at length 1 compiles statically, and the dynamic program serves the rest."""

from __future__ import annotations

import math

import pytest
import torch

import flashlight
from conftest import warnings_of
from flashlight.counting import counters

LENGTHS = (1, 37, 5, 64, 65, 100, 3, 17, 129, 70)  # 1, tails of 64, above the first call's tile


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Compilations counted here are compilations: no disk-cache hit from an earlier run."""
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))


def causal(q, k, v):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    i, j = torch.arange(s.shape[-2])[:, None], torch.arange(s.shape[-1])[None, :]
    return torch.softmax(s.masked_fill(j > i, float("-inf")), -1) @ v


def documents(q, k, v, doc):
    s = (q @ k.transpose(-1, -2)) * 0.25
    return torch.softmax(s.masked_fill(doc[:, None] != doc[None, :], float("-inf")), -1) @ v


def rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def decode_step(q, k_cache, v_cache):
    return torch.softmax(q @ k_cache.transpose(-1, -2) * 0.25, -1) @ v_cache


def _qkv(n: int, g: torch.Generator, kv: int | None = None) -> tuple[torch.Tensor, ...]:
    kv = n if kv is None else kv
    return (torch.randn(1, 2, n, 16, generator=g), torch.randn(1, 2, kv, 16, generator=g),
            torch.randn(1, 2, kv, 16, generator=g))


CASES = {
    "causal": (causal, lambda n, g: _qkv(n, g)),
    "causal, Sq != Sk": (causal, lambda n, g: _qkv(n, g, n + 7)),
    "document mask": (documents, lambda n, g: (*_qkv(n, g), torch.sort(torch.randint(0, 3, (n,), generator=g)).values)),
    "rmsnorm rows": (rmsnorm, lambda n, g: (torch.randn(n, 64, generator=g), torch.randn(64, generator=g))),
    "decode, cache grows by one": (decode_step, lambda n, g: (torch.randn(1, 2, 1, 16, generator=g),
                                                              *_qkv(n, g)[1:])),
}


@pytest.mark.parametrize("name", list(CASES))
def test_one_compiled_function_serves_ten_lengths_with_two_programs(name):
    fn, make = CASES[name]
    f = flashlight.compile(fn)
    g = torch.Generator().manual_seed(0)
    counters.clear()
    lengths = range(40, 50) if name.startswith("decode") else LENGTHS
    for n in lengths:
        args = make(n, g)
        torch.testing.assert_close(f(*args), fn(*args), rtol=1e-4, atol=1e-5, msg=f"length {n}")
    assert counters["programs_compiled"] <= 2, dict(counters)
    assert counters["eager_calls"] == 0 and counters["eager_segments"] == 0, dict(counters)


def test_dynamic_true_compiles_one_program_from_the_first_call():
    f = flashlight.compile(rmsnorm, dynamic=True)
    counters.clear()
    for n in (3, 70, 129):
        x, w = torch.randn(n, 64), torch.randn(64)
        torch.testing.assert_close(f(x, w), rmsnorm(x, w), rtol=1e-4, atol=1e-5)
    assert counters["programs_compiled"] <= 1 and counters["eager_calls"] == 0, dict(counters)


def test_a_decode_loop_after_a_prefill_compiles_once_with_dynamic_true():
    """A decode loop starts from the prompt's cache (longer than 1: Dynamo specialises sizes 0 and
    1, a guard of its own) and grows it by one key per step: with ``dynamic=True`` the first call
    already compiles the program for every cache length."""
    f = flashlight.compile(decode_step, dynamic=True)
    g = torch.Generator().manual_seed(3)
    k, v = torch.randn(1, 2, 60, 16, generator=g), torch.randn(1, 2, 60, 16, generator=g)
    counters.clear()
    for n in range(37, 49):
        q = torch.randn(1, 2, 1, 16, generator=g)
        torch.testing.assert_close(f(q, k[:, :, :n], v[:, :, :n]), decode_step(q, k[:, :, :n], v[:, :, :n]),
                                   rtol=1e-4, atol=1e-5, msg=f"cache length {n}")
    assert counters["programs_compiled"] == 1 and counters["eager_calls"] == 0, dict(counters)


def scaled_by_head_dim(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


def test_a_size_the_program_computes_with_is_pinned_and_the_others_vary():
    """``1 / sqrt(D)`` of a varying head dimension is no expression of the IR: with ``dynamic=True``
    the head dimension is pinned (compiled once per value, said once) and the lengths still vary:
    one program for every key length at each head dimension."""
    f = flashlight.compile(scaled_by_head_dim, dynamic=True)
    g = torch.Generator().manual_seed(5)
    counters.clear()

    def calls():
        for d, n in ((16, 5), (16, 37), (16, 70), (32, 9), (32, 33)):
            q, k, v = (torch.randn(1, 2, m, d, generator=g) for m in (3, n, n))
            torch.testing.assert_close(f(q, k, v), scaled_by_head_dim(q, k, v), rtol=1e-4, atol=1e-5)
    said = warnings_of(calls)
    assert counters["programs_compiled"] == 2 and counters["eager_calls"] == 0, dict(counters)
    assert said.count("compiled anew for each value of") == 1 and "shape[3] (now 16)" in said, said


def scaled_by_reciprocal(q, k, v):
    return torch.softmax((q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])), -1) @ v


def test_a_scale_by_the_reciprocal_of_a_size_lifts():
    """``s * (1.0 / math.sqrt(D))`` with ``dynamic=True`` leaves ``aten.true_divide`` in the graph
    (a division by the SymFloat); it once had no lifting rule and ran eagerly (the decode benchmark's
    dynamic program, run 22)."""
    f = flashlight.compile(scaled_by_reciprocal, dynamic=True)
    g = torch.Generator().manual_seed(6)
    counters.clear()

    def calls():
        for n in (5, 37):
            q, k, v = (torch.randn(1, 2, m, 16, generator=g) for m in (1, n, n))
            torch.testing.assert_close(f(q, k, v), scaled_by_reciprocal(q, k, v), rtol=1e-4, atol=1e-5)
    said = warnings_of(calls)
    assert "runs in eager" not in said and counters["eager_calls"] == 0, said
    assert counters["programs_compiled"] == 1, dict(counters)


def test_a_scale_of_the_pinned_head_dimension_is_a_constant_of_the_kernel():
    """With the lengths symbolic, ``1.0 / math.sqrt(D)`` is traced as arithmetic on ``D``, which
    the head dimension's pinning leaves as literals: ``f64(1.0) / sqrt(f64(64.0))``. Kept, each
    tile of scores was multiplied by it in the key loop and the scale was not folded into the
    exponent as in the static kernel (run 24: the dynamic vanilla kernel 12% slower at 4096, the
    length its bucket was tuned at). Correctly rounded arithmetic on literals folds to its value."""
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, m, 16, generator=g) for m in (3, 37, 37))
    for t in (q, k, v):
        torch._dynamo.mark_dynamic(t, 2)
    ex = flashlight.explain(scaled_by_reciprocal, q, k, v)
    src = ex.kernels[0].source
    assert ex.programs[0].params == ("S", "T") and "tl.sqrt" not in src
    assert "* 0.25" in src and f"tl.fma(r_bmm, {0.25 * math.log2(math.e)!r}" in src, src


def test_dynamic_false_compiles_each_length():
    f = flashlight.compile(rmsnorm, dynamic=False)
    counters.clear()
    for n in (3, 70, 129):
        x, w = torch.randn(n, 64), torch.randn(64)
        torch.testing.assert_close(f(x, w), rmsnorm(x, w), rtol=1e-4, atol=1e-5)
    assert counters["programs_compiled"] == 3, dict(counters)


def test_the_dynamic_program_says_its_sizes_in_explain():
    q, k, v = _qkv(37, torch.Generator().manual_seed(1))
    for t in (q, k, v):
        torch._dynamo.mark_dynamic(t, 2)
    ex = flashlight.explain(causal, q, k, v)
    assert not ex.fallbacks
    assert ex.programs[0].params == ("S", "T")
    assert "ceil(T/" in str(ex), "the grid is counted at launch from the query length"
    assert any("ranges as functions of the sizes" in p.reason for p in ex.proofs)
    heavy = [p for p in ex.proofs if "heaviest first" in p.transformation]
    assert heavy and "at S=4096, T=4096" in heavy[0].reason, "the work per query tile is weighed at sample sizes"
    assert "- 1 - (pid %" in ex.kernels[0].source, "the query tiles of a parametric grid launch in reverse"


def test_invalid_dynamic_option_is_refused():
    with pytest.raises(ValueError, match="dynamic='yes' is not None, True or False"):
        flashlight.compile(rmsnorm, dynamic="yes")


def flat_softmax(x):
    return torch.softmax(x.reshape(-1), 0).reshape(x.shape) * 2.0


def test_a_program_no_one_compilation_serves_is_compiled_per_size_and_says_why():
    """Flattening a varying length with another dimension gives a size ``4*S`` (a derived size
    parameter), but the reshape rule does not merge a size parameter with another dimension: the
    graph is compiled at each call's sizes instead (as without dynamic shapes, but with no
    recompile limit), with one warning that says why."""
    f = flashlight.compile(flat_softmax)
    counters.clear()
    def calls():
        for n in (3, 5, 6, 5):
            x = torch.randn(n, 4)
            torch.testing.assert_close(f(x), flat_softmax(x), rtol=1e-4, atol=1e-6)
    said = warnings_of(calls)
    assert counters["programs_compiled"] == 3, dict(counters)  # 3 static, then 5 and 6; 5 again is kept
    assert counters["eager_calls"] == 0 and counters["eager_segments"] == 0, dict(counters)
    assert said.count("compiled anew for each new size") == 1, said
    assert "merges or splits a size parameter" in said


def paged_decode(q, k_pages, v_pages, table):
    """A decode step over a cache kept in pages of 4 keys, gathered through a block table."""
    j = torch.arange(table.shape[1] * k_pages.shape[1])  # the cache's length: pages times 4
    k = k_pages[table[:, j // k_pages.shape[1]], j % k_pages.shape[1]]
    v = v_pages[table[:, j // v_pages.shape[1]], j % v_pages.shape[1]]
    return torch.softmax(torch.einsum("bhd,bsd->bhs", q, k) * 0.25, -1) @ v


def test_a_cache_length_that_is_pages_times_their_size_is_a_derived_parameter():
    """A paged cache's length is the number of pages (a size that varies) times the page size:
    ``4*S``, no input's size. It becomes a derived size parameter (``T = 4 * S``), bound at
    each call from its definition, so one program serves every page count."""
    f = flashlight.compile(paged_decode)
    g = torch.Generator().manual_seed(11)
    counters.clear()
    for pages in (3, 5, 9, 17, 40):
        q = torch.randn(2, 3, 16, generator=g)
        k_pages, v_pages = (torch.randn(50, 4, 16, generator=g) for _ in range(2))
        table = torch.stack([torch.randperm(50, generator=g)[:pages] for _ in range(2)])
        torch.testing.assert_close(f(q, k_pages, v_pages, table), paged_decode(q, k_pages, v_pages, table),
                                   rtol=1e-4, atol=1e-5, msg=f"{pages} pages")
    assert counters["programs_compiled"] <= 2 and counters["eager_calls"] == 0, dict(counters)
    assert counters["eager_segments"] == 0, dict(counters)
    table = torch.stack([torch.randperm(50, generator=g)[:6] for _ in range(2)])
    torch._dynamo.mark_dynamic(table, 1)
    prog = flashlight.explain(paged_decode, q, k_pages, v_pages, table).programs[0]
    assert prog.defs and "T = 4 * S" in str(prog).splitlines()[0], str(prog).splitlines()[0]
    assert str(flashlight.ir.parse(str(prog))) == str(prog)


@pytest.mark.parametrize("name", ["causal", "rmsnorm rows"])
def test_gradients_through_the_program_for_every_length_match_eager(name):
    """Inputs that require grad: the forward and the backward are each a program with size
    parameters (after a static one each: at most 4 compilations); a generic cotangent at every
    length."""
    fn, make = CASES[name]
    f = flashlight.compile(fn)
    g = torch.Generator().manual_seed(3)
    counters.clear()
    for n in (5, 37, 70, 3):
        xs = [x.requires_grad_() for x in make(n, g)]
        ys = [x.detach().clone().requires_grad_() for x in xs]
        out, ref = f(*xs), fn(*ys)
        cotangent = torch.randn(out.shape, generator=g)
        (out * cotangent).sum().backward()
        (ref * cotangent).sum().backward()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        for a, b in zip(xs, ys):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=f"length {n}")
    assert 2 <= counters["programs_compiled"] <= 4, dict(counters)
    assert counters["eager_calls"] == 0 and counters["eager_segments"] == 0, dict(counters)


def _causal_by_arange(q, k, v):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # a varying head size: no size parameter
    i, j = torch.arange(s.shape[-2])[:, None], torch.arange(s.shape[-1])[None, :]
    return torch.softmax(s.masked_fill(j > i, float("-inf")), -1) @ v


def test_a_graph_with_a_pinned_size_trains_at_every_length():
    """With ``dynamic=True`` the scale ``1 / sqrt(D)`` of a varying head size is no expression of
    the IR: the head size is pinned (forward and backward each say so once) and the lengths stay
    parameters, outputs and gradients as eager's at each. (The strides of a program were once read
    with ``int()`` of Dynamo's symbolic strides, which specialised them to the first size: the
    backward returned gradients of the wrong shape at the next.)"""
    from conftest import check_against_eager

    f = flashlight.compile(_causal_by_arange, dynamic=True)
    counters.clear()

    def calls():
        for n in (37, 45, 70):
            g = torch.Generator().manual_seed(n)
            args = [torch.randn(1, 2, n, 16, generator=g) for _ in range(3)]
            check_against_eager(_causal_by_arange, *args, compiled=f)

    said = warnings_of(calls)
    assert said.count("compiled anew for each value of") == 2 and "shape[3] (now 16)" in said, said
    assert counters["programs_compiled"] == 2 and counters["eager_calls"] == 0, dict(counters)


def test_a_symbolic_size_evaluates_as_sympy_does_at_every_length():
    """A traced shape or stride is evaluated at each call's sizes (a decode step meets new ones
    every call): by a function made once from the expression, not by sympy's ``subs`` (2 ms a
    call), and equal to it, PyTorch's integer functions included."""
    import sympy
    from torch.utils._sympy.functions import CeilDiv, FloorDiv, Max, ModularIndexing, PythonMod

    from flashlight.frontend.symbolic import _evaluator

    s, t = sympy.symbols("s0 s1", integer=True, positive=True)
    for expr in (4 * s + 3, FloorDiv(s, 16) * t, ModularIndexing(s, 2, 8) + t, CeilDiv(s * t, 64),
                 PythonMod(s, 7) * 128, Max(s, t) - 1, 16 * s * t):
        names, evaluate = _evaluator(expr)
        assert names == tuple(sorted(map(str, expr.free_symbols)))
        assert evaluate.__name__ != "replaced", expr  # PyTorch's printed Python, not sympy again per call
        for a in (1, 2, 15, 16, 17, 1000, 4097):
            values = dict(zip(names, (a, a // 3 + 1)))
            want = int(expr.subs({x: values[str(x)] for x in expr.free_symbols}))
            assert int(evaluate(*(values[n] for n in names))) == want, (expr, values)
