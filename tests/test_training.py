"""Training (issue 18): the compiler partitions the joint forward/backward graph. The forward keeps
its inputs, outputs and row statistics (``O(B*H*S)``), never an ``Sq x Sk`` tensor; the backward
recomputes the rest and is compiled too. ``explain`` says what is saved and why, and reports the
backward (``ex.backward``)."""

from __future__ import annotations

import math

import pytest
import torch

import flashlight
from conftest import check_against_eager
from test_variants import CASES as VARIANTS
from test_variants import S as S_VARIANTS

SQ, SK = 37, 45


def causal(q, k, v):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    i, j = torch.arange(s.shape[-2])[:, None], torch.arange(s.shape[-1])[None, :]
    return torch.softmax(s.masked_fill(j > i, float("-inf")), -1) @ v


def alibi(q, k, v, slopes):
    s = q @ k.transpose(-1, -2) * 0.25
    i, j = torch.arange(s.shape[-2])[:, None], torch.arange(s.shape[-1])[None, :]
    return torch.softmax(s + slopes[:, None, None] * (j - i), -1) @ v


def _qkv(g: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(1, 2, SQ, 16, generator=g), torch.randn(1, 2, SK, 16, generator=g),
            torch.randn(1, 2, SK, 16, generator=g)]


def _grad(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.requires_grad_() for t in ts]


def test_the_forward_saves_row_statistics_not_the_probabilities():
    ex = flashlight.explain(causal, *_grad(_qkv(torch.Generator().manual_seed(0))))
    assert not ex.buffers and len(ex.kernels) == 1 and not ex.fallbacks
    assert not [s for s in ex.saved if _query_by_key(s.shape, SQ, SK)], ex.saved
    stats = [s for s in ex.saved if s.why.startswith("a row statistic")]
    assert sorted(s.shape for s in stats) == [(1, 2, SQ, 1)] * 2, ex.saved  # the row max and the row sum
    # the inputs, and the output with its definition, from which the backward reads Δ (exchange-sums)
    assert {s.why.split(";")[0] for s in ex.saved if s not in stats} == {"an input of the graph", "an output of the graph"}
    assert "-- saved for the backward --" in str(ex) and "a row statistic" in str(ex)


def test_the_backward_is_compiled_and_reported():
    ex = flashlight.explain(causal, *_grad(_qkv(torch.Generator().manual_seed(0))))
    assert ex.backward is not None and ex.backward.kernels and not ex.backward.fallbacks
    assert "-- backward (ex.backward) --" in str(ex) and "== the backward ==" in ex.full()
    assert all(k.name.startswith("flashlight_causal_backward") for k in ex.backward.kernels)


def test_an_inference_call_has_no_backward():
    ex = flashlight.explain(causal, *_qkv(torch.Generator().manual_seed(0)))
    assert ex.backward is None and not ex.saved


def test_gradients_through_the_compiled_backward_match_eager():
    g = torch.Generator().manual_seed(1)
    check_against_eager(causal, *_qkv(g))
    check_against_eager(alibi, *_qkv(g), torch.rand(2, generator=g))


def test_a_random_value_is_saved_not_recomputed():
    """Recomputing ``rand`` in the backward would draw other numbers: the forward keeps it, and
    the gradient is the forward's mask."""
    def dropout_like(x):
        return x * (torch.rand_like(x) > 0.5)

    x = torch.randn(8, 16, requires_grad=True)
    ex = flashlight.explain(dropout_like, x)
    assert any("impure" in s.why for s in ex.saved), ex.saved
    out = flashlight.compile(dropout_like)(x)
    out.sum().backward()
    assert torch.equal(x.grad, (out != 0).to(x.dtype)), "the gradient follows the forward's draw"


