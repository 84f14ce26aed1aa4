"""Who compiles a segment (issue 21). On the GPU by default, and on every device with
``inductor=True``, a program is compiled once to find the matrix products its kernels keep in
registers and reduce again (attention's scores); the lift cuts it into what computes and reduces
those (flashlight's) and the rest (Inductor's). The verdict and its reason are in explain."""

from __future__ import annotations

import math

import pytest
import torch

import flashlight
from conftest import check_against_eager, warnings_of
from flashlight.counting import counters
from flashlight.handoff import InductorSegment


def attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


def mlp(x, w):  # a GEMM and its epilogue: cuBLAS and one pointwise kernel move the same bytes
    return torch.relu(x @ w.T) * 2


def rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def rmsnorm_linear(x, w, proj):  # the normalised rows feed a contraction: never stored
    return rmsnorm(x, w) @ proj.T


def _inputs(name: str) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {"attention": (r(1, 2, 32, 16), r(1, 2, 32, 16), r(1, 2, 32, 16)), "mlp": (r(8, 16), r(32, 16)),
            "rmsnorm": (r(8, 64), r(64)), "rmsnorm_linear": (r(8, 64), r(64), r(32, 64))}[name]


KEPT = "kernel 0 computes the matrix product bmm[2, 32, 32] and reduces it again (amax) without storing it"
CUT_OFF = "the schedule of the program it was cut from keeps no matrix product of it in registers"


@pytest.mark.parametrize("fn, compiler, reason", [
    (attention, "flashlight", KEPT),
    (rmsnorm_linear, "Inductor", CUT_OFF),  # a norm before a projection: Inductor's norm, then the vendor GEMM
    (mlp, "Inductor", CUT_OFF),
    (rmsnorm, "Inductor", CUT_OFF),
])
def test_explain_says_who_compiles_each_program_and_why(fn, compiler, reason):
    args = _inputs(fn.__name__)
    ex = flashlight.explain(fn, *args, options=flashlight.Options(inductor=True))
    assert [(d.compiler, reason in d.reason) for d in ex.compilers] == [(compiler, True)], ex.compilers
    assert f"{fn.__name__}: {compiler}: " in str(ex) and "-- who compiles each program --" in str(ex)
    # by default a program is ours where a kernel keeps a matrix product, else Inductor's on the
    # GPU (on the CPU the verdict is only said: the interpreter is flashlight's test target)
    default = flashlight.explain(fn, *args).compilers[0]
    assert default.compiler == "flashlight", default
    assert (KEPT in default.reason) == (fn is attention), default
    assert ("handed to Inductor on the GPU" in default.reason) == (fn is not attention), default
    kept = flashlight.explain(fn, *args, options=flashlight.Options(inductor=False)).compilers[0]
    assert kept.compiler == "flashlight" and "inductor=False keeps it" in kept.reason


def test_a_segment_handed_to_inductor_runs_inductors_code_and_matches_eager():
    x, w = _inputs("mlp")
    counters.clear()
    f = flashlight.compile(mlp, inductor=True)
    torch.testing.assert_close(f(x, w), mlp(x, w))
    assert counters["inductor_segments"] == 1 and counters["programs_compiled"] == 0, dict(counters)
    (segment,) = f.graphs[0].compiled.values()
    assert isinstance(segment, InductorSegment) and not f.graphs[0].fallbacks
    x2 = torch.randn_like(x)  # Inductor's code again, no compilation
    torch.testing.assert_close(f(x2, w), mlp(x2, w))
    assert counters["inductor_segments"] == 1
    check_against_eager(mlp, x, w, compiled=flashlight.compile(mlp, inductor=True))  # and the gradients


def layer_norm(x, w, b):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b)


def test_inductor_compiles_the_prims_that_capture_leaves():
    """Capture's decompositions leave prims (``var``, ``broadcast_in_dim`` of a layer norm's
    ``var_mean``): Inductor refused them, and the forward and backward came back to flashlight
    with a warning each (run 22). Handed over as aten operators, Inductor compiles both."""
    x, w, b = torch.randn(16, 40), torch.randn(40), torch.randn(40)
    counters.clear()

    def calls():
        check_against_eager(layer_norm, x, w, b, compiled=flashlight.compile(layer_norm, inductor=True))
    said = warnings_of(calls)
    assert "could not compile" not in said, said
    assert counters["inductor_segments"] == 2 and counters["programs_compiled"] == 0, dict(counters)


