"""Attention as people already write it: SDPA with every argument, torch.nn's layers.

Each program matches eager PyTorch, outputs and gradients (of inputs and parameters), and its
inference forward is fused: no global buffer with Sq x Sk elements per (batch, head) unless the
program returns one. Models of the ``transformers`` library are in test_model_library.py.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import flashlight

from conftest import check_against_eager

G = torch.Generator().manual_seed(3)


def rnd(*shape):
    return torch.randn(*shape, generator=G)


def score_buffers(ex: flashlight.Explanation, sq: int, sk: int) -> list:
    """Global buffers holding an Sq x Sk matrix (two distinct dimensions of those sizes)."""
    def pair(shape):
        return any(a == sq and b == sk for i, a in enumerate(shape) for j, b in enumerate(shape) if i != j)
    return [b for b in ex.buffers if pair(b.shape)]


def assert_fused(fn, *args, sq: int, sk: int, kernels: int | None = 1) -> flashlight.Explanation:
    with torch.no_grad():
        ex = flashlight.explain(fn, *args)
    assert not ex.fallbacks, ex.fallbacks
    assert not score_buffers(ex, sq, sk), ex.buffers
    if kernels is not None:
        assert len(ex.kernels) == kernels, [k.name for k in ex.kernels]
    return ex


# {{{ F.scaled_dot_product_attention

B, H, SQ, SK, D = 2, 4, 19, 23, 8


def _mask(kind: str, sq: int, sk: int):
    if kind == "none":
        return None
    if kind == "bool_4d":  # a key padding mask, broadcast over heads and queries
        m = torch.ones(B, 1, 1, sk, dtype=torch.bool)
        m[1, ..., sk - 5:] = False
        return m
    if kind == "bool_2d":  # a banded mask, broadcast over batch and heads
        i, j = torch.arange(sq)[:, None], torch.arange(sk)[None, :]
        return (j - i).abs() <= 6
    if kind == "float_3d":  # an additive bias per head
        return rnd(H, sq, sk)
    if kind == "float_rows_masked":  # rows with no key at all: eager gives 0, and a zero gradient
        m = torch.zeros(B, H, sq, sk)
        m[:, :, 3] = float("-inf")
        m[0, 1, 7, :4] = float("-inf")
        return m
    raise AssertionError(kind)


SDPA_CASES = [
    *[(mask, False, None, False, SQ, SK) for mask in ("none", "bool_4d", "bool_2d", "float_3d", "float_rows_masked")],
    ("none", True, None, False, SQ, SK),       # causal, Sq < Sk: top-left aligned as PyTorch does
    ("none", True, None, False, SK, SQ),       # causal, Sq > Sk
    ("none", True, 0.3, False, SQ, SQ),        # causal with a scale
    ("bool_4d", False, 0.5, True, SQ, SK),     # GQA with a padding mask
    ("none", True, None, True, SQ, SQ),        # GQA, causal
]


@pytest.mark.parametrize("mask,causal,scale,gqa,sq,sk", SDPA_CASES,
                         ids=["-".join(map(str, c)) for c in SDPA_CASES])
def test_sdpa(mask, causal, scale, gqa, sq, sk):
    q = rnd(B, H, sq, D)
    k, v = rnd(B, H // 2 if gqa else H, sk, D), rnd(B, H // 2 if gqa else H, sk, D)
    m = _mask(mask, sq, sk)
    extra = {"is_causal": causal, "scale": scale, "enable_gqa": gqa}

    if m is None:
        def fn(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, **extra)
        args = (q, k, v)
    else:
        def fn(q, k, v, m):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m, **extra)
        args = (q, k, v, m)
    assert_fused(fn, *args, sq=sq, sk=sk)
    check_against_eager(fn, *args)


def test_sdpa_is_the_kernel_of_attention_written_by_hand():
    """Same masks as domains, tile ranges and rescaled exponentials as the hand-written form."""
    q, k, v = rnd(1, 2, 64, 16), rnd(1, 2, 64, 16), rnd(1, 2, 64, 16)

    def by_hand(q, k, v):
        i, j = torch.arange(64)[:, None], torch.arange(64)[None, :]
        s = (q @ k.transpose(-2, -1) / 4.0).masked_fill(j > i, float("-inf"))
        return torch.softmax(s, -1) @ v

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    decided, shapes = [], []
    for fn in (by_hand, sdpa):
        ex = flashlight.explain(fn, q, k, v, options=flashlight.Options(block_m=16, block_n=16))
        decided.append(sorted((p.transformation.split()[0], p.legal) for p in ex.proofs
                              if not p.transformation.startswith(("inline", "defer", "contract", "kernel"))))
        src = ex.kernels[0].source
        shapes.append([src.count(op) for op in ("for t_", "tl.dot(", "tl.fma(", "tl.exp2(", "tl.load(")])
    assert decided[0] == decided[1]
    assert shapes[0] == shapes[1] and shapes[0][2] > 0, shapes


def test_sdpa_with_dropout_runs_pytorchs_random_operator():
    """Dropout is random: SDPA keeps PyTorch's own kernel, whose dropout runs eagerly, and says so."""
    q, k, v = rnd(1, 2, 8, 4), rnd(1, 2, 8, 4), rnd(1, 2, 8, 4)
    ex = flashlight.explain(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=0.5), q, k, v)
    assert any("dropout" in op for op, _ in ex.fallbacks), ex.fallbacks


