"""A loss over a vocabulary of logits ``x Wᵀ``: the online log-sum-exp over a contraction.

The logits of a language model's loss are an ``N x V`` matrix computed from ``N x D`` hidden
states and a ``V x D`` head, larger than both when ``V`` and ``N`` are large. fuse-reductions
computes them once inside the loss's loop over the vocabulary, with a loop of their own over
the model dimension ``D`` (longer than a block), and never stores them; the target logit
``mm[i, t[i]]`` is a gather, computed by a copy that reduces just the rows read. Small shapes with
``block_limit=64`` stand in for ``D = 4096``: a model dimension longer than a block.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import flashlight

from conftest import relerr

N, V, D = 128, 512, 80  # N x V logits are larger than x and W together: they are not stored
OPTIONS = dict(block_limit=64)  # D = 80 is longer than a block, as a model's 4096 is


def linear_cross_entropy(x, w, t):
    return F.cross_entropy(x @ w.T, t)


def linear_cross_entropy_sum(x, w, t):
    return F.cross_entropy(x @ w.T, t, ignore_index=-100, reduction="sum")


def linear_logsumexp(x, w):
    return torch.logsumexp(x @ w.T, dim=-1)


def _inputs(seed: int = 0, ignored: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    w = torch.randn(V, D, generator=g) * 0.2
    t = torch.randint(0, V, (N,), generator=g)
    t[:ignored] = -100  # rows the loss ignores (padding)
    return x, w, t


def _logit_buffers(ex: flashlight.Explanation) -> list:
    return [b for b in ex.buffers if N in b.shape and V in b.shape]


@pytest.mark.parametrize("fn,ignored", [(linear_cross_entropy, 0), (linear_cross_entropy, 5),
                                        (linear_cross_entropy_sum, 7)], ids=["mean", "mean-ignored", "sum-ignored"])
def test_linear_cross_entropy_keeps_no_logits(fn, ignored):
    args = _inputs(ignored=ignored)
    ex = flashlight.explain(fn, *args, options=flashlight.Options(**OPTIONS))
    assert not ex.fallbacks, ex.fallbacks
    assert not _logit_buffers(ex), ex.buffers
    decisions = {p.transformation.split(":")[0]: p for p in ex.proofs}
    placed = [p for w, p in decisions.items() if w.startswith("compute mm (") and "inside the" in w]
    assert placed and all(p.legal for p in placed), [str(p) for p in ex.proofs]
    assert any(w.startswith("compute mm as") and "gathered" in w and p.legal for w, p in decisions.items())
    got = flashlight.compile(fn, **OPTIONS)(*args)
    ref = fn(*args)
    assert relerr(got, ref) < 1e-5, (got, ref)


def test_linear_logsumexp_is_one_kernel():
    x, w, _ = _inputs()
    ex = flashlight.explain(linear_logsumexp, x, w, options=flashlight.Options(**OPTIONS))
    assert not _logit_buffers(ex), ex.buffers
    assert len(ex.kernels) == 1, [k.computes for k in ex.kernels]
    assert "dot(" in ex.kernels[0].source  # the logit tile is a matrix product inside the vocabulary loop
    got = flashlight.compile(linear_logsumexp, **OPTIONS)(x, w)
    assert relerr(got, linear_logsumexp(x, w)) < 1e-5


def test_linear_cross_entropy_gradients_match_eager():
    """The backward is one program (the gather's gradient, a one-hot scatter, is lifted): it stores
    the logits once, computed by a kernel of their own, since ``dX`` reduces over the vocabulary in
    programs per column tile of ``D``, which do not index them (the refusal says so)."""
    x, w, t = _inputs(ignored=3)
    x.requires_grad_()
    w.requires_grad_()
    ex = flashlight.explain(linear_cross_entropy, x, w, t, options=flashlight.Options(**OPTIONS))
    assert not ex.fallbacks and not _logit_buffers(ex)
    assert not ex.backward.fallbacks, ex.backward.fallbacks
    assert len(_logit_buffers(ex.backward)) == 1, ex.backward.buffers
    got = flashlight.compile(linear_cross_entropy, **OPTIONS)(x, w, t)
    gx, gw = torch.autograd.grad(got, (x, w))
    ref = linear_cross_entropy(x, w, t)
    rx, rw = torch.autograd.grad(ref, (x, w))
    assert relerr(got, ref) < 1e-5
    assert relerr(gx, rx) < 1e-4 and relerr(gw, rw) < 1e-4


def mlp(x, w1, w2):
    return F.gelu(x @ w1.T) @ w2.T


def test_a_hidden_layer_read_by_a_second_projection_is_stored_not_redone():
    """Computing gelu(x W1ᵀ) inside W2's kernel would redo it in every program along W2's output
    columns: it is stored, and explain says which iterator forbids it."""
    g = torch.Generator().manual_seed(1)
    x, w1, w2 = torch.randn(256, 80, generator=g), torch.randn(512, 80, generator=g), torch.randn(96, 512, generator=g)
    ex = flashlight.explain(mlp, x, w1, w2, options=flashlight.Options(**OPTIONS))
    assert any(b.shape == (256, 512) for b in ex.buffers), ex.buffers
    refusal = next(p for p in ex.proofs if p.transformation.startswith("compute mm once"))
    assert not refusal.legal and "does not index it" in refusal.reason
    got = flashlight.compile(mlp, **OPTIONS)(x, w1, w2)
    assert relerr(got, mlp(x, w1, w2)) < 1e-5
