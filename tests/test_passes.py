"""Pass-level tests: text in, text out, and the legality decisions each pass records."""

from __future__ import annotations

import numpy as np
import pytest

from flashlight import ir, passes
from flashlight.ir.interpret import interpret
from flashlight.passes import algebra
from flashlight.passes.fuse_reductions import fuse_reductions

from conftest import check_golden

# The safe-softmax row reduction followed by P @ V, one statement per nest (the lifted form).
# Rows longer than the block limit (4 here) are visited in tiles, which is where fusion matters.
SOFTMAX_PV = """\
program softmax_pv(S: f32[4,6], V: f32[6,2]) -> (o: f32[4,2])
  buffer m: f32[4]
  buffer l: f32[4]
  buffer acc: f32[4,2]
  for i in 0:4 parallel
    for j in 0:6 reduce
      M1: m[i] max= S[i,j]
  for i in 0:4 parallel
    for j in 0:6 reduce
      L1: l[i] += exp(S[i,j] - m[i])
  for i in 0:4 parallel, d in 0:2 parallel
    for j in 0:6 reduce
      O1: acc[i,d] += exp(S[i,j] - m[i]) * V[j,d]
  for i in 0:4 parallel, d in 0:2 parallel
    N1: o[i,d] = acc[i,d] / l[i]"""

TANH = """\
program tanh_sum(x: f32[3,200]) -> (out0: f32[3])
  buffer m: f32[3]
  for i in 0:3 parallel
    for j in 0:200 reduce
      M: m[i] max= x[i,j]
  for i in 0:3 parallel
    for j in 0:200 reduce
      T: out0[i] += tanh(x[i,j] - m[i])"""


