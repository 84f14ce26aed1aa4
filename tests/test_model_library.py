"""Attention of the ``transformers`` library, as its models run it: each family in its "eager" and
"sdpa" attention implementations, built from a tiny config with random weights.

Inference (eval, no gradients): the attention is fused (no eager fallback that computes, no global
buffer with Sq x Sk elements per (batch, head)) and the output matches eager. Training (dropout 0):
the forward runs as flashlight's kernels (no fallback), and the outputs and the gradients of every
parameter match eager. Together the families cover GQA and multi-query attention, padding masks
(left padding for decoders, right padding for encoders), sliding windows, softcapping, relative
position biases (T5) and ALiBi (Falcon, Bloom); ``test_the_configs_exercise_their_feature`` checks
that each feature changes the model's output, so that the tiny configs do not test it vacuously.

A case that fails is marked ``xfail(strict=True)`` (``Family.xfail``) with a one-line diagnosis: it
records the failure, and it turns into an error when the failure is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

transformers = pytest.importorskip("transformers")

import flashlight  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from conftest import check_against_eager, relerr  # noqa: E402
from test_third_party import score_buffers  # noqa: E402

B, S, VOCAB = 2, 11, 64
S_DEC = 9  # T5's decoder length, unlike the encoder's: cross attention is S_DEC x S
PAD = 3    # the second sequence of each batch is PAD tokens shorter

# initializer_range 0.3 instead of 0.02: scores of a few units, so that softmax is far from
# uniform and masks, biases and softcapping change the result (see test_the_configs_exercise_their_feature)
TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            max_position_embeddings=64, initializer_range=0.3)


@dataclass
class Family:
    config: Callable[..., object]         # the config, without the attention implementation
    auto: str = "AutoModelForCausalLM"    # the class that builds it
    kind: str = "decoder"                 # decoder: (ids, left-padded mask) -> logits; encoder: right padding
    impls: tuple[str, ...] = ("eager", "sdpa")
    frozen: tuple[str, ...] = ()          # parameters whose gradient is 0 in exact arithmetic (not compared)
    xfail: dict[str, str] = field(default_factory=dict)  # "inference-eager", "training-sdpa", ... -> reason

    def lengths(self) -> list[tuple[int, int]]:
        return [(S, S), (S_DEC, S_DEC), (S_DEC, S)] if self.kind == "seq2seq" else [(S, S)]


FAMILIES: dict[str, Family] = {
    # GQA: 4 query heads share 2 key/value heads
    "llama": Family(lambda: transformers.LlamaConfig(**TINY, num_key_value_heads=2)),
    # GQA and a sliding window of 4 (of 11 positions)
    "mistral": Family(lambda sliding_window=4: transformers.MistralConfig(**TINY, num_key_value_heads=2,
                                                                          sliding_window=sliding_window)),
    # GQA, biases on q/k/v, a sliding window on layer 0 (max_window_layers=0: every layer slides)
    "qwen2": Family(lambda sliding_window=4: transformers.Qwen2Config(**TINY, num_key_value_heads=2,
                                                                      use_sliding_window=True,
                                                                      sliding_window=sliding_window,
                                                                      max_window_layers=0)),
    # softcapped scores (tanh), a sliding window (layer 0 slides), GQA. Transformers has no SDPA
    # form of softcapping (Gemma2Model._supports_sdpa is False): eager only
    "gemma2": Family(lambda sliding_window=4, attn_logit_softcapping=2.0: transformers.Gemma2Config(
                         **TINY, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                         sliding_window=sliding_window, attn_logit_softcapping=attn_logit_softcapping,
                         final_logit_softcapping=None),
                     impls=("eager",)),
    # relative position biases (bidirectional buckets in the encoder, causal ones in the decoder),
    # cross attention, a right-padded encoder
    "t5": Family(lambda: transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                               num_decoder_layers=1, num_heads=4, relative_attention_num_buckets=8,
                                               relative_attention_max_distance=16, dropout_rate=0.0),
                 auto="AutoModel", kind="seq2seq"),
    # ALiBi (added to the float mask), multi-query attention (one key/value head)
    "falcon": Family(lambda: transformers.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1,
                                                       num_attention_heads=4, alibi=True, initializer_range=0.3)),
    # ALiBi (as the bias of baddbmm). Transformers has no SDPA form (BloomModel._supports_sdpa is False)
    "bloom": Family(lambda: transformers.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=1, n_head=4,
                                                     initializer_range=0.3),
                    impls=("eager",)),
    # an encoder with right padding. The key bias adds q.b_k to every score of a row, which softmax
    # ignores: its gradient is 0 in exact arithmetic (rounding noise, ~1e-9, in both)
    "bert": Family(lambda: transformers.BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                   auto="AutoModel", kind="encoder", frozen=("attention.self.key.bias",)),
    # positions counted past the padding tokens (cumsum of ids != pad)
    "roberta": Family(lambda: transformers.RobertaConfig(**TINY, hidden_dropout_prob=0.0,
                                                         attention_probs_dropout_prob=0.0, pad_token_id=1),
                      auto="AutoModel", kind="encoder", frozen=("attention.self.key.bias",)),
    # learned positions, Conv1D projections, left padding
    "gpt2": Family(lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4, n_positions=64,
                                                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                                   initializer_range=0.3)),
}


# {{{ models and inputs

def _batch(n: int, seed: int, pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and the attention mask of a batch whose second sequence is PAD tokens shorter,
    padded on the left (a decoder's batch for generation) or on the right (an encoder's)."""
    ids = torch.randint(2, VOCAB, (B, n), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(B, n, dtype=torch.long)
    if left:
        mask[1, :PAD] = 0
    else:
        mask[1, n - PAD:] = 0
    return ids.masked_fill(mask == 0, pad_id), mask


def _build(family: str, impl: str, **overrides) -> tuple[torch.nn.Module, Callable, tuple[torch.Tensor, ...]]:
    spec = FAMILIES[family]
    config = spec.config(**overrides)
    torch.manual_seed(0)
    model = getattr(transformers, spec.auto).from_config(config, attn_implementation=impl)
    assert model.config._attn_implementation == impl
    pad = config.pad_token_id or 0
    if spec.kind == "seq2seq":
        def fn(input_ids, attention_mask, decoder_input_ids):
            out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
            return out.last_hidden_state, out.encoder_last_hidden_state
        args = (*_batch(S, 3, pad, left=False), _batch(S_DEC, 4, pad, left=False)[0])
    elif spec.kind == "encoder":
        def fn(input_ids, attention_mask):
            return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        args = _batch(S, 2, pad, left=False)
    else:
        def fn(input_ids, attention_mask):
            return model(input_ids=input_ids, attention_mask=attention_mask).logits
        args = _batch(S, 1, pad, left=True)
    return model, fn, args


def _cases(test: str) -> list:
    out = []
    for name, spec in FAMILIES.items():
        for impl in spec.impls:
            reason = spec.xfail.get(f"{test}-{impl}")
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(name, impl, marks=marks, id=f"{name}-{impl}"))
    return out

