"""PyTorch's attention operators, written out in the plain operations that the lifter fuses.

``F.scaled_dot_product_attention`` and the native fast paths of ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` (``torch._native_multi_head_attention``,
``torch._transformer_encoder_layer_fwd``) are single operators to eager PyTorch. Left alone,
AOT autograd dispatches them to a backend kernel per device (flash, efficient, cuDNN, math), whose
decompositions differ by device and, for ``_scaled_dot_product_flash_attention_for_cpu``, return
the attention weights where the backward reads the log-sum-exp (a wrong gradient). While a graph is
captured, :func:`decompose_attention` and :func:`decompositions` replace each call by the
function below that states the operator's meaning: matrix products, masks, a softmax. The passes
then derive the same fused kernel as for attention written by hand, and autograd differentiates
the plain operations.

Semantics kept from eager: a row whose every key is masked gives 0 (and a zero gradient), as
PyTorch's math backend and ``_masked_softmax`` do; ``is_causal`` aligns the mask to the top left
when the query and key lengths differ; a boolean ``attn_mask`` says where to attend, a float one
is added to the scores. Calls with dropout are random and stay PyTorch's own (one eager operator).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch._C import DispatchKey


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` without dropout, in plain operations."""
    if is_causal and attn_mask is not None:
        raise RuntimeError("_scaled_dot_product_attention: Explicit attn_mask should not be set when is_causal=True")
    sq, sk = query.shape[-2], key.shape[-2]
    if enable_gqa and query.dim() >= 3 and key.shape[-3] != query.shape[-3]:
        key, value = _repeat_heads(key, query.shape[-3]), _repeat_heads(value, query.shape[-3])
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    compute = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    s = (query @ key.transpose(-2, -1)).to(compute) * scale
    # masks are added as 0 / -inf, as PyTorch converts them: a masked score still passes its
    # gradient on (0 * NaN is NaN in eager's backward, where masked_fill's would be 0)
    if is_causal:
        i = torch.arange(sq, device=query.device)[:, None]
        j = torch.arange(sk, device=query.device)[None, :]
        attn_mask = j <= i
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=compute, device=s.device).masked_fill(~attn_mask, float("-inf"))
    if attn_mask is not None:
        s = s + attn_mask
    # the softmax, normalised after the product with V
    p, total = _exp_and_sum(s)
    out = (p.to(value.dtype) @ value).to(compute) / total
    return out.to(query.dtype)