def _run(prog: ir.Program, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ins = {t.name: rng.standard_normal(t.shape).astype(np.float32) for t in prog.inputs}
    return interpret(prog, ins)


def _proof(prog: ir.Program, prefix: str) -> ir.Proof:
    return next(p for p in prog.proofs if p.transformation.startswith(prefix))


def test_naive_fusion_is_illegal_with_a_witness():
    prog = fuse_reductions(ir.parse(SOFTMAX_PV), block_limit=4)
    refused = _proof(prog, "fuse L1")
    assert not refused.legal
    # every step of the sum needs the last step of the max
    assert refused.witness == "M1[3, 5] -> L1[3, 4]"
    assert "M1[i, j = 5] -> L1[i' = i, j']" in refused.relation


def test_online_rewrite_is_proved_and_applied():
    prog = fuse_reductions(ir.parse(SOFTMAX_PV), block_limit=4)
    for name in ("L1", "O1"):
        accepted = _proof(prog, f"online rewrite of {name}")
        assert accepted.legal and "separates over (+, *)" in accepted.lemma
        assert "exp(-y_new_0 + y_old_0)" in accepted.lemma
    check_golden("fuse_softmax_pv", str(prog))
    # one kernel: one nest, one serial loop carrying max, sum and P@V, then the division
    assert len(prog.body) == 1
    assert str(prog).count("@serial") == 1


def test_online_rewrite_preserves_values():
    before = ir.parse(SOFTMAX_PV)
    after = passes.run_pipeline(before, "fuse-reductions{block_limit=4},contract-buffers,tile{block_m=2,block_n=4}")
    a, b = _run(before)["o"], _run(after)["o"]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_lemma_failure_keeps_two_passes():
    prog = fuse_reductions(ir.parse(TANH), block_limit=64)
    refused = _proof(prog, "online rewrite of T")
    assert not refused.legal and "does not separate" in refused.reason
    text = str(prog)
    assert len(prog.body) == 1, "still one kernel"
    assert text.count("@serial") == 2, "but two passes over x"
    np.testing.assert_allclose(_run(prog)["out0"], _run(ir.parse(TANH))["out0"], rtol=1e-5)


# Differential attention's shape: two softmax chains over one V, combined after both; eager's
# order interleaves them.
TWO_CHAINS = """\
program two_chains(S: f32[4,6], T: f32[4,6], V: f32[6,2]) -> (o: f32[4,2])
  buffer m: f32[4]
  buffer l: f32[4]
  buffer m2: f32[4]
  buffer l2: f32[4]
  buffer acc: f32[4,2]
  buffer acc2: f32[4,2]
  for i in 0:4 parallel
    for j in 0:6 reduce
      M1: m[i] max= S[i,j]
  for i in 0:4 parallel
    for j in 0:6 reduce
      L1: l[i] += exp(S[i,j] - m[i])
  for i in 0:4 parallel
    for j in 0:6 reduce
      M2: m2[i] max= T[i,j]
  for i in 0:4 parallel
    for j in 0:6 reduce
      L2: l2[i] += exp(T[i,j] - m2[i])
  for i in 0:4 parallel, d in 0:2 parallel
    for j in 0:6 reduce
      O1: acc[i,d] += exp(S[i,j] - m[i]) * V[j,d]
  for i in 0:4 parallel, d in 0:2 parallel
    for j in 0:6 reduce
      O2: acc2[i,d] += exp(T[i,j] - m2[i]) * V[j,d]
  for i in 0:4 parallel, d in 0:2 parallel
    N1: o[i,d] = acc[i,d] / l[i] - acc2[i,d] / l2[i] * 0.5"""


def test_wide_running_state_splits_into_two_kernels():
    """Two accumulators of 2 columns a row over a limit of 3: the first chain (O1 with the max
    and sum it reads) becomes a kernel of its own, run first; the rest reads its per-row results."""
    fused = fuse_reductions(ir.parse(TWO_CHAINS), block_limit=4)
    prog = passes.split_wide_state(fused, state_limit=3)
    split = _proof(prog, "split")
    assert split.legal and "into [M1, L1, O1] and [M2, L2, O2, N1]" in split.transformation
    assert "4 running values a row (O1: 2, O2: 2; limit 3)" in split.reason
    assert "reads acc, l of the first from memory" in split.reason
    assert len(prog.body) == 2 and str(prog).count("@serial") == 2
    tiled = passes.run_pipeline(prog, "contract-buffers")
    assert {t.name for t in tiled.tensors if t.role == "temp"} >= {"acc", "l"}, "crossing values stay buffers"
    np.testing.assert_allclose(_run(prog)["o"], _run(ir.parse(TWO_CHAINS))["o"], rtol=1e-5, atol=1e-6)
    assert str(fused).count("@serial") == 1, "fuse-reductions itself forms one kernel"
    whole = passes.split_wide_state(fused, state_limit=4)
    assert len(whole.body) == 1 and not any(p.transformation.startswith("split") for p in whole.proofs)


EXP_SUM = """\
program p(x: f32[4,5]) -> (out0: f32[4])
  buffer e: f32[4,5]
  buffer s: f32[4]
  for i in 0:4 parallel, j in 0:5 parallel
    A: e[i,j] = exp(x[i,j] * 0.5)
  for i in 0:4 parallel
    for j in 0:5 reduce
      B: s[i] += e[i,j]
  for i in 0:4 parallel
    C: out0[i] = s[i] + 1.0"""


def test_inline_pointwise_golden():
    text = EXP_SUM
    prog = passes.inline_pointwise(ir.parse(text))
    check_golden("inline", str(prog))
    assert "e[" not in str(prog) and len(prog.body) == 2
    np.testing.assert_allclose(_run(prog)["out0"], _run(ir.parse(text))["out0"], rtol=1e-6)


def test_inline_keeps_a_definition_whose_copies_would_grow():
    """Each value reads the last twice: inlined all the way, d4 would hold 2^4 copies of x. With a
    bound of 12 nodes (a load counts with its indices), d1 (5 nodes) and d2 (d1 twice: 11) are
    inlined, d3 (23) is kept and d4 reads it."""
    text = """\
program p(x: f32[4]) -> (out: f32[4])
  buffer d1: f32[4]
  buffer d2: f32[4]
  buffer d3: f32[4]
  buffer d4: f32[4]
  for i in 0:4 parallel
    A: d1[i] = x[i] * x[i]
  for i in 0:4 parallel
    B: d2[i] = d1[i] + d1[i]
  for i in 0:4 parallel
    C: d3[i] = d2[i] * d2[i]
  for i in 0:4 parallel
    D: d4[i] = d3[i] - d3[i]
  for i in 0:4 parallel
    E: out[i] = d4[i] + 1.0"""
    prog = passes.inline_pointwise(ir.parse(text), max_size=12)
    assert [t.name for t in prog.temps] == ["d3"]
    assert "C: d3[i] = (x[i] * x[i] + x[i] * x[i]) * (x[i] * x[i] + x[i] * x[i])" in str(prog)
    assert "E: out[i] = d3[i] - d3[i] + 1.0" in str(prog)
    assert "kept d3" in prog.proofs[-1].reason
    np.testing.assert_allclose(_run(prog)["out"], _run(ir.parse(text))["out"])
    assert len(passes.inline_pointwise(ir.parse(text)).temps) == 0, "the default bound inlines them all"


def test_masks_to_domains_only_for_identity_fills():
    text = """\
program p(x: f32[4,6]) -> (m: f32[4], s: f32[4])
  for i in 0:4 parallel
    for j in 0:6 reduce
      A: m[i] max= where(j > i, -inf, x[i,j])
  for i in 0:4 parallel
    for j in 0:6 reduce
      B: s[i] += where(j > i, -1000000000.0, x[i,j])"""
    prog = passes.masks_to_domains(ir.parse(text))
    check_golden("masks_to_domains", str(prog))
    assert "if j <= i" in str(prog)
    assert str(prog).count("if ") == 1, "a finite fill in a sum is no identity: it stays an expression"
    orig = _run(ir.parse(text))
    new = _run(prog)
    for name in ("m", "s"):
        np.testing.assert_allclose(new[name], orig[name], rtol=1e-6)


FINITE_MIN = """\
program p(x: f32[4,6]) -> (m: f32[4], s: f32[4])
  for i in 0:4 parallel
    for j in 0:6 reduce
      A: m[i] max= x[i,j] + where(j <= i + SHIFT, 0.0, -3.4028234663852886e+38)
  for i in 0:4 parallel
    for j in 0:6 reduce
      B: s[i] += exp(x[i,j] + where(j <= i + SHIFT, 0.0, -3.4028234663852886e+38) - m[i])"""


@pytest.mark.parametrize("shift, guarded", [(0, True), (-1, False)])
def test_a_finite_min_fill_becomes_a_domain_where_every_row_keeps_a_point(shift, guarded):
    """A model of the ``transformers`` library masks by adding ``finfo.min``, not -inf. Such a
    fill acts as -inf (a masked term is never a row's maximum, and exp of it less the maximum is
    exactly 0) where every row keeps a point, which isl proves for ``j <= i`` and refutes for
    ``j <= i - 1`` (row 0 is masked whole: eager's softmax is then uniform over the fill, so the
    mask stays an expression and the refusal says why)."""
    text = FINITE_MIN.replace("SHIFT", str(shift))
    prog = passes.masks_to_domains(ir.parse(text))
    assert (str(prog).count("if ") == 2) == guarded, str(prog)
    decision = prog.proofs[-1]
    if guarded:
        assert decision.legal and "acts as -inf: every row keeps a point where j <= i (isl)" in decision.lemma
    else:
        assert not decision.legal and "isl finds rows where j <= i - 1 holds nowhere" in decision.reason
    orig, new = _run(ir.parse(text)), _run(prog)
    for name in ("m", "s"):
        np.testing.assert_allclose(new[name], orig[name], rtol=1e-6)


def test_defer_normalization_golden():
    text = """\
program p(x: f32[3,5], v: f32[5,2]) -> (out0: f32[3,2])
  buffer l: f32[3]
  buffer a: f32[3,2]
  for i in 0:3 parallel
    for j in 0:5 reduce
      L: l[i] += exp(x[i,j])
  for i in 0:3 parallel, e in 0:2 parallel
    for j in 0:5 reduce
      A: a[i,e] += exp(x[i,j]) / l[i] * v[j,e]
  for i in 0:3 parallel, e in 0:2 parallel
    O: out0[i,e] = a[i,e]"""
    prog = passes.defer_normalization(ir.parse(text))
    check_golden("defer_normalization", str(prog))
    assert "/ l[i]" not in str(prog).split("A: ")[1].split("\n")[0]
    np.testing.assert_allclose(_run(prog)["out0"], _run(ir.parse(text))["out0"], rtol=1e-5)


def test_defer_normalization_leaves_a_one_term_sum():
    # layer_norm over an axis of extent 1 (fuzz seed 1004037): the mean is one term, which
    # eager rounds like the x it is subtracted from; hoisting s out of it through the f16
    # rounding made x - mean nonzero. No reduced iterator: nothing to defer past.
    text = """\
program p(x: f16[3,5], y: f16[3]) -> (out0: f32[3])
  buffer s: f32[3]
  buffer m: f32[3]
  for i in 0:3 parallel
    for j in 0:5 reduce
      S: s[i] += f32(x[i,j])
  for i in 0:3 parallel
    M: m[i] += f32(f16(f32(f16(s[i])) * f32(y[i])))
  for i in 0:3 parallel
    O: out0[i] = m[i]"""
    prog = ir.parse(text)
    assert passes.defer_normalization(prog) is prog


def test_tiled_program_golden_and_proof():
    prog = passes.run_pipeline(ir.parse(SOFTMAX_PV), "fuse-reductions{block_limit=4},contract-buffers,tile{block_m=16,block_n=16}")
    check_golden("tile_softmax_pv", str(prog))
    proof = _proof(prog, "tile kernel 0")
    assert proof.legal and "monoid" in proof.reason
    assert "local m" in str(prog) and "local acc" in str(prog)
    assert proof.reason.endswith("matrix products of two tiles: O1 over j")
    assert [s.name for s in prog.statements() if s.dot == "j"] == ["O1"], "P @ V is a product of two tiles"


def test_tile_marks_no_matrix_product_for_one_query_row():
    """With one query row the rows are no tile (a grid index of its own): P @ V is a vector times
    a matrix, which stays a reduction."""
    one_row = SOFTMAX_PV.replace("0:4", "0:1").replace("[4", "[1")
    prog = passes.run_pipeline(ir.parse(one_row), "fuse-reductions{block_limit=4},contract-buffers,tile{block_m=16,block_n=16}")
    assert not [s for s in prog.statements() if s.dot] and "as dot over" not in str(prog)
    assert "matrix products" not in _proof(prog, "tile kernel 0").reason


def test_a_matrix_product_mark_on_a_maximum_does_not_verify():
    text = SOFTMAX_PV.replace("M1: m[i] max= S[i,j]", "M1: m[i] max= S[i,j] as dot over j")
    with pytest.raises(ir.VerificationError, match="'as dot over j' needs a sum"):
        ir.verify(ir.parse(text))


def test_tiling_refuses_a_reordering_dependence():
    # a sequential scan mapped (by hand) as a block: folding it at once would read stale values
    text = """\
program scan(a: f32[8]) -> (x: f32[8])
  for j in 0:8 seq @block
    S: x[j] = a[j] + where(j > 0, x[max(j - 1, 0)], 0.0)"""
    from flashlight.passes.tile import TilingError

    prog = ir.parse(text)
    with pytest.raises(TilingError, match="would violate S"):
        passes.run_pipeline(prog, "tile{block_n=4}")


@pytest.mark.parametrize("grid,dims", [
    (1, (17, 2, 2, 2, 2)),  # fuzz seed 667886: five block loops, each padded to 16
    (4096, (3, 3, 2, 2, 2, 2, 2)),  # a tiled grid dimension and seven block loops
])
def test_register_tiles_respect_tritons_element_limit(grid, dims):
    from flashlight.ir.nodes import walk_stmts
    from flashlight.passes.tile import MAX_TILE_ELEMENTS

    its = [f"r{n}" for n in range(len(dims))]
    text = f"""\
program total(x: f32[{grid},{','.join(map(str, dims))}]) -> (out0: f32[{grid}])
  for z in 0:{grid} parallel
    for {', '.join(f'{it} in 0:{n} reduce' for it, n in zip(its, dims))}
      S: out0[z] += x[z,{','.join(its)}]"""
    prog = passes.run_pipeline(ir.parse(text), "fuse-reductions,tile{block_m=64}")
    for _, loops, _ in walk_stmts(prog.body):
        assert np.prod([l.tile for l in loops]) <= MAX_TILE_ELEMENTS, str(prog)


def test_whole_block_loops_over_tritons_element_limit_are_refused():
    from flashlight.passes.tile import TilingError

    text = """\
program total(x: f32[200,200,200]) -> (out0: f32[1])
  for z in 0:1 parallel
    for a in 0:200 reduce, b in 0:200 reduce, c in 0:200 reduce
      S: out0[z] += x[a,b,c]"""
    with pytest.raises(TilingError, match="Triton's"):
        passes.run_pipeline(ir.parse(text), "fuse-reductions,tile")


@pytest.mark.parametrize("F,separable,c", [
    ("exp(s[i,j] - m[i])", True, "exp(-y_new_0 + y_old_0)"),
    ("f32(bf16(exp(s[i,j] - m[i]))) * v[j,e]", True, "exp(-y_new_0 + y_old_0)"),
    ("exp2(s[i,j] * 0.5 - m[i])", True, "2**(-y_new_0 + y_old_0)"),
    ("tanh(s[i,j] - m[i])", False, None),
    ("(s[i,j] - m[i]) * (s[i,j] - m[i])", False, None),
    ("s[i,j] * m[i]", False, None),  # separable, but H(y) = y may vanish: refused
])
def test_lemma(F, separable, c):
    from flashlight.ir.parser import parse_expr

    e = parse_expr(F)
    m = parse_expr("m[i]")
    lemma = algebra.online_lemma(e, (m,), "+=")
    assert (lemma is not None) == separable
    if c is not None:
        assert str(lemma.c) == c


def test_max_plus_lemma():
    from flashlight.ir.parser import parse_expr

    lemma = algebra.online_lemma(parse_expr("s[i,j] + m[i]"), (parse_expr("m[i]"),), "max=")
    assert lemma is not None and lemma.partner == "+"
    assert str(lemma.c) in ("-y_old_0 + y_new_0", "y_new_0 - y_old_0")


def test_a_repeated_pass_application_is_looked_up(monkeypatch):
    """The autotuner runs the pipeline once per tile size: the passes before ``tile`` run once."""
    calls = []
    passes._applied.cache_clear()  # earlier tests applied equal passes to this program
    for name in ("fuse-reductions", "tile"):
        cls = passes.lookup(name)
        monkeypatch.setattr(cls, "apply", lambda self, p, real=cls.apply: calls.append(self.name) or real(self, p))
    prog = ir.parse(SOFTMAX_PV)
    for bm in (2, 4):
        passes.run_pipeline(prog, f"inline,fuse-reductions,tile{{block_m={bm}}}")
    assert calls == ["fuse-reductions", "tile", "tile"]
    passes.run_pipeline(prog, "inline,fuse-reductions{block_limit=1024}")
    assert calls[-1] == "fuse-reductions", "other options are another application"
    # an equal program reached through other decisions (its proofs are not part of its equality):
    # the passes are not run again, and the result carries its own decisions, then the passes'
    earlier = ir.Proof("an earlier decision", True, "only this program's")
    before = len(calls)
    again = passes.run_pipeline(prog.with_proofs(earlier), "inline,fuse-reductions")
    first = passes.run_pipeline(prog, "inline,fuse-reductions")
    assert len(calls) == before and again == first
    assert again.proofs == (earlier,) + first.proofs and earlier not in first.proofs


# SOFTMAX_PV with the scores computed (Q K^T), as in attention: scores given as an input may
# hold fills, for which rebase-exponentials is refused.
SOFTMAX_QK_PV = """\
program softmax_qk_pv(Q: f32[4,2], K: f32[6,2], V: f32[6,2]) -> (o: f32[4,2])
  buffer S: f32[4,6]
""" + SOFTMAX_PV.split("\n", 1)[1].replace("  for i in 0:4 parallel\n", """\
  for i in 0:4 parallel, j in 0:6 parallel
    for e in 0:2 reduce
      D1: S[i,j] += Q[i,e] * K[j,e]
  for i in 0:4 parallel
""", 1)


def test_rebase_exponentials_golden_and_values():
    fused = fuse_reductions(ir.parse(SOFTMAX_QK_PV), block_limit=4)
    prog = passes.rebase_exponentials(fused)
    accepted = _proof(prog, "rebase exponentials of L1, O1")
    assert accepted.legal and "ratios of one row" in accepted.reason
    check_golden("rebase_exponentials", str(prog))
    assert str(prog).count("exp2(fma(S[i,j], 1.4426950408889634, -(") == 2
    tiled = passes.run_pipeline(prog, "contract-buffers,tile{block_m=2,block_n=4}")
    np.testing.assert_allclose(_run(tiled)["o"], _run(ir.parse(SOFTMAX_QK_PV))["o"], rtol=1e-6, atol=1e-7)


def test_rebase_exponentials_is_exact_at_large_logits():
    """The rounded reference shifts every term of a row by one factor: a row of logits near
    -10000 keeps the weights of eager's softmax to a few ulps (fuzz bug P)."""
    prog = passes.run_pipeline(fuse_reductions(ir.parse(SOFTMAX_QK_PV), block_limit=4),
                               "rebase-exponentials,contract-buffers,tile{block_m=2,block_n=4}")
    assert "exp2(fma(" in str(prog)
    rng = np.random.default_rng(3)
    q = np.stack([np.ones(4), -10000.0 * np.arange(4)], 1).astype(np.float32)
    k = np.stack([rng.standard_normal(6) * 3, np.ones(6)], 1).astype(np.float32)
    v = rng.standard_normal((6, 2)).astype(np.float32)
    s = (q.astype(np.float64) @ k.T.astype(np.float64)).astype(np.float32)  # one rounded add
    p = np.exp(s.astype(np.float64) - s.max(1, keepdims=True))
    ref = (p / p.sum(1, keepdims=True)) @ v
    np.testing.assert_allclose(interpret(prog, {"Q": q, "K": k, "V": v})["o"], ref, rtol=2e-6, atol=2e-6)


def test_rebase_exponentials_refuses_scores_given_as_data():
    """Scores read from an input may hold a fill (-1e9, finfo.min) as a row's maximum, where the
    factor 2^(R*log2e - round(R*log2e)) leaves the range of the terms (fuzz bug Y)."""
    prog = passes.rebase_exponentials(fuse_reductions(ir.parse(SOFTMAX_PV), block_limit=4))
    refused = _proof(prog, "rebase exponentials")
    assert not refused.legal and "varies along the row (S)" in refused.reason
    assert "fma(" not in str(prog), "no rounded reference"
    assert "exp2((S[i,j] - where(m[i] == -inf, 0.0, m[i])) * 1.4426950408889634)" in str(prog), \
        "base 2 all the same, the exponent evaluated as written"
    assert _proof(prog, "exponentials in base 2").legal


# SOFTMAX_QK_PV that also returns the logsumexp, which reads the sum alone
LOGSUMEXP = SOFTMAX_QK_PV.replace("program softmax_qk_pv(Q: f32[4,2], K: f32[6,2], V: f32[6,2]) -> (o: f32[4,2])",
                                  "program lse(Q: f32[4,2], K: f32[6,2], V: f32[6,2]) -> (o: f32[4,2], z: f32[4])") + """
  for i in 0:4 parallel
    Z1: z[i] = m[i] + log(l[i])"""


def test_rebase_exponentials_refuses_a_sum_read_alone():
    fused = fuse_reductions(ir.parse(LOGSUMEXP), block_limit=4)
    assert "rescale exp(" in str(fused), "the online rewrite happened"
    prog = passes.rebase_exponentials(fused)
    refused = _proof(prog, "rebase exponentials")
    assert not refused.legal and "Z1 reads" in refused.reason and "other than as a ratio" in refused.reason
    assert "fma(" not in str(prog) and "exp2((S[i,j] - " in str(prog), "base 2 without a rounded reference"


SCALED_BIAS = """\
program scaled_bias(S: f32[2,4,6], slope: f32[2], B: f32[2,4,6]) -> (m: f32[2,4], n: f32[2,4], z: f32[2,4])
  for h in 0:2 parallel, i in 0:4 parallel
    for j in 0:6 reduce
      M1: m[h,i] max= S[h,i,j] * 0.125 + slope[h] * f32(j - i)
    for j in 0:6 reduce
      N1: n[h,i] max= S[h,i,j] * 0.5 - slope[h] * f32(j)
    for j in 0:6 reduce
      Z1: z[h,i] max= S[h,i,j] * 0.125 + B[h,i,j] + S[h,i,j] * 0.1 + slope[h] * f32(j)"""


def test_factor_scales_golden_and_exact():
    """ALiBi's bias absorbs the power-of-two score scale: one fma a score, rounded once, which is
    the exactly rounded sum (checked bit for bit against float64)."""
    prog = passes.factor_scales(ir.parse(SCALED_BIAS))
    check_golden("factor_scales", str(prog))
    assert "fma(slope[h] * 8.0, f32(j - i), S[h,i,j]) * 0.125" in str(prog)
    assert "fma(slope[h] * -2.0, f32(j), S[h,i,j]) * 0.5" in str(prog)
    assert "S[h,i,j] * 0.1 + slope[h] * f32(j)" in str(prog), "0.1 is not a power of two: kept"
    assert "S[h,i,j] * 0.125 + B[h,i,j]" in str(prog), "a bias with no invariant factor: kept"
    assert _proof(prog, "factor scales").legal
    rng = np.random.default_rng(0)
    s = (rng.standard_normal((2, 4, 6)) * 40).astype(np.float32)
    slope = rng.uniform(0.01, 1, 2).astype(np.float32)
    bias = rng.standard_normal((2, 4, 6)).astype(np.float32)
    out = interpret(prog, {"S": s, "slope": slope, "B": bias})
    j, i = np.arange(6.0), np.arange(4.0)[:, None]
    exact = s.astype(np.float64) * 0.125 + slope.astype(np.float64)[:, None, None] * (j - i)
    np.testing.assert_array_equal(out["m"], exact.astype(np.float32).max(-1))
    exact = s.astype(np.float64) * 0.5 - slope.astype(np.float64)[:, None, None] * j
    np.testing.assert_array_equal(out["n"], exact.astype(np.float32).max(-1))


def test_factor_scales_leaves_programs_without_the_pattern_alone():
    prog = ir.parse(SOFTMAX_PV)
    assert passes.factor_scales(prog) is prog


# A segment-masked row sum after tiling: the guard reads data along the serial loop (seg[b,j]),
# the same for every head and query tile of a batch.
SEGMENT_SUM = """\
program segment_sum(x: f32[2,3,40], seg: i64[2,40], w: f32[2,40]) -> (out: f32[2,3,40])
  for b in 0:2 parallel tile 1 @grid, h in 0:3 parallel tile 1 @grid, i in 0:40 parallel tile 16 @grid
    for j in 0:40 reduce tile 16 @serial
      if seg[b,i] == seg[b,j]
        S: out[b,h,i] += x[b,h,j]"""


def _segment_inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((2, 3, 40)).astype(np.float32),
            "seg": np.sort(rng.integers(0, 5, size=(2, 40)), axis=1),
            "w": rng.standard_normal((2, 40)).astype(np.float32)}


