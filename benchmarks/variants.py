"""Attention variants as researchers write them, with inputs, FLOP counts and the baselines.

Each :class:`Variant` makes its inputs for a shape ``(B, H, S, D)`` (optionally GQA), computes the
attention in plain PyTorch (scores through fp32 softmax, P cast to V's dtype before ``P @ V``),
and, where FlexAttention can express it, builds the FlexAttention call (block mask built once).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

WINDOW = 256
PREFIX = 256
SOFTCAP = 20.0
LAMBDA = 0.2


def _scores(q, k):
    return (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))


def _finish(s, v):
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


def _expand_kv(q, k, v):
    g = q.shape[1] // k.shape[1]
    if g == 1:
        return k, v
    return k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)


def vanilla(q, k, v):
    k, v = _expand_kv(q, k, v)
    return _finish(_scores(q, k), v)


def causal(q, k, v):
    k, v = _expand_kv(q, k, v)
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return _finish(_scores(q, k).masked_fill(j > i, float("-inf")), v)


def sdpa(q, k, v):
    """Attention as most code writes it: PyTorch's operator, compiled from its decomposition."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=k.shape[1] != q.shape[1])


def sdpa_causal(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                            enable_gqa=k.shape[1] != q.shape[1])


def sliding_window(q, k, v):
    k, v = _expand_kv(q, k, v)
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    keep = (j <= i) & (i - j <= WINDOW)
    return _finish(torch.where(keep, _scores(q, k), float("-inf")), v)


def prefix_lm(q, k, v):
    k, v = _expand_kv(q, k, v)
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return _finish(_scores(q, k).masked_fill(~((j <= i) | (j < PREFIX)), float("-inf")), v)


def softcap(q, k, v):
    k, v = _expand_kv(q, k, v)
    s = _scores(q, k).float()
    return _finish(SOFTCAP * torch.tanh(s / SOFTCAP), v)


def alibi(q, k, v):
    k, v = _expand_kv(q, k, v)
    H = q.shape[1]
    slopes = torch.exp2(-8.0 * torch.arange(1, H + 1, device=q.device, dtype=torch.float32) / H)
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    return _finish(_scores(q, k).float() + slopes[:, None, None] * (j - i).float(), v)


def document(q, k, v, doc):
    k, v = _expand_kv(q, k, v)
    m = doc[:, None, :, None] == doc[:, None, None, :]
    return _finish(_scores(q, k).masked_fill(~m, float("-inf")), v)


def differential(q, k, v):
    """q, k: [B, 2H, S, D]; v: [B, H, S, 2D]; softmax(Q0 K0) V - lambda softmax(Q1 K1) V."""
    q0, q1 = q.chunk(2, dim=1)
    k0, k1 = k.chunk(2, dim=1)
    a0 = torch.softmax(_scores(q0, k0).float(), -1).to(v.dtype)
    a1 = torch.softmax(_scores(q1, k1).float(), -1).to(v.dtype)
    return a0 @ v - LAMBDA * (a1 @ v)


def evoformer(q, k, v, mask_bias, pair_bias):
    """Row attention in the [B, N, S, H, D] layout with an MSA mask bias [B, N, 1, 1, S] and a
    pair bias [B, 1, H, S, S] (AlphaFold2's Evoformer, without gating)."""
    qt, kt, vt = q.transpose(-2, -3), k.transpose(-2, -3), v.transpose(-2, -3)
    s = _scores(qt, kt).float() + mask_bias + pair_bias
    return (torch.softmax(s, -1).to(v.dtype) @ vt).transpose(-2, -3)


def ipa_like(q, k, v, qp, kp):
    """Invariant-point-attention-like logits: an extra reduction (squared distances between 4
    points of 3 coordinates per query and key) feeds the scores."""
    d2 = ((qp[:, :, :, None] - kp[:, :, None, :]) ** 2).sum(dim=(-1, -2))
    return _finish(_scores(q, k).float() - 0.1 * d2, v)


def key_lengths(q, k, v, lens):
    """Cross-attention with per-batch key lengths (padding mask), Sq != Sk."""
    j = torch.arange(k.shape[-2], device=q.device)
    keep = (j[None, :] < lens[:, None])[:, None, None, :]
    return _finish(_scores(q, k).masked_fill(~keep, float("-inf")), v)


def decode(q, k, v):
    """A few queries per sequence against a long key cache (GQA: K/V heads shared by groups)."""
    g = q.shape[1] // k.shape[1]
    if g > 1:
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return _finish(_scores(q, k), v)