def test_compile_backward_false_runs_the_backward_in_eager_pytorch():
    """With AOT autograd's own partition: the eager backward reads only what the forward's
    program computed (fuzz/corpus/mismatch_9101674.py)."""
    ex = flashlight.explain(causal, *_grad(_qkv(torch.Generator().manual_seed(2))),
                            options=flashlight.Options(compile_backward=False))
    assert ex.backward is None and all("AOT autograd's partition" in s.why for s in ex.saved), ex.saved
    f = flashlight.compile(causal, compile_backward=False)
    check_against_eager(causal, *_qkv(torch.Generator().manual_seed(2)), compiled=f)
    assert f.graphs and not f.backward_graphs
    g = flashlight.compile(causal)
    check_against_eager(causal, *_qkv(torch.Generator().manual_seed(2)), compiled=g)
    assert len(g.backward_graphs) == 1


def test_compile_backward_must_be_a_bool():
    with pytest.raises(ValueError, match="compile_backward='no' is not True or False"):
        flashlight.Options(compile_backward="no")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_no_variant_saves_a_tensor_of_every_query_and_key(name):
    """For every variant of tests/test_variants.py (whose gradients test_variant compares with
    eager's), the forward is still one kernel with no global buffer, and nothing it saves for the
    backward has a query and a key dimension, but an input (Evoformer's pair bias, kept by
    reference, no copy)."""
    fn, make = VARIANTS[name]
    args = [a.requires_grad_() if a.is_floating_point() else a for a in make()]
    out = fn(*args)
    sq, sk = (out.shape[-2], args[1].shape[-2]) if name != "evoformer" else (S_VARIANTS, S_VARIANTS)
    ex = flashlight.explain(fn, *args)
    assert len(ex.kernels) == 1 and not ex.buffers and not ex.fallbacks, (ex.kernels, ex.buffers, ex.fallbacks)
    assert not [s for s in ex.saved if _query_by_key(s.shape, sq, sk) and s.why != "an input of the graph"], ex.saved
    assert ex.backward is not None and ex.backward.kernels
    largest = max(a.numel() for a in args)
    stored = [(b.name, b.shape) for b in ex.backward.buffers
              if _query_by_key(b.shape, sq, sk) and math.prod(b.shape) > largest]
    assert not stored, stored  # Evoformer's pair-bias gradient has the size of its input


@pytest.mark.parametrize("fn", [causal, alibi], ids=["causal", "alibi"])
def test_the_backward_recomputes_the_scores_in_two_kernels(fn):
    """FlashAttention-2's backward, derived: one kernel over query tiles (Δ from dO and the saved
    output, then dQ), one over key tiles (dV, dK), each computing its own copies of the scores and
    dP; the only buffer is Δ, one number per query row. Its gradients match eager's."""
    g = torch.Generator().manual_seed(5)
    qkv = _grad(_qkv(g))
    args = qkv + ([torch.rand(2, generator=g)] if fn is alibi else [])  # the slopes need no gradient
    ex = flashlight.explain(fn, *args)
    bw = ex.backward
    scores = [k for k in bw.kernels if "bmm" in k.computes]
    assert len(scores) == 2 and not bw.fallbacks, [(k.name, k.computes) for k in bw.kernels]
    # Δ, one number per query row; a causal mask adds the flag of NaN row sums, one per head
    # (a row with no unmasked key: eager's dV is NaN there, restored), folded by a third kernel
    assert ((1, 2, SQ), "f32") in [(b.shape, b.dtype) for b in bw.buffers]
    assert all(math.prod(b.shape) <= 2 * SQ for b in bw.buffers), bw.buffers
    copies = [p.transformation for p in bw.proofs if p.legal and p.transformation.startswith("recompute")]
    assert len(copies) == 2, copies  # the scores and dP: one more copy each, beside the originals
    exchanged = [p for p in bw.proofs if p.transformation.startswith("exchange sums")]
    assert [p.legal for p in exchanged] == [True] and "Σ_d X(i,d)" in exchanged[0].lemma, exchanged
    check_against_eager(fn, *args)


def _query_by_key(shape: tuple, sq: int, sk: int) -> bool:
    dims = list(shape)
    if sq not in dims:
        return False
    dims.remove(sq)
    return sk in dims


