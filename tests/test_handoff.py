"""Who compiles a segment (issue 21). By default, on the GPU, a program none of whose kernels
reduces a matrix product again is Inductor's; with ``inductor=True`` the register model decides (flashlight where its kernels keep in
registers what Inductor would store: a contraction reduced again, an operand normalised in the
kernel) after the lift cut programs by it. The verdict and its reason are in explain."""

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


@pytest.mark.parametrize("fn, compiler, reason", [
    (attention, "flashlight", "the contraction bmm[2, 32, 32] is reduced again inside the kernel and never stored"),
    (rmsnorm_linear, "flashlight", "of the contraction mm is computed from a reduction inside the kernel"),
    (mlp, "Inductor", "no contraction's result or operand stays in registers"),
    (rmsnorm, "Inductor", "no contraction's result or operand stays in registers"),
])
def test_explain_says_who_compiles_each_program_and_why(fn, compiler, reason):
    args = _inputs(fn.__name__)
    ex = flashlight.explain(fn, *args, options=flashlight.Options(inductor=True))
    assert [(d.compiler, reason in d.reason) for d in ex.compilers] == [(compiler, True)], ex.compilers
    assert f"{fn.__name__}: {compiler}: " in str(ex) and "-- who compiles each program --" in str(ex)
    # by default a program is ours where a kernel reduces a matrix product again, else Inductor's on
    # the GPU (on the CPU the verdict is only said: the interpreter is flashlight's test target)
    default = flashlight.explain(fn, *args).compilers[0]
    assert default.compiler == "flashlight", default
    kept = "kernel 0 computes the matrix product bmm and reduces it again (amax)"
    assert (kept in default.reason) == (fn is attention), default
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


def block(x, w, wq, wk, wv, wo, w1):  # a transformer block: norm, projections, attention, MLP
    h = rmsnorm(x, w)
    q, k, v = (h @ m.T for m in (wq, wk, wv))
    a = attention(q[None], k[None], v[None])[0] @ wo.T + x
    return torch.relu(a @ w1.T) + a


def test_a_block_is_cut_into_what_flashlight_fuses_and_what_inductor_compiles():
    """Where Inductor may take segments, one program is cut in two: the norm, the projections it
    feeds and the attention (flashlight's: the normalised rows and the scores stay in registers),
    and the output projection, the residual and the MLP (Inductor's). Values and gradients are
    eager's."""
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(16, 32, generator=g), torch.randn(32, generator=g)] + \
        [torch.randn(32, 32, generator=g) / 6 for _ in range(5)]
    ex = flashlight.explain(block, *args, options=flashlight.Options(inductor=True))
    assert [d.compiler for d in ex.compilers] == ["flashlight", "Inductor"], ex.compilers
    assert "the operand mul_1[16, 32] of the contraction mm" in ex.compilers[0].reason
    # on the CPU by default nothing is cut: one program, flashlight's
    assert [d.program for d in flashlight.explain(block, *args).compilers] == ["block"]
    f = flashlight.compile(block, inductor=True)
    check_against_eager(block, *args, compiled=f)
    kinds = [type(c).__name__ for c in f.graphs[0].compiled.values()]
    assert kinds == ["CompiledProgram", "InductorSegment"], kinds