# }}}


@pytest.mark.parametrize("family,impl", _cases("inference"))
def test_inference_is_fused_and_matches_eager(family, impl):
    model, fn, args = _build(family, impl)
    model.eval()
    with torch.no_grad():
        ex = flashlight.explain(fn, *args)
        assert not ex.fallbacks, ex.fallbacks
        for sq, sk in FAMILIES[family].lengths():
            assert not score_buffers(ex, sq, sk), (sq, sk, score_buffers(ex, sq, sk))
        got, ref = flashlight.compile(fn)(*args), fn(*args)
    got, ref = (got, ref) if isinstance(ref, tuple) else ((got,), (ref,))
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        assert torch.equal(a.isnan(), b.isnan()), "NaN where eager has none, or the other way"
        assert relerr(a.nan_to_num(), b.nan_to_num()) < 1e-4, relerr(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("family,impl", _cases("training"))
def test_training_gradients_match_eager(family, impl):
    model, fn, args = _build(family, impl)
    model.train()  # every dropout probability is 0 in the configs
    for name, p in model.named_parameters():
        if name.endswith(FAMILIES[family].frozen):
            p.requires_grad_(False)
    compiled = flashlight.compile(fn)

    def forward(*args):
        out = compiled(*args)
        # the forward ran as flashlight's kernels (else what follows compares eager with eager)
        fallbacks = [f for g in compiled.graphs for f in g.fallbacks]
        assert compiled.graphs and not fallbacks, fallbacks
        return out

    # The reference is SDPA's math backend: the default CPU backend (flash attention for the CPU)
    # differentiates a row whose float mask is all finfo.min (Falcon's left padding) as if its
    # log-sum-exp were its maximum (min + log(S) rounds to min in fp32): gradients S times too
    # large there. The math backend, torch.softmax by hand and flashlight agree.
    with sdpa_kernel([SDPBackend.MATH]):
        check_against_eager(fn, *args, module=model, compiled=forward)
    fallbacks = [f for g in compiled.graphs for f in g.fallbacks]  # including kernels that failed to launch
    assert not fallbacks, fallbacks


def test_sdpa_with_transformers_float_mask_of_a_left_padded_row():
    """Falcon's SDPA call in isolation: an additive float mask (ALiBi, and finfo.min where masked) whose
    padded query rows are masked entirely. Eager attends uniformly there (min + score rounds to min);
    the online rescale of the first key tile must not be exp(0 - finfo.min) = inf (0 * inf: NaN)."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(B, 4, S, 8, generator=g) for _ in range(3))
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    keep = (j <= i) & torch.tensor([[True] * S, [False] * PAD + [True] * (S - PAD)])[:, None, None, :]
    mask = torch.where(keep, -0.25 * (i - j).float(), torch.finfo(torch.float32).min).expand(B, 4, S, S)

    def attend(q, k, v, mask):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    got, ref = flashlight.compile(attend)(q, k, v, mask), attend(q, k, v, mask)
    assert torch.equal(got.isnan(), ref.isnan()), "NaN where eager has none, or the other way"
    assert relerr(got.nan_to_num(), ref.nan_to_num()) < 1e-4, relerr(got.nan_to_num(), ref.nan_to_num())


def test_the_configs_exercise_their_feature():
    """Each feature the tiny configs claim to test changes the (eager) output: sliding windows
    mask, the softcap is reached, the padding is seen."""
    def output(family, **overrides):
        model, fn, args = _build(family, "eager", **overrides)
        with torch.no_grad():
            out = fn(*args)
        return out[0] if isinstance(out, tuple) else out

    assert relerr(output("mistral"), output("mistral", sliding_window=64)) > 1e-2
    assert relerr(output("qwen2"), output("qwen2", sliding_window=64)) > 1e-2
    assert relerr(output("gemma2"), output("gemma2", sliding_window=64)) > 1e-2
    assert relerr(output("gemma2"), output("gemma2", attn_logit_softcapping=None)) > 1e-2
    # padding: the unpadded tokens of the padded sequence see fewer keys than with a mask of ones
    model, fn, (ids, mask) = _build("llama", "eager")
    with torch.no_grad():
        assert relerr(fn(ids, mask)[1, PAD:], fn(ids, torch.ones_like(mask))[1, PAD:]) > 1e-2