def test_the_backward_spreads_its_rows_over_programs():
    """dQ (rows of queries) and a copy of dV (rows of keys) share only the batch and head loops:
    fused, each program walked 1024 rows (8 programs in all); each keeps a grid over its rows."""
    q, k, v = (torch.randn(2, 4, 1024, 64, requires_grad=True) for _ in range(3))
    ex = flashlight.explain(causal, q, k, v)
    heavy = [kern for kern in ex.backward.kernels if "bmm" in kern.computes]  # not the NaN flag's
    assert len(heavy) == 2 and min(kern.grid for kern in heavy) >= 2 * 4 * 1024 // 64, \
        [(kern.name, kern.grid) for kern in ex.backward.kernels]


def test_explain_leaves_the_callers_gradients_alone():
    q, k, v = _grad(_qkv(torch.Generator().manual_seed(4)))
    ex = flashlight.explain(causal, q, k, v)
    assert ex.backward is not None and ex.backward.kernels
    assert q.grad is None and k.grad is None and v.grad is None


def temperature(q, k, v, t):
    return torch.softmax(q @ k.transpose(-1, -2) * t[:, None, None], -1) @ v


@pytest.mark.parametrize("fn", [alibi, temperature], ids=["alibi_slopes", "temperature"])
def test_per_head_parameters_get_gradients_without_a_score_buffer(fn):
    """The gradient of a per-head slope or temperature sums ``dS`` (times ``j - i`` or the
    scores) over every query and key of a head. stage-reductions splits it into sums per query
    row, which join the kernel over query tiles that computes ``dS`` anyway, and a sum of those
    per head; nothing of ``Sq x Sk`` is stored, and every backward kernel keeps a grid over rows."""
    g = torch.Generator().manual_seed(6)
    args = _grad(_qkv(g) + [torch.rand(2, generator=g)])
    ex = flashlight.explain(fn, *args)
    bw = ex.backward
    assert not [b for b in bw.buffers if _query_by_key(b.shape, SQ, SK)], bw.buffers
    check_against_eager(fn, *args)
    q, k, v = (torch.randn(1, 2, 512, 16, requires_grad=True) for _ in range(3))
    big = flashlight.explain(fn, q, k, v, torch.rand(2, requires_grad=True))
    assert any(p.legal and p.transformation.startswith("stage ") for p in big.backward.proofs)
    heavy = [kern for kern in big.backward.kernels if "bmm" in kern.computes]  # not the fold per head
    assert min(kern.grid for kern in heavy) >= 2 * 512 // 64, [(kern.name, kern.grid, kern.computes) for kern in heavy]


def _row3_masked(q, k, v):
    s = q @ k.transpose(-1, -2) * 0.25
    i, j = torch.arange(s.shape[-2])[:, None], torch.arange(s.shape[-1])[None, :]
    return torch.softmax(s.masked_fill((i == 3) | (j > i), float("-inf")), -1) @ v


def _causal_quarter(q, k, v):  # noqa: D103
    s = q @ k.transpose(-1, -2) * 0.25
    i, j = torch.arange(s.shape[-2])[:, None], torch.arange(s.shape[-1])[None, :]
    return torch.softmax(s.masked_fill(j > i, float("-inf")), -1) @ v