@pytest.mark.parametrize("prim,args", [
    (torch.ops.prims.broadcast_in_dim.default, (torch.randn(3, 1), [3, 4, 5], [0, 2])),
    (torch.ops.prims.broadcast_in_dim.default, (torch.randn(8), [8, 1], [0])),
    (torch.ops.prims.var.default, (torch.randn(4, 6), [1], 1.0)),
    (torch.ops.prims.sum.default, (torch.randn(4, 6), [0])),
    (torch.ops.prims.amax.default, (torch.randn(4, 6), [1])),
    (torch.ops.prims.amin.default, (torch.randn(4, 6), [0, 1])),
    (torch.ops.prims.div.default, (torch.randn(5), torch.randn(5))),
    (torch.ops.prims.div.default, (torch.tensor([7, -7, 5]), torch.tensor([2, 2, -3]))),
])
def test_the_aten_operators_given_for_prims_compute_the_same(prim, args):
    from flashlight.handoff import _ATEN_OF_PRIMS

    torch.testing.assert_close(_ATEN_OF_PRIMS[prim](*args), prim(*args))


def cross_entropy(logits, t):
    return torch.nn.functional.cross_entropy(logits.float(), t)


def test_a_segments_output_strides_are_not_reported_as_the_graphs():
    """Inductor reports the strides of what it compiles as the strides of the captured graph's
    outputs; a segment's are not, and AOT's backward compile then failed (``IndexError``: the
    bf16 cross-entropy of run 22 ran eagerly). The report stays the segment's own."""
    from flashlight.passes.declare import DEFAULT_PIPELINE

    logits, t = torch.randn(16, 100, dtype=torch.bfloat16), torch.randint(0, 100, (16,))
    counters.clear()
    f = flashlight.compile(cross_entropy, inductor=True, pipeline=DEFAULT_PIPELINE + ",call-library")
    check_against_eager(cross_entropy, logits, t, compiled=f)
    assert counters["eager_calls"] == 0 and counters["inductor_segments"] == 2, dict(counters)


def test_a_program_that_gains_stays_flashlights_under_inductor_true():
    args = _inputs("attention")
    counters.clear()
    f = flashlight.compile(attention, inductor=True)
    torch.testing.assert_close(f(*args), attention(*args), rtol=1e-4, atol=1e-5)
    assert counters["inductor_segments"] == 0 and counters["programs_compiled"] == 1, dict(counters)


def test_the_option_is_checked():
    with pytest.raises(ValueError, match="inductor='yes' is not None, True or False"):
        flashlight.compile(mlp, inductor="yes")


def block(x, w, wq, wk, wv, wo, w1):  # a transformer block: norm, projections, causal attention, MLP
    h = rmsnorm(x, w)
    q, k, v = (h @ m.T for m in (wq, wk, wv))
    n = x.shape[0]
    causal = torch.arange(n)[:, None] >= torch.arange(n)[None, :]
    s = (q @ k.T / math.sqrt(q.shape[-1])).masked_fill(~causal, float("-inf"))
    a = torch.softmax(s, -1) @ v @ wo.T + x
    return torch.relu(a @ w1.T) + a


def _block_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(32, 16, generator=g), torch.randn(16, generator=g)] + \
        [torch.randn(16, 16, generator=g) / 4 for _ in range(5)]


def test_a_block_is_cut_into_what_flashlight_fuses_and_what_inductor_compiles():
    """Where Inductor may take programs, a block is cut in three: the norm and the projections
    (Inductor's: its norm kernel and the vendor GEMM), the attention (flashlight's: the scores
    stay in registers), and the output projection, the residual and the MLP (Inductor's). The
    causal mask, computed from no input, is computed inside the attention, not stored and
    loaded. Values and gradients are eager's."""
    args = _block_inputs()
    ex = flashlight.explain(block, *args, options=flashlight.Options(inductor=True))
    assert [d.compiler for d in ex.compilers] == ["Inductor", "flashlight", "Inductor"], ex.compilers
    assert "Inductor compiles the graph whole: each program of flashlight's is one call of" in str(ex)
    assert "computes the matrix product mm_3[32, 32] and reduces it again" in ex.compilers[1].reason, ex.compilers
    attention_inputs = sorted(d.shape for d in ex.programs[1].inputs)
    assert attention_inputs == [(32, 16)] * 3, attention_inputs  # q, k, v: no mask, no x
    # on the CPU by default nothing is cut: one program, flashlight's
    assert [d.program for d in flashlight.explain(block, *args).compilers] == ["block"]
    f = flashlight.compile(block, inductor=True)
    check_against_eager(block, *args, compiled=f)
    kinds = [type(c).__name__ for c in f.graphs[0].compiled.values()]
    assert kinds == ["InductorSegment", "CompiledProgram", "InductorSegment"], kinds