def random_documents(B: int, S: int, device) -> torch.Tensor:
    """Document ids per position: documents of random length S/16 .. S/4."""
    g = torch.Generator().manual_seed(1)
    out = torch.empty(B, S, dtype=torch.int64)
    for b in range(B):
        pos, d = 0, 0
        while pos < S:
            n = int(torch.randint(S // 16, S // 4 + 1, (1,), generator=g))
            out[b, pos:pos + n] = d
            pos, d = pos + n, d + 1
    return out.to(device)


DECODE_QUERIES = {"decode": 1, "decode4": 4}


def cache_bytes(args) -> int:
    """Bytes of the key and value cache a decode step reads (the GB/s of issue 20)."""
    return args[1].numel() * args[1].element_size() + args[2].numel() * args[2].element_size()


@dataclass
class Variant:
    name: str
    fn: Callable
    flex: str | None            # how FlexAttention expresses it (mask_mod / score_mod), or None
    sparsity: str = "dense"     # FLOP count: dense | causal | window | prefix | document

    def inputs(self, B: int, H: int, S: int, D: int, dtype, device, group: int = 1):
        def r(*shape):
            return torch.randn(*shape, device=device, dtype=dtype)
        if self.name == "differential":
            return (r(B, 2 * H, S, D), r(B, 2 * H, S, D), r(B, H, S, 2 * D))
        if self.name == "ipa_like":
            return (r(B, H, S, D), r(B, H, S, D), r(B, H, S, D),
                    torch.randn(B, H, S, 4, 3, device=device), torch.randn(B, H, S, 4, 3, device=device))
        if self.name == "key_lengths":  # queries: S/4, keys: S, lengths between S/4 and S
            lens = torch.linspace(S // 4, S, B, device=device).long()
            return (r(B, H, S // 4, D), r(B, H, S, D), r(B, H, S, D), lens)
        if self.name in DECODE_QUERIES:  # a few queries per head against a cache of S keys
            return (r(B, H, DECODE_QUERIES[self.name], D), r(B, H // group, S, D), r(B, H // group, S, D))
        if self.name == "evoformer":  # B x 256 rows of S residues, as in the paper's benchmark
            n = 256
            return (r(B, n, S, H, D), r(B, n, S, H, D), r(B, n, S, H, D),
                    torch.randn(B, n, 1, 1, S, device=device), torch.randn(B, 1, H, S, S, device=device))
        q, k, v = r(B, H, S, D), r(B, H // group, S, D), r(B, H // group, S, D)
        if self.name == "document":
            return (q, k, v, random_documents(B, S, device))
        return (q, k, v)

    def flops(self, args) -> float:
        if self.name == "evoformer":
            B, N, S, H, D = args[0].shape
            return 4.0 * B * N * H * S * S * D
        if self.name == "differential":  # two QK^T of H heads (D), two P @ V of width 2D
            B, H2, S, D = args[0].shape
            H = H2 // 2
            return 2 * (2.0 * B * H * S * S * D) + 2 * (2.0 * B * H * S * S * 2 * D)
        B, H, S, D = args[0].shape
        per_pair = 4.0 * B * H * D  # one (query, key) pair: QK^T and PV, 2 flops per multiply-add
        if self.name in ("ipa_like", "key_lengths") or self.name in DECODE_QUERIES:
            return per_pair * S * args[1].shape[-2]
        if self.sparsity == "causal":
            pairs = sum(i + 1 for i in range(S))
        elif self.sparsity == "window":
            pairs = sum(min(i, WINDOW) + 1 for i in range(S))
        elif self.sparsity == "prefix":
            pairs = sum(max(i + 1, min(PREFIX, S)) for i in range(S))
        elif self.sparsity == "document":
            counts = [torch.bincount(d) for d in args[3].cpu()]
            return 4.0 * H * D * float(sum((c.double() ** 2).sum() for c in counts))
        else:
            pairs = S * S
        return per_pair * pairs

    def flex_call(self, args):
        """``(callable, block_mask_seconds)`` running FlexAttention on ``args``, or None."""
        if self.flex is None:
            return None
        import time

        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        q, k, v = args[:3]
        B, H, S, D = q.shape
        score = mask = None
        if self.name in ("causal", "sdpa_causal"):
            mask = lambda b, h, qi, kv: kv <= qi  # noqa: E731
        elif self.name == "sliding_window":
            mask = lambda b, h, qi, kv: (kv <= qi) & (qi - kv <= WINDOW)  # noqa: E731
        elif self.name == "prefix_lm":
            mask = lambda b, h, qi, kv: (kv <= qi) | (kv < PREFIX)  # noqa: E731
        elif self.name == "document":
            doc = args[3]
            mask = lambda b, h, qi, kv: doc[b, qi] == doc[b, kv]  # noqa: E731
        elif self.name == "softcap":
            score = lambda s, b, h, qi, kv: SOFTCAP * torch.tanh(s / SOFTCAP)  # noqa: E731
        elif self.name == "alibi":
            def score(s, b, h, qi, kv):
                slope = torch.exp2(-8.0 * (h + 1).to(torch.float32) / H)
                return s + slope * (kv - qi).to(torch.float32)
        t0 = time.time()
        bm = create_block_mask(mask, B if self.name == "document" else None, None, S, S, device=q.device) \
            if mask else None
        torch.cuda.synchronize()
        build = time.time() - t0
        fa = torch.compile(flex_attention, dynamic=False)
        gqa = k.shape[1] != q.shape[1]
        return (lambda *a: fa(a[0], a[1], a[2], score_mod=score, block_mask=bm, enable_gqa=gqa)), build


VARIANTS = {v.name: v for v in [
    Variant("vanilla", vanilla, "none"),
    Variant("causal", causal, "mask", "causal"),
    Variant("sdpa", sdpa, "none"),
    Variant("sdpa_causal", sdpa_causal, "mask", "causal"),
    Variant("sliding_window", sliding_window, "mask", "window"),
    Variant("prefix_lm", prefix_lm, "mask", "prefix"),
    Variant("document", document, "mask", "document"),
    Variant("softcap", softcap, "score"),
    Variant("alibi", alibi, "score"),
    Variant("differential", differential, None),
    Variant("evoformer", evoformer, None),
    Variant("ipa_like", ipa_like, None),
    Variant("key_lengths", key_lengths, None),
    Variant("decode", decode, "none"),    # FlexAttention takes its decoding kernel for short queries
    Variant("decode4", decode, "none"),
]}