def test_hoist_tile_bounds_computes_each_tiles_bounds_once():
    prog = ir.parse(SEGMENT_SUM)
    out = passes.hoist_tile_bounds(prog, min_extent=1)
    assert str(out) == """\
program segment_sum(x: f32[2,3,40], seg: i64[2,40], w: f32[2,40]) -> (out: f32[2,3,40])
  buffer seg_lo: i64[2,3]
  buffer seg_hi: i64[2,3]
  for b in 0:2 parallel tile 1 @grid, jt in 0:3 parallel tile 4 @grid
    for ju in 0:16 reduce tile 16 @block
      if 16 * jt + ju < 40
        seg_lo_min: seg_lo[b,jt] min= seg[b,16 * jt + ju]
        seg_hi_max: seg_hi[b,jt] max= seg[b,16 * jt + ju]
  for b in 0:2 parallel tile 1 @grid, h in 0:3 parallel tile 1 @grid, i in 0:40 parallel tile 16 @grid
    for j in 0:40 reduce tile 16 @serial bounds [seg[b,j] in seg_lo[b,j // 16]:seg_hi[b,j // 16]]
      if seg[b,i] == seg[b,j]
        S: out[b,h,i] += x[b,h,j]"""
    assert str(ir.parse(str(out))) == str(out)
    (proof,) = out.proofs
    assert proof.legal and "no statement of the kernel writes seg" in proof.reason and "9 programs" in proof.reason
    inputs = _segment_inputs()
    ref = interpret(prog, inputs)["out"]
    np.testing.assert_array_equal(interpret(out, inputs)["out"], ref)
    # the interpreter checks the stated bounds: bounds that do not hold are an error, not a silent skip
    wrong = ir.parse(str(out).replace("seg_lo[b,jt] min=", "seg_lo[b,jt] max="))
    with pytest.raises(ValueError, match="tile bound seg.b,j. in seg_lo"):
        interpret(wrong, inputs)