def test_a_cut_graph_is_compiled_by_inductor_whole_with_our_program_inside(monkeypatch):
    """Compiled apart, each segment of Inductor's was a graph behind a wrapper of its own, whose
    host time every call paid once per segment (run 25: five wrappers, the most of a 4-layer
    Llama's 3.2 ms of host time a call). Joined, Inductor compiles the graph once and calls our
    program through an opaque operator, once a call; no segment is compiled alone."""
    from flashlight.inductor_graph import EmbeddedProgram, JoinedGraph

    args = _block_inputs()
    calls: list[str] = []
    run = EmbeddedProgram.__call__
    monkeypatch.setattr(EmbeddedProgram, "__call__", lambda self, inputs: calls.append(self.name) or run(self, inputs))
    f = flashlight.compile(block, inductor=True)
    torch.testing.assert_close(f(*args), block(*args))
    graph = f.graphs[0]
    assert isinstance(graph, JoinedGraph) and [p.name for p in graph.programs] == calls == ["block_part1"], calls
    assert [c.run for c in graph.compiled.values() if isinstance(c, InductorSegment)] == [None, None]
    torch.testing.assert_close(f(*args), block(*args))
    assert len(calls) == 2


def test_the_joined_graph_keeps_the_functions_tensor_constants():
    def scaled(x, w, q, k, v):
        return torch.relu(attention(q, k, v) @ w.T) * torch.tensor(2.0) + x

    g = torch.Generator().manual_seed(2)
    x, q, k, v = (torch.randn(32, 16, generator=g) for _ in range(4))
    w = torch.randn(16, 16, generator=g)
    f = flashlight.compile(scaled, inductor=True)
    torch.testing.assert_close(f(x, w, q, k, v), scaled(x, w, q, k, v))
    graph = f.graphs[0]
    assert type(graph).__name__ == "JoinedGraph" and list(graph.lifted.constants.values()) == [torch.tensor(2.0)]
    check_against_eager(scaled, x, w, q, k, v, compiled=f)  # and the gradients, through joined graphs


def test_a_launch_that_fails_inside_the_joined_graph_runs_that_program_eagerly():
    args = _block_inputs()
    f = flashlight.compile(block, inductor=True)
    f(*args)
    graph = f.graphs[0]

    def fail(inputs):
        raise RuntimeError("out of resources")
    graph.programs[0].run = fail
    said = warnings_of(lambda: torch.testing.assert_close(f(*args), block(*args)))
    assert "program block_part1 runs in eager PyTorch from now on: launching its kernels failed: RuntimeError: " \
        "out of resources" in said, said
    assert [why for _, why in graph.fallbacks] == ["launching its kernels failed: RuntimeError: out of resources"]
    assert warnings_of(lambda: torch.testing.assert_close(f(*args), block(*args))) == ""  # said once


def test_where_inductor_cannot_compile_the_whole_graph_it_compiles_each_segment_alone(monkeypatch):
    from flashlight import inductor_graph

    def refuse(*a, **k):
        raise RuntimeError("no lowering")
    monkeypatch.setattr(inductor_graph, "join", refuse)
    args = _block_inputs()
    f = flashlight.compile(block, inductor=True)
    said = warnings_of(lambda: torch.testing.assert_close(f(*args), block(*args)))
    assert "Inductor could not compile the whole graph (RuntimeError: no lowering)" in said, said
    graph = f.graphs[0]
    assert not isinstance(graph, inductor_graph.JoinedGraph)
    assert all(c.run is not None for c in graph.compiled.values() if isinstance(c, InductorSegment))


