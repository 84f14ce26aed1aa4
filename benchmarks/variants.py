"""Attention variants written the way researchers write them, in plain PyTorch, with their
FlexAttention equivalents (score_mod / mask_mod) where FlexAttention can express them.

Every function takes ``(q, k, v)`` of shape ``[B, H, S, D]`` and returns ``[B, H, S, D]`` in the
input dtype; scores are computed in fp32 by softmax, and P is cast to V's dtype before ``P @ V``.
"""

from __future__ import annotations

import math

import torch

WINDOW = 256
PREFIX = 256
SOFTCAP = 20.0


def vanilla(q, k, v):
    s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


def causal(q, k, v):
    s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = s.masked_fill(j > i, float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


def sliding_window(q, k, v):
    s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    keep = (j <= i) & (i - j <= WINDOW)
    s = torch.where(keep, s, float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


def prefix_lm(q, k, v):
    s = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    s = s.masked_fill(~((j <= i) | (j < PREFIX)), float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(v.dtype) @ v


def softcap(q, k, v):
    s = (q @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(q.shape[-1]))
    s = SOFTCAP * torch.tanh(s / SOFTCAP)
    return torch.softmax(s, dim=-1).to(v.dtype) @ v


def alibi(q, k, v):
    H = q.shape[1]
    slopes = torch.exp2(-8.0 * torch.arange(1, H + 1, device=q.device, dtype=torch.float32) / H)
    i = torch.arange(q.shape[-2], device=q.device)[:, None]
    j = torch.arange(k.shape[-2], device=q.device)[None, :]
    bias = slopes[:, None, None] * (j - i).float()
    s = (q @ k.transpose(-2, -1)).float() * (1.0 / math.sqrt(q.shape[-1])) + bias
    return torch.softmax(s, dim=-1).to(v.dtype) @ v


VARIANTS = {
    "vanilla": vanilla, "causal": causal, "sliding_window": sliding_window, "prefix_lm": prefix_lm,
    "softcap": softcap, "alibi": alibi,
}


# {{{ FlexAttention equivalents

def flex_mods(name: str, H: int):
    """``(score_mod, mask_mod)`` for FlexAttention, or None if it cannot express the variant."""
    if name == "vanilla":
        return None, None
    if name == "causal":
        return None, lambda b, h, qi, kv: kv <= qi
    if name == "sliding_window":
        return None, lambda b, h, qi, kv: (kv <= qi) & (qi - kv <= WINDOW)
    if name == "prefix_lm":
        return None, lambda b, h, qi, kv: (kv <= qi) | (kv < PREFIX)
    if name == "softcap":
        return (lambda s, b, h, qi, kv: SOFTCAP * torch.tanh(s / SOFTCAP)), None
    if name == "alibi":
        def score(s, b, h, qi, kv):
            slope = torch.exp2(-8.0 * (h + 1).to(torch.float32) / H)
            return s + slope * (kv - qi).to(torch.float32)
        return score, None
    raise KeyError(name)

# }}}