@pytest.mark.parametrize("change,reason", [
    (("if seg[b,i] == seg[b,j]", "if w[b,i] < w[b,j]"), "is f32: per-tile bounds are exact only for integers"),
    (("if seg[b,i] == seg[b,j]", "if seg[b,i] == seg[b,j - i + 39]"), "reads i, which is not an untiled grid"),
    (("h in 0:3 parallel tile 1 @grid, i in 0:40 parallel tile 16 @grid", "h in 0:1 parallel tile 1 @grid, i in 0:40 parallel tile 64 @grid"),
     "one program reads each row of bounds"),
    (("S: out[b,h,i] += x[b,h,j]", "S: out[b,h,i] += x[b,h,j]\n        T: seg[b,j] = seg[b,j]"), "the kernel writes seg"),
])
def test_hoist_tile_bounds_refusals(change, reason):
    prog = ir.parse(SEGMENT_SUM.replace(*change))
    out = passes.hoist_tile_bounds(prog, min_extent=1)
    assert str(out) == str(prog), "nothing changes where the bounds cannot be shared or trusted"
    assert out.proofs and not any(p.legal for p in out.proofs)
    assert any(reason in p.reason for p in out.proofs), [p.reason for p in out.proofs]


def test_hoist_tile_bounds_leaves_short_loops_to_the_kernel():
    prog = passes.hoist_tile_bounds(ir.parse(SEGMENT_SUM))
    (proof,) = prog.proofs
    assert not proof.legal and "fewer than 2048 points" in proof.reason