def _products_kept(fn, *args) -> dict[str, str]:
    from flashlight import passes
    from flashlight.handoff import kept_products

    lifted = flashlight.trace(fn, *args)
    return kept_products(lifted, passes.run_pipeline(lifted))


def two_products(x, w1, w2):
    return torch.relu(x @ w1.T) @ w2.T


@pytest.mark.parametrize("width, kept", [(32, True), (512, False)])
def test_a_product_fed_to_another_is_kept_only_where_its_sum_is_short(width, kept):
    """A product that another product reads is worth keeping in registers where storing it costs
    more than computing it: a sum of at most SHORT_PRODUCT terms (an attention backward's
    probabilities, over the head dimension), not one over a model dimension (an MLP's hidden
    layer: the vendor GEMM's speed outweighs the store)."""
    from flashlight.handoff import SHORT_PRODUCT

    x, w1, w2 = torch.randn(16, width), torch.randn(64, width), torch.randn(32, 64)
    found = _products_kept(two_products, x, w1, w2)
    assert bool(found) == kept, found
    if kept:
        assert f"a sum of {width} terms, and feeds it to the product" in next(iter(found.values()))
    assert (width <= SHORT_PRODUCT) == kept


def test_a_cut_program_reads_an_empty_value_it_dropped():
    """A value with no elements (a model's empty key/value cache before its first update) is
    dropped from a lifted program's inputs; the subgraph Inductor compiles makes it again."""
    def grow(x, cache, w):
        return torch.relu(torch.cat([cache, x]) @ w.T)

    x, cache, w = torch.randn(8, 16), torch.randn(0, 16), torch.randn(16, 16)
    counters.clear()
    f = flashlight.compile(grow, inductor=True)
    torch.testing.assert_close(f(x, cache, w), grow(x, cache, w))
    assert counters["inductor_segments"] == 1 and counters["eager_calls"] == 0, dict(counters)


def test_an_attention_backward_stays_flashlights():
    """What is kept is read off the final programs: the backward recomputes the scores and dP per
    pair of tiles and feeds them to the products dV, dK and dQ without storing them, so it stays
    ours (a model of the lifted program missed this: it handed the backward to Inductor, which
    stored S x S tensors, run 21)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=g, requires_grad=True) for _ in range(3))
    ex = flashlight.explain(attention, q, k, v, options=flashlight.Options(inductor=True))
    assert [d.compiler for d in ex.compilers] == ["flashlight"], ex.compilers
    assert [d.compiler for d in ex.backward.compilers] == ["flashlight"], ex.backward.compilers
    assert "without storing it" in ex.backward.compilers[0].reason, ex.backward.compilers


def test_the_cut_keeps_what_the_backwards_kernels_fuse():
    """Read off the final kernels, the kept region also holds what they fuse with the kept
    products: a group's sums of key and value gradients that merge-sums moved into the key-major
    kernel (GQA: the backward stays one program of ours, no gradient per query head stored), and
    the fact that a saved output equals its recomputation, which exchange-sums reads (a block's
    backward: Δ from the saved output, not a second pass over the keys)."""
    from test_training import VARIANTS, _Block

    fn, make = VARIANTS["gqa_expand"]
    args = [a.requires_grad_() if a.is_floating_point() else a for a in make()]
    ex = flashlight.explain(fn, *args, options=flashlight.Options(inductor=True))
    assert [d.compiler for d in ex.backward.compilers] == ["flashlight"], ex.backward.compilers
    merges = [p for p in ex.backward.proofs if p.transformation.startswith("merge ")]
    assert len(merges) == 2 and all(p.legal for p in merges), [str(p) for p in merges]

    torch.manual_seed(9)
    block, x = _Block(), torch.randn(2, 80, 32, requires_grad=True)
    ex = flashlight.explain(block, x, options=flashlight.Options(inductor=True))
    assert [d.compiler for d in ex.backward.compilers] == ["Inductor", "flashlight", "Inductor"], ex.backward.compilers
    assert [p.legal for p in ex.backward.proofs if p.transformation.startswith("exchange sums") and p.legal] == [True]
    check_against_eager(block, x, module=block, compiled=flashlight.compile(block, inductor=True))
