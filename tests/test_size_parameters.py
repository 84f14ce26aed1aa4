"""Size parameters in the IR (``program f[S, T](...)``): printed and parsed, verified, isl
parameters in every analysis, bound by the inputs' shapes in the interpreter, lifted from
dimensions marked varying, and kept by every pass. The groundwork of one compilation for every
sequence length."""

from __future__ import annotations

import islpy as isl
import numpy as np
import pytest

from flashlight import ir
from flashlight.ir.interpret import interpret
from flashlight.ir.poly import PolyView
from flashlight.ir.verify import VerificationError, verify
from flashlight.passes.dependences import flow_dependences, memory_dependences, violations

SOFTMAX = """\
program softmax_rows[S, T](x: f32[S,T]) -> (out0: f32[S,T])
  buffer m: f32[S]
  buffer l: f32[S]
  for i in 0:S parallel
    for j in 0:T reduce
      M: m[i] max= x[i,j]
  for i in 0:S parallel
    for j in 0:T reduce
      L: l[i] += exp(x[i,j] - m[i])
  for i in 0:S parallel, j in 0:T parallel
    O: out0[i,j] = exp(x[i,j] - m[i]) / l[i]"""


def test_a_parametric_program_round_trips_and_verifies():
    p = ir.parse(SOFTMAX)
    assert p.params == ("S", "T") and p.tensor("x").shape == ("S", "T")
    assert str(p) == SOFTMAX and ir.parse(str(p)) == p
    verify(p)


@pytest.mark.parametrize("text, error", [
    ("program p[S](x: f32[N]) -> (o: f32[N])\n  for i in 0:N parallel\n    A: o[i] = x[i]", "invalid shape"),
    ("program p[S, S](x: f32[S]) -> (o: f32[S])\n  for i in 0:S parallel\n    A: o[i] = x[i]", "declared twice"),
    ("program p[x](x: f32[x]) -> (o: f32[x])\n  for i in 0:x parallel\n    A: o[i] = x[i]", "a tensor's name"),
    ("program p[S](x: f32[S]) -> (o: f32[S])\n  for S in 0:S parallel\n    A: o[S] = x[S]", "shadows"),
])
def test_the_verifier_names_a_bad_size_parameter(text, error):
    with pytest.raises(VerificationError, match=error):
        verify(ir.parse(text))


def test_the_dependence_that_forbids_fusing_holds_for_every_size():
    """isl's witness of design section 4, for all S and T at once: every step of the sum needs the
    last step of the max, ``M[i, j = T - 1] -> L[i, j']``."""
    view = PolyView.of(ir.parse(SOFTMAX))
    assert str(view.domain).startswith("[S, T] -> {")
    flow = flow_dependences(view)
    m_to_l = [str(m) for m in _maps(flow)
              if m.get_tuple_name(isl.dim_type.in_) == "M" and m.get_tuple_name(isl.dim_type.out) == "L"]
    assert m_to_l == ["[S, T] -> { M[i, j = -1 + T] -> L[i' = i, j'] : 0 <= i < S and 0 <= j' < T }"]
    # fused into one loop over j, that dependence runs backwards for every T >= 2, and for T = 1 not
    fused = _fused_schedule(view)
    bad = violations(memory_dependences(view).all, fused)
    assert not bad.is_empty()
    assert str(bad.params()) == "[S, T] -> {  : S > 0 and T >= 2 }"


def test_a_gather_over_a_symbolic_dimension_ranges_below_its_size():
    p = ir.parse("program g[S](x: f32[S], idx: i64[4]) -> (o: f32[4])\n"
                 "  for i in 0:4 parallel\n    A: o[i] = x[idx[i]]")
    reads = str(PolyView.of(p).reads)
    assert "A[i] -> x[o0] : 0 <= i <= 3 and 0 <= o0 < S" in reads


@pytest.mark.parametrize("S, T", [(1, 1), (3, 5), (7, 2)])
def test_the_interpreter_binds_sizes_from_the_inputs(S, T):
    x = np.random.default_rng(S * T).standard_normal((S, T)).astype(np.float32)
    out = interpret(ir.parse(SOFTMAX), {"x": x})["out0"]
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(out, e / e.sum(1, keepdims=True), rtol=1e-6)


def test_inputs_that_disagree_on_a_size_are_refused():
    p = ir.parse("program p[S](x: f32[S], y: f32[S]) -> (o: f32[S])\n"
                 "  for i in 0:S parallel\n    A: o[i] = x[i] + y[i]")
    with pytest.raises(ValueError, match="with S = 3"):
        interpret(p, {"x": np.zeros(3, np.float32), "y": np.zeros(4, np.float32)})


def _maps(u):
    out = []
    u.foreach_map(out.append)
    return out


def _fused_schedule(view: PolyView):
    """M, L, O of one row in one loop over j: ``S[i, j] -> [i, j, k]`` (O's j is its own)."""
    order = {"M": 0, "L": 1, "O": 2}
    out = isl.UnionMap("{ }")
    for name, sv in view.stmts.items():
        m = isl.Map(f"[S, T] -> {{ {name}[i, j] -> [i, j, {order[name]}] }}").intersect_domain(sv.domain)
        out = out.union(isl.UnionMap.from_map(m))
    return out