SCAN = """\
program scan(a: f32[8]) -> (x: f32[8])
  for j in 0:8 seq
    S: x[j] = a[j] + where(j > 0, x[max(j - 1, 0)], 0.0)"""

PREFIX = """\
program prefix(a: f32[4,8]) -> (c: f32[4,8])
  buffer b: f32[4,8]
  for i in 0:4 seq, j in 0:8 seq
    S: b[i,j] = a[i,j] * 2.0
  for i in 0:4 seq, j in 0:8 seq
    if i == 0
      T0: c[i,j] = b[i,j]
    if i >= 1
      T1: c[i,j] = c[i - 1,j] + b[i,j]"""


@pytest.mark.parametrize("text", [SCAN, PREFIX], ids=["scan", "prefix"])
def test_loops_that_carry_a_dependence_are_walked_one_point_at_a_time(text):
    """A seq loop was mapped @block (or parallel @serial) and tiled 16: a tile ran at once and the
    tiled-schedule check refused the default pipeline. Now it is a serial loop of tile 1, and a
    program not in the lifted form is mapped nest by nest; the kernels compute what the IR says."""
    import torch

    from flashlight.codegen import launcher
    from flashlight.codegen.triton import generate
    from flashlight.runtime import CompiledProgram, contiguous_strides

    prog = ir.parse(text)
    final = passes.run_pipeline(prog)
    seq = [l for n in final.body for l in _loops(n) if l.kind == "seq"]
    assert seq and all(l.mapping == "serial" and l.tile == 1 for l in seq)
    assert any(p.transformation.startswith("tile kernel") and p.legal for p in final.proofs)
    strides = {t.name: contiguous_strides(t.shape) for t in final.tensors}
    kernels = generate(final, strides, "interpreter")
    run = CompiledProgram(final, [launcher.Launch(k, launcher.load(k, interpret=True)) for k in kernels], strides)
    ins = {t.name: np.random.default_rng(0).standard_normal(t.shape).astype(np.float32) for t in prog.inputs}
    (out,) = run([torch.from_numpy(ins[t.name]) for t in final.inputs])
    np.testing.assert_allclose(out.numpy(), interpret(prog, ins)[final.outputs[0].name], rtol=1e-6)


def _loops(node):
    if isinstance(node, ir.Loop):
        yield node
    if not isinstance(node, ir.Stmt):
        for c in node.body:
            yield from _loops(c)


def test_a_pass_applied_to_an_equal_program_keeps_its_own_proofs():
    """Programs compare equal without their proofs; the pass cache must not hand one program the
    decisions recorded for another equal one (a re-parsed program got its twin's fusion proofs)."""
    text = """\
program p(x: f32[4,6]) -> (y: f32[4])
  for i in 0:4 parallel
    for j in 0:6 reduce
      S: y[i] += x[i,j]"""
    first = passes.run_pipeline(ir.parse(text).with_proofs(ir.Proof("earlier", True, "a decision")), "fuse-reductions")
    again = passes.run_pipeline(ir.parse(text), "fuse-reductions")
    assert first == again and [p.transformation for p in first.proofs][0] == "earlier"
    assert "earlier" not in [p.transformation for p in again.proofs]
