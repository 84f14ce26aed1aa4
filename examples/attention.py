"""Attention variants in plain PyTorch, for `python -m flashlight explain` and the docs.

    python -m flashlight explain examples/attention.py:causal --shapes 1x2x128x16,1x2x128x16,1x2x128x16
    python -m flashlight explain examples/attention.py:doc_attention --shapes 1x2x64x16,1x2x64x16,1x2x64x16,64:int64

Nothing here is flashlight-specific: each function takes q, k, v of shape [batch, heads, length,
head dim] (and, for document masks, the document id of each position) and returns the output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention(q, k, v):
    """softmax(q kᵀ / √d) v."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(s, dim=-1) @ v


def causal(q, k, v):
    """Each query sees the keys at or before its own position."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = s.masked_fill(j > i, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def sliding_window(q, k, v, window: int = 32):
    """Causal, and at most `window` keys back."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = s.masked_fill((j > i) | (j <= i - window), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def softcap(q, k, v, cap: float = 20.0):
    """Scores squashed into (-cap, cap) by tanh before the softmax (Gemma 2)."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = cap * torch.tanh(s / cap)
    return torch.softmax(s, dim=-1) @ v


def doc_attention(q, k, v, doc):
    """Document masks: a query sees the keys of its own document; doc[b, i] is position i's document."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    same = doc[:, None, :, None] == doc[:, None, None, :]
    s = s.masked_fill(~same, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def sdpa_causal(q, k, v):
    """PyTorch's own operator; flashlight compiles it like `causal` above."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