def test_rebuilding_a_program_keeps_its_size_parameters():
    from flashlight.ir.nodes import Proof

    p = ir.parse(SOFTMAX)
    assert p.replace(name="q").params == ("S", "T")
    assert p.with_proofs(Proof("x", True, "y")).params == ("S", "T")


# {{{ lifting: a dimension marked varying becomes a size parameter

def _rms(x, w):
    import torch

    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def _causal(q, k, v):
    import torch

    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    i, j = torch.arange(s.shape[-2])[:, None], torch.arange(s.shape[-1])[None, :]
    return torch.softmax(s.masked_fill(j > i, float("-inf")), -1) @ v


def _marked(*tensors_and_dims):
    import torch

    for t, d in tensors_and_dims:
        torch._dynamo.mark_dynamic(t, d)
    return [t for t, _ in tensors_and_dims]


def test_trace_lifts_a_dimension_marked_dynamic_as_a_size_parameter():
    import torch

    import flashlight

    x, w = _marked((torch.randn(37, 64), 0)), torch.randn(64)
    prog = flashlight.trace(_rms, *x, w)
    assert prog.params == ("S",)
    assert str(prog).startswith("program rms[S](x: f32[S,64], w: f32[64]) -> (out0: f32[S,64])")
    assert "for i0 in 0:S parallel" in str(prog)
    assert ir.parse(str(prog)) == prog
    verify(prog)


def test_causal_attention_over_varying_lengths_runs_the_whole_pipeline_once_and_matches_eager():
    """One parametric program through every pass (the causal mask a domain, the online rewrite,
    tiles, tile ranges as functions of the lengths): one analysis, interpreted at query and key
    lengths on both sides of every tile size, equal or not. The interpreter checks every tile
    range claim at every point."""
    import torch

    import flashlight
    from flashlight import passes

    qkv = _marked(*[(torch.randn(1, 2, 37, 16), 2) for _ in range(3)])
    prog = flashlight.trace(_causal, *qkv)
    assert set(prog.params) == {"S", "T"}  # Dynamo gives the query and the key length a symbol each
    out = passes.run_pipeline(prog, passes.DEFAULT_PIPELINE)
    text = str(out)
    assert out.params == prog.params and len(out.body) == 1, "one fused kernel for every length"
    assert "state [running amax" in text and "as nan fixup" in text and "tiles [0:where(" in text
    rng = np.random.default_rng(0)
    for tq, tk in ((1, 1), (5, 5), (37, 37), (70, 70), (3, 70), (70, 3), (64, 65)):
        ins = {"q": rng.standard_normal((1, 2, tq, 16)).astype(np.float32),
               "k": rng.standard_normal((1, 2, tk, 16)).astype(np.float32),
               "v": rng.standard_normal((1, 2, tk, 16)).astype(np.float32)}
        ref = _causal(*[torch.from_numpy(ins[name]) for name in "qkv"]).numpy()
        np.testing.assert_allclose(interpret(out, ins)["out0"], ref, rtol=1e-5, atol=1e-6)


def test_rmsnorm_over_any_number_of_rows_is_one_kernel_with_the_rows_on_the_grid():
    import torch

    import flashlight
    from flashlight import passes

    prog = flashlight.trace(_rms, *_marked((torch.randn(37, 64), 0)), torch.randn(64))
    out = passes.run_pipeline(prog, passes.DEFAULT_PIPELINE)
    assert len(out.body) == 1 and "for i0 in 0:S parallel tile 64 @grid" in str(out)
    rng = np.random.default_rng(1)
    for rows in (1, 2, 63, 64, 65, 200):
        ins = {"x": rng.standard_normal((rows, 64)).astype(np.float32),
               "w": rng.standard_normal(64).astype(np.float32)}
        ref = _rms(torch.from_numpy(ins["x"]), torch.from_numpy(ins["w"])).numpy()
        np.testing.assert_allclose(interpret(out, ins)["out0"], ref, rtol=1e-5, atol=1e-6)


def _documents(q, k, v, doc):
    import torch

    s = (q @ k.transpose(-1, -2)) * 0.25
    return torch.softmax(s.masked_fill(doc[:, None] != doc[None, :], float("-inf")), -1) @ v


def _loss(x, y):
    import torch

    return torch.nn.functional.cross_entropy(x, y)