def test_a_fully_masked_row_gives_eagers_gradients():
    """Query row 3 sees no key: its output is NaN, and so are eager's dV everywhere (``0 * nan``
    from the row's probabilities, whose saved row sum is NaN). The backward's probabilities take
    the mask's domain (the row sum is at least 1 where finite), and a flag of NaN row sums
    restores eager's NaN where the removed points would have folded it; dQ's row 3 is 0 and dK
    is finite, as eager's."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g, requires_grad=True) for _ in range(3))
    out = flashlight.compile(_row3_masked)(q, k, v)
    assert torch.isnan(out[..., 3, :]).all() and not torch.isnan(out[..., :3, :]).any()
    got = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    ref = torch.autograd.grad(_row3_masked(q, k, v), (q, k, v), torch.ones_like(out))
    assert torch.isnan(ref[2]).all() and torch.isnan(got[2]).all()
    assert (got[0][..., 3, :] == 0).all()
    for a, b in zip(got[:2], ref[:2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_backward_of_causal_attention_skips_the_masked_tiles():
    """The forward's row sum reaches the backward with its fact (``>= 1.0``), so the backward's
    probabilities take the causal domain: each kernel walks the key (or query) tiles of the
    triangle only, as the forward does."""
    q, k, v = (torch.randn(1, 2, 512, 16, requires_grad=True) for _ in range(3))
    ex = flashlight.explain(_causal_quarter, q, k, v)
    assert " >= 1.0" in ex.backward.stages[0][1].splitlines()[0]
    final = ex.backward.stages[-1][1]
    serial = [line for line in final.splitlines() if "@serial tiles" in line]
    # the dQ pass over key tiles, the dK/dV pass over query tiles: the triangle only (Δ reads the
    # saved output, no keys; the third loop folds the NaN flag of the row sums, a vector per
    # head, over every row)
    triangle = [line for line in serial if "masked]" in line and "0:8 " not in line]
    assert len(triangle) == 2 and len(serial) == 3, serial


def _doubled(q, k, v):
    return (torch.softmax(q @ k.transpose(-1, -2) * 0.25, -1) @ v) * 2.0


def test_the_row_sums_read_the_saved_output_through_its_definition():
    """The partition keeps the output ``O = P v`` and states its definition in the backward
    (``as given``); exchange-sums rewrites ``Δ = Σ_j P dP`` as ``Σ_d dO O`` and removes the
    given. Where the output is not that sum (here ``2 P v``: nothing states ``P v``), the
    exchange is refused with its reason, Δ takes its own pass over the keys (isl's witness in
    fuse-reductions), and the gradients match eager's either way."""
    g = torch.Generator().manual_seed(8)
    args = [torch.randn(1, 2, n, 16, generator=g, requires_grad=True) for n in (SQ, SK, SK)]
    ex = flashlight.explain(_causal_quarter, *args)
    stages = dict(ex.backward.stages[:3])
    assert " as given" in stages["inline"] and " as given" not in stages["exchange-sums"]
    exchanged = [p for p in ex.backward.proofs if p.transformation.startswith("exchange sums")]
    assert [p.legal for p in exchanged] == [True] and "which the input" in exchanged[0].reason
    assert " as given" not in ex.backward.stages[-1][1]
    check_against_eager(_causal_quarter, *args)

    refused = flashlight.explain(_doubled, *args)
    assert all(" as given" not in text for _, text in refused.backward.stages)
    why = [p.reason for p in refused.backward.proofs if p.transformation.startswith("exchange sums")]
    assert len(why) == 1 and "is not a forward output" in why[0], why
    witness = [p for p in refused.backward.proofs if not p.legal and p.witness and "fuse" in p.transformation]
    assert witness, [p.transformation for p in refused.backward.proofs]
    check_against_eager(_doubled, *args)