def _exp_and_sum(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``exp(s - max)`` and its row sums, a row without keys summing to 1 (so that it divides to 0).
    The maximum only keeps exp in range: the result does not depend on it, so no gradient flows
    through it. A row with no key folds exp(-inf - 0) = 0 everywhere: eager's 0, and a zero
    gradient."""
    m = s.amax(-1, keepdim=True).detach()
    p = torch.exp(s - torch.where(m == float("-inf"), 0.0, m))
    total = p.sum(-1, keepdim=True)
    return p, torch.where(total == 0, 1.0, total)


def _repeat_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``x.repeat_interleave(heads // x.shape[-3], dim=-3)`` as a broadcast view (no copy)."""
    groups = heads // x.shape[-3]
    shape = x.shape[:-3] + (x.shape[-3], groups) + x.shape[-2:]
    return x.unsqueeze(-3).expand(shape).reshape(x.shape[:-3] + (heads,) + x.shape[-2:])


def _masked_out(mask: torch.Tensor | None, mask_type: int | None, batch: int, heads: int, length: int
                ) -> torch.Tensor | None:
    """``_masked_softmax``'s mask as a boolean (True: masked out) of shape [B, H, L, L]:
    type 0 is [L, L], type 1 a key padding mask [B, L], type 2 any broadcastable shape; a float
    mask masks where it is nonzero, as the native kernels convert it."""
    if mask is None:
        return None
    masked = mask if mask.dtype == torch.bool else mask != 0
    if mask_type == 1 or (mask_type is None and masked.dim() == 2 and masked.shape[0] == batch != length):
        masked = masked.reshape(batch, 1, 1, length)
    elif masked.dim() == 2:
        masked = masked.reshape(1, 1, length, length)
    return masked.expand(batch, heads, length, length)


def native_multi_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, embed_dim: int,
                                num_head: int, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                                proj_weight: torch.Tensor, proj_bias: torch.Tensor,
                                mask: torch.Tensor | None = None, need_weights: bool = True,
                                average_attn_weights: bool = True, mask_type: int | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch._native_multi_head_attention`` (the fast path of ``nn.MultiheadAttention``)."""
    b, t, _ = query.shape
    d = embed_dim // num_head
    wq, wk, wv = qkv_weight.chunk(3)
    bq, bk, bv = qkv_bias.chunk(3)

    def heads(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, bias).reshape(b, t, num_head, d).transpose(1, 2)

    q, k, v = heads(query, wq, bq), heads(key, wk, bk), heads(value, wv, bv)
    masked = _masked_out(mask, mask_type, b, num_head, t)
    keep = None if masked is None else ~masked
    out = scaled_dot_product_attention(q, k, v, attn_mask=keep)
    proj = F.linear(out.transpose(1, 2).reshape(b, t, embed_dim), proj_weight, proj_bias)
    if not need_weights:
        return proj, query.new_empty((0,))
    s = (q @ k.transpose(-2, -1)) / math.sqrt(d)
    if masked is not None:
        s = s.masked_fill(masked, float("-inf"))
    p, total = _exp_and_sum(s)
    weights = p / total
    return proj, weights.mean(1) if average_attn_weights else weights


def transformer_encoder_layer(src: torch.Tensor, embed_dim: int, num_heads: int, qkv_weight: torch.Tensor,
                              qkv_bias: torch.Tensor, proj_weight: torch.Tensor, proj_bias: torch.Tensor,
                              use_gelu: bool, norm_first: bool, eps: float, norm_weight_1: torch.Tensor,
                              norm_bias_1: torch.Tensor, norm_weight_2: torch.Tensor, norm_bias_2: torch.Tensor,
                              ffn_weight_1: torch.Tensor, ffn_bias_1: torch.Tensor, ffn_weight_2: torch.Tensor,
                              ffn_bias_2: torch.Tensor, mask: torch.Tensor | None = None,
                              mask_type: int | None = None) -> torch.Tensor:
    """``torch._transformer_encoder_layer_fwd`` (the fast path of ``nn.TransformerEncoderLayer``)."""
    if src.numel() == 0:
        return src.clone()

    def norm(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (embed_dim,), w, bias, eps)

    x = norm(src, norm_weight_1, norm_bias_1) if norm_first else src
    x = native_multi_head_attention(x, x, x, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias,
                                    mask, False, True, mask_type)[0] + src
    if not norm_first:
        x = norm(x, norm_weight_1, norm_bias_1)
    h = norm(x, norm_weight_2, norm_bias_2) if norm_first else x
    h = F.linear(h, ffn_weight_1, ffn_bias_1)
    h = F.gelu(h) if use_gelu else F.relu(h)
    x = F.linear(h, ffn_weight_2, ffn_bias_2) + x
    return x if norm_first else norm(x, norm_weight_2, norm_bias_2)


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
          dropout_p: float = 0.0, is_causal: bool = False, *, scale: float | None = None,
          enable_gqa: bool = False) -> torch.Tensor:
    """The kernel of ``aten.scaled_dot_product_attention`` while a graph is captured."""
    def pytorch() -> torch.Tensor:
        return _SDPA._op_dk(DispatchKey.CompositeImplicitAutograd, query, key, value, attn_mask, dropout_p,
                            is_causal, scale=scale, enable_gqa=enable_gqa)

    if dropout_p != 0.0 or 0 in (query.numel(), key.numel(), value.numel()):
        return pytorch()  # random, or empty (eager returns early, and the mask gets no gradient)
    try:
        return scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    except Exception:  # noqa: BLE001  (invalid arguments: PyTorch's kernel raises eager's error)
        return pytorch()


_SDPA = torch.ops.aten.scaled_dot_product_attention.default


def decompositions() -> dict:
    """The fast paths' native operators, for AOT autograd's decomposition table (they only run
    without gradients, so below autograd is where they are met)."""
    aten = torch.ops.aten
    return {aten._native_multi_head_attention.default: native_multi_head_attention,
            aten._transformer_encoder_layer_fwd.default: transformer_encoder_layer}


@contextlib.contextmanager
def decompose_attention() -> Iterator[None]:
    """While active (around AOT autograd's tracing), ``aten.scaled_dot_product_attention`` runs
    as :func:`scaled_dot_product_attention` wherever it is called: user code, ``nn.MultiheadAttention``,
    a model library. It is a CompositeImplicitAutograd operator, decomposed above autograd, so the
    kernel is installed there (through the Python dispatcher, which AOT's tracing enables) and
    autograd differentiates the plain operations."""
    key = DispatchKey.CompositeImplicitAutograd
    previous = _SDPA.py_kernels.get(key)
    _SDPA.py_kernels[key] = _sdpa
    _SDPA._dispatch_cache.clear()
    try:
        yield
    finally:
        if previous is None:
            del _SDPA.py_kernels[key]
        else:
            _SDPA.py_kernels[key] = previous
        _SDPA._dispatch_cache.clear()