@pytest.mark.parametrize("fn, make, dims", [
    (_documents, lambda g, n: [*(g.standard_normal((1, 2, n, 16)).astype(np.float32) for _ in range(3)),
                               np.sort(g.integers(0, 3, n))], [2, 2, 2, 0]),
    (_loss, lambda g, n: [g.standard_normal((n, 40)).astype(np.float32), g.integers(0, 40, n)], [0, 0]),
], ids=["document-mask", "cross-entropy"])
def test_data_dependent_masks_and_losses_hold_for_every_length(fn, make, dims):
    import torch

    import flashlight
    from flashlight import passes

    rng = np.random.default_rng(2)
    example = [torch.from_numpy(a) for a in make(rng, 37)]
    prog = flashlight.trace(fn, *_marked(*zip(example, dims)))
    assert prog.params == ("S",)
    out = passes.run_pipeline(prog, passes.DEFAULT_PIPELINE)
    for n in (1, 5, 64, 70):
        args = make(rng, n)
        ref = fn(*[torch.from_numpy(a) for a in args]).numpy()
        got = interpret(out, dict(zip([d.name for d in prog.inputs], args)))["out0"]
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def _plain(q, k, v):
    import torch

    return torch.softmax(q @ k.transpose(-2, -1) / 8.0, -1) @ v


def test_every_dimension_varying_keeps_every_statement_that_a_nonempty_output_needs():
    """Heads, lengths and head dims all varying: the row sum is read only where the value head
    dim W is at least 1, and restrict-to-demand says exactly that (``if W >= 1``), not a
    condition with the parameter dropped (``-1 >= 0`` was once printed: no sum at all)."""
    import torch

    import flashlight
    from flashlight import passes

    example = [torch.randn(1, 2, 40, 80) for _ in range(3)]
    _marked(*[(t, d) for t in example for d in (1, 2, 3)])
    prog = flashlight.trace(_plain, *example)
    assert len(prog.params) == 5
    out = passes.run_pipeline(prog, passes.DEFAULT_PIPELINE)
    assert "if W >= 1" in str(out) and "-1 >= 0" not in str(out)
    rng = np.random.default_rng(3)
    for h, sq, sk, d, dv in ((1, 3, 5, 8, 4), (3, 17, 2, 16, 24)):
        ins = {"q": rng.standard_normal((1, h, sq, d)).astype(np.float32),
               "k": rng.standard_normal((1, h, sk, d)).astype(np.float32),
               "v": rng.standard_normal((1, h, sk, dv)).astype(np.float32)}
        ref = _plain(*[torch.from_numpy(ins[name]) for name in "qkv"]).numpy()
        np.testing.assert_allclose(interpret(out, ins)["out0"], ref, rtol=1e-5, atol=1e-6)


def test_explain_shows_one_kernel_that_takes_the_size_as_an_argument():
    import torch

    import flashlight

    x = _marked((torch.randn(37, 64), 0))
    ex = flashlight.explain(_rms, *x, torch.randn(64))
    assert not ex.fallbacks and len(ex.kernels) == 1
    assert "out0_ptr, S):" in ex.kernels[0].source
    assert "m_i0 = o_i0 < S" in ex.kernels[0].source


# }}}


def test_a_reshape_keeps_a_size_parameter_as_its_own_dimension_and_refuses_to_merge_it():
    from flashlight.frontend.unsupported import Unsupported
    from flashlight.frontend.values import Value, placeholders
    from flashlight.ir.expr import Load

    x = Value(Load("x", placeholders(3)), (1, "S", 6), "f32")
    split = x.reshape(("S", 2, 3))
    assert split.shape == ("S", 2, 3)
    assert str(split.expr) == "x[0,_p0,3 * _p1 + _p2]"
    with pytest.raises(Unsupported, match="merges or splits a size parameter"):
        x.reshape((-1,))
    with pytest.raises(Unsupported, match="merges or splits a size parameter"):
        x.reshape(("S", "T", 6))


def test_a_graph_with_varying_sizes_lifts_bound_to_one_calls_sizes_as_the_static_program():
    """What a parametric program falls back to where it cannot be compiled for every size: the
    same graph lifted at one call's sizes, which is the program a static capture lifts."""
    import torch

    import flashlight
    from flashlight.frontend.capture import capture_graphs
    from flashlight.frontend.lift import lift_graph

    qkv = [torch.randn(1, 2, 37, 16) for _ in range(3)]
    static = flashlight.trace(_causal, *qkv)
    [g], _ = capture_graphs(_causal, _marked(*[(t, 2) for t in qkv]))
    symbols = {str(x.node.expr): int(x.node.hint) for x in g.example_inputs if isinstance(x, torch.SymInt)}
    assert symbols and set(symbols.values()) == {37}
    [bound] = lift_graph(g.graph_module, g.input_names, "causal", ["q", "k", "v"], sizes=symbols).programs
    assert not bound.params
    # the same program up to the names of temporaries (the symbolic graph names its nodes apart)
    assert [(t.name, t.shape) for t in bound.inputs + bound.outputs] == \
        [(t.name, t.shape) for t in static.inputs + static.outputs]
    assert sorted(t.shape for t in bound.temps) == sorted(t.shape for t in static.temps)
    assert len(bound.statements()) == len(static.statements())
    ins = {name: t.numpy() for name, t in zip("qkv", qkv)}
    np.testing.assert_array_equal(interpret(bound, ins)["out0"], interpret(static, ins)["out0"])