class _Block(torch.nn.Module):
    """A pre-norm attention block: layer norm, a fused qkv projection, causal attention, the
    output projection and the residual."""

    def __init__(self, d: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.norm = heads, torch.nn.LayerNorm(d)
        self.qkv, self.out = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = causal(q, k, v)
        return x + self.out(a.transpose(1, 2).reshape(b, s, d))


def test_a_transformer_block_trains_with_its_parameters():
    """Norm, projections, attention and the residual, with parameters: the forward keeps the
    attention's output (a matrix product no larger than the input, which the output projection's
    backward reads) with its definition, so Δ reads it (exchange-sums) as in attention alone;
    nothing of ``S x S`` is saved or stored, and every gradient (input and parameters) matches
    eager's."""
    torch.manual_seed(9)
    block, s = _Block(), 80  # the scores (2 x 2 x 80 x 80) outgrow the projection they are read from
    x = torch.randn(2, s, 32, requires_grad=True)
    ex = flashlight.explain(block, x)
    assert not [t for t in ex.saved if _query_by_key(t.shape, s, s)], ex.saved
    products = [t for t in ex.saved if t.why.startswith("a matrix product")]
    assert [t.shape for t in products] == [(4, s, 16)] and "exchange-sums" in products[0].why, ex.saved
    assert [p.legal for p in ex.backward.proofs if p.transformation.startswith("exchange sums") and p.legal] == [True]
    assert not [b for b in ex.backward.buffers if _query_by_key(b.shape, s, s)], ex.backward.buffers
    assert not ex.fallbacks and not ex.backward.fallbacks
    check_against_eager(block, x, module=block)


def test_an_output_the_backward_computes_itself_states_no_given():
    """Fuzz seed 9501187: ``t2 = exp(t0 - max t0) @ x2`` is an output that the backward also
    recomputes (``t0`` is another output); the partition stated a given for it and failed
    (KeyError). Such an output has nothing to state; gradients match eager's, with an empty
    inner dimension too."""
    def prog(x0, x1, x2, x3):
        t0 = torch.matmul(x0, x1.mT)
        t2 = torch.exp(t0 - t0.amax(-1, keepdim=True)) @ x2
        return torch.add(t2, x3, alpha=2), t0

    for c in (0, 3):
        g = torch.Generator().manual_seed(c)
        args = [torch.randn(1, c, generator=g), torch.rand(1, c, generator=g) + 0.5,
                torch.randn(1, c, generator=g), torch.randn(1, c, generator=g)]
        check_against_eager(prog, *args)


@pytest.mark.parametrize("name", ["gqa_expand", "gqa_repeat_interleave", "gqa_5d"])
def test_gqa_sums_a_groups_key_and_value_gradients_inside_the_kernel(name):
    """The gradients of the repeated keys and values are summed over the query heads of each group
    where they are computed (merge-sums, then a loop over the group's heads in the key-major
    kernel): no buffer holds them per query head. What the backward keeps in global memory is
    dQ, one tensor of the keys' shape and the row statistics: before, two buffers of the
    queries' shape more (test_variants compares the gradients with eager's)."""
    fn, make = VARIANTS[name]
    args = [a.requires_grad_() if a.is_floating_point() else a for a in make()]
    q, k = args[0], args[1]
    ex = flashlight.explain(fn, *args)
    merges = [p for p in ex.backward.proofs if p.transformation.startswith("merge ")]
    assert len(merges) == 2 and all(p.legal for p in merges), [str(p) for p in merges]
    kept = sum(math.prod(b.shape) for b in ex.backward.buffers)
    assert kept <= q.numel() + k.numel() + q.numel() // q.shape[-1], ex.backward.buffers


def relative_bias(q, k, v, table):
    """A learned bias per head and relative position ``i - j`` (a table of 2S - 1 rows)."""
    s = q.shape[-2]
    i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
    bias = table[i - j + s - 1].permute(2, 0, 1)
    return torch.softmax(q @ k.transpose(-1, -2) * 0.25 + bias, -1) @ v


def bucketed_bias(q, k, v, table, buckets):
    """T5's form: the bias row is a bucket of ``i - j`` that a tensor holds (data, not affine)."""
    s = q.shape[-2]
    i, j = torch.arange(s)[:, None], torch.arange(s)[None, :]
    bias = table[buckets[i - j + s - 1]].permute(2, 0, 1)
    return torch.softmax(q @ k.transpose(-1, -2) * 0.25 + bias, -1) @ v


@pytest.mark.parametrize("fn", [relative_bias, bucketed_bias], ids=["relative_position", "buckets"])
def test_a_bias_tables_gradient_is_a_scatter_add_inside_the_backward_kernel(fn):
    """The gradient of a table read at ``i - j`` (or at a bucket of it) sums dS over the positions
    that read each row: index_put with accumulate, lifted as a scatter whose points add atomically.
    Its loops over the queries and keys are spread over programs like any parallel loop, so it
    joins the key-major kernel that computes dS per tile: no S x S buffer, no eager op."""
    g = torch.Generator().manual_seed(11)
    S = 64  # the scores are larger than q and k: recomputed, not stored
    q, k, v = (torch.randn(2, 3, S, 16, generator=g) for _ in range(3))
    table = torch.randn(2 * S - 1, 3, generator=g)
    args = [q, k, v, table]
    if fn is bucketed_bias:
        rel = torch.arange(2 * S - 1) - (S - 1)
        buckets = (torch.sign(rel) * torch.log2(rel.abs().float() + 1).floor()).long() + 8
        args = [q, k, v, torch.randn(17, 3, generator=g), buckets]
    check_against_eager(fn, *args)
    ex = flashlight.explain(fn, *[a.requires_grad_() if a.is_floating_point() else a for a in args])
    assert not ex.fallbacks and not ex.backward.fallbacks, ex.backward.fallbacks
    assert not [b for b in ex.backward.buffers if S in b.shape and b.shape.count(S) >= 2], ex.backward.buffers
    scatter = [k for k in ex.backward.kernels if "tl.atomic_add" in k.source]
    assert len(scatter) == 1 and "reduces bmm" in scatter[0].computes, [k.computes for k in ex.backward.kernels]


def relu_mlp(x, w):
    return torch.relu(x @ w.T) * 2


def test_a_relu_projections_backward_compiles_its_guard_reading_the_recomputed_product():
    """The backward of ``relu(x @ wᵀ)`` recomputes the product in the kernel that sums ``dW`` and
    tests it in the guard of that sum: the guard reads the product's register (it ran eagerly,
    "mm is read before this kernel writes it", when only expressions counted as reads)."""
    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(8, 16, generator=g), torch.randn(32, 16, generator=g)
    f = flashlight.compile(relu_mlp)
    check_against_eager(relu_mlp, x, w, compiled=f)
    assert f.backward_graphs and not [fb for b in f.backward_graphs for fb in b.fallbacks]


def test_evoformers_backward_kernels_keep_the_rows_of_the_batch_in_their_grids():
    """The copy of the pair bias's gradient (a sum over the rows) is unrelated to the kernel of
    ``dQ``; fused into it, the common grid lost the rows and each program held all of them (128
    programs of 256 x 8 rows at the benchmark's shape): it forms a kernel of its own instead. (A
    statement that reads what the kernel set aside computes still joins it: T5's scores.)"""
    fn, _ = VARIANTS["evoformer"]
    n = 64
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*s, generator=g).requires_grad_()
            for s in ((1, n, 128, 2, 16),) * 3 + ((1, n, 1, 1, 128), (1, 1, 2, 128, 128))]
    ex = flashlight.explain(fn, *args)
    looping = [(k.grid, k.computes) for k in ex.backward.kernels if "loops over tiles" in k.computes]
    # the pair bias's gradient sums over the rows (i0): its kernel walks them; every other kernel
    # has them in its grid
    others = [(grid, what) for grid, what in looping if "loops over tiles of i0:" not in what]
    assert len(others) >= 3 and all(grid >= n for grid, _ in others), looping