def test_sdpa_gradient_through_a_scaled_output():
    """The case of the report: ``sdpa(x, x, x, is_causal=True) * 3`` gave gradients off by a factor
    of hundreds (the backward read the attention weights as the log-sum-exp)."""
    def fn(x):
        return F.scaled_dot_product_attention(x, x, x, is_causal=True) * 3.0
    for shape in [(1, 1, 1, 1), (1, 2, 5, 8), (2, 2, 33, 16)]:
        check_against_eager(fn, rnd(*shape))


def test_sdpa_errors_are_eagers():
    q, k = rnd(1, 2, 5, 8), rnd(1, 2, 5, 4)
    with pytest.raises(RuntimeError) as eager:
        F.scaled_dot_product_attention(q, k, k)
    with pytest.raises(RuntimeError) as ours:
        flashlight.compile(lambda q, k: F.scaled_dot_product_attention(q, k, k))(q, k)
    assert str(ours.value).splitlines()[0] == str(eager.value).splitlines()[0]

# }}}


def banded(q, k, v, w: int = 4):
    """Banded attention as Longformer writes it: keys in overlapping chunks (padding and a strided
    unfold), scores by einsum, the band and the sequence ends as a mask."""
    b, s, d = q.shape
    kc = F.pad(k, (0, 0, w, w)).unfold(1, 3 * w, w).transpose(-1, -2)  # [B, S/w, 3w, D]
    vc = F.pad(v, (0, 0, w, w)).unfold(1, 3 * w, w).transpose(-1, -2)
    scores = torch.einsum("bcid,bcjd->bcij", q.view(b, s // w, w, d), kc) / d ** 0.5
    i, j = torch.arange(w)[:, None], torch.arange(3 * w)[None, :]
    key = torch.arange(s // w)[:, None, None] * w + j - w
    valid = ((j - w - i).abs() <= w) & (key >= 0) & (key < s)
    p = torch.softmax(scores.masked_fill(~valid, float("-inf")), -1)
    return torch.einsum("bcij,bcjd->bcid", p, vc).reshape(b, s, d)


def test_banded_attention_from_strided_chunks():
    """It never finished compiling (inlining's copies grew without bound); now one kernel."""
    q, k, v = rnd(2, 48, 8), rnd(2, 48, 8), rnd(2, 48, 8)
    assert_fused(banded, q, k, v, sq=48, sk=48)
    check_against_eager(banded, q, k, v)


# {{{ torch.nn layers

E, NH, S = 16, 4, 9


def _padding():
    m = torch.zeros(B, S, dtype=torch.bool)
    m[1, 6:] = True
    return m


MHA_CASES = list(itertools.product([True, False], ["none", "padding", "causal", "both"], [False, True]))


@pytest.mark.parametrize("batch_first,masks,need_weights", MHA_CASES,
                         ids=[f"{'bf' if c[0] else 'sf'}-{c[1]}-{'weights' if c[2] else 'noweights'}"
                              for c in MHA_CASES])
def test_multihead_attention(batch_first, masks, need_weights):
    mha = nn.MultiheadAttention(E, NH, batch_first=batch_first)
    x = rnd(B, S, E) if batch_first else rnd(S, B, E)
    kpm = _padding() if masks in ("padding", "both") else None
    am = torch.triu(torch.ones(S, S, dtype=torch.bool), 1) if masks in ("causal", "both") else None

    def fn(x):
        out, w = mha(x, x, x, key_padding_mask=kpm, attn_mask=am, need_weights=need_weights)
        return (out, w) if need_weights else out

    if not need_weights:  # with weights the program returns the S x S matrix by definition
        assert_fused(fn, x, sq=S, sk=S, kernels=None)
    check_against_eager(fn, x, module=mha)
    mha.eval()
    with torch.no_grad():  # the native fast path (torch._native_multi_head_attention) where it applies
        check_against_eager(fn, x, module=mha)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_encoder_layer(norm_first, activation):
    layer = nn.TransformerEncoderLayer(E, NH, 32, dropout=0.0, activation=activation, batch_first=True,
                                       norm_first=norm_first)
    x, kpm = rnd(B, S, E), _padding()

    def fn(x):
        return layer(x, src_key_padding_mask=kpm)

    check_against_eager(fn, x, module=layer)  # training mode: the Python path
    layer.eval()
    with torch.no_grad():  # eval: one native operator, torch._transformer_encoder_layer_fwd
        assert_fused(fn, x, sq=S, sk=S, kernels=None)
        check_against_eager(fn, x, module=layer)


def test_transformer_decoder_layer_and_transformer():
    dec = nn.TransformerDecoderLayer(E, NH, 32, dropout=0.0, batch_first=True)
    x, mem = rnd(B, S, E), rnd(B, S + 3, E)
    causal = nn.Transformer.generate_square_subsequent_mask(S)

    def decode(x, mem):
        return dec(x, mem, tgt_mask=causal, tgt_is_causal=True)

    check_against_eager(decode, x, mem, module=dec)
    model = nn.Transformer(E, NH, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=32, dropout=0.0,
                           batch_first=True)

    def translate(src, tgt):
        return model(src, tgt, tgt_mask=causal)

    check_against_eager(translate, mem, x, module=model)
    model.eval()
    with torch.no_grad():
        assert_fused(translate, mem, x, sq=S, sk=S + 3, kernels=None)
        check_against_eager(translate, mem, x, module=model)

# }}}