def test_a_bias_gradient_summed_over_the_batch_is_a_matrix_product_per_row():
    """The gradient of a bias every row of the batch shares (an Evoformer's pair bias, summed over
    the MSA rows; a learned ``[H, S, S]`` bias, over the batch) recomputes the scores and ``dP``
    per row: the loop over the rows walks one row at a time, so each is a product of two
    matrices (``tl.dot``). Tiled like any serial loop, the rows made the products batched,
    computed by broadcasting: 8 rows x 8 queries x 256 keys x 64 in registers at the
    benchmark's shape, a training step that did not finish in 150 s on the H100 (run 22)."""
    def learned_bias(q, k, v, bias):
        return torch.softmax(q @ k.transpose(-1, -2) * 0.25 + bias, -1) @ v

    g = torch.Generator().manual_seed(5)
    args = [torch.randn(3, 2, 40, 16, generator=g) for _ in range(3)] + [torch.randn(2, 40, 40, generator=g)]
    check_against_eager(learned_bias, *args)
    ex = flashlight.explain(learned_bias, *[a.clone().requires_grad_() for a in args])
    (bias_kernel,) = [k for k in ex.backward.kernels if "loops over tiles of i0:3/1" in k.computes]
    assert "matrix products of two tiles: S0_1 over i4, S" in next(
        p.reason for p in ex.backward.proofs if p.transformation.startswith("tile kernel 0"))
    assert "tl.dot(" in bias_kernel.source and "i0 = t_i0" in bias_kernel.source
