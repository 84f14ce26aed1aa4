"""Every attention variant the way researchers write it: one fused kernel, no Sq x Sk buffer, and
eager's result (float32 on the CPU interpreter, small shapes with tails)."""

from __future__ import annotations

import math

import pytest
import torch

import flashlight

from conftest import check_against_eager, relerr

B, H, S, D = 2, 4, 70, 16
G = torch.Generator().manual_seed(7)


def rnd(*shape):
    return torch.randn(*shape, generator=G)


def gqa_expand(q, k, v):
    g = q.shape[1] // k.shape[1]
    k = k[:, :, None].expand(-1, -1, g, -1, -1).reshape(q.shape[0], -1, k.shape[-2], k.shape[-1])
    v = v[:, :, None].expand(-1, -1, g, -1, -1).reshape(q.shape[0], -1, v.shape[-2], v.shape[-1])
    return torch.softmax(q @ k.transpose(-2, -1) * 0.25, -1) @ v


def gqa_repeat_interleave(q, k, v):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    return torch.softmax(q @ k.transpose(-2, -1) * 0.25, -1) @ v


def gqa_5d(q, k, v):
    b, h, s, d = q.shape
    q5 = q.view(b, k.shape[1], h // k.shape[1], s, d)
    p = torch.softmax(q5 @ k.unsqueeze(2).transpose(-2, -1) * 0.25, -1)
    return (p @ v.unsqueeze(2)).view(b, h, s, d)


def alibi(q, k, v):
    h = q.shape[1]
    slopes = torch.exp2(-8.0 * torch.arange(1, h + 1, dtype=torch.float32) / h)
    i, j = torch.arange(q.shape[-2])[:, None], torch.arange(k.shape[-2])[None, :]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + slopes[:, None, None] * (j - i)
    return torch.softmax(s, -1) @ v


def softcap(q, k, v):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(30.0 * torch.tanh(s / 30.0), -1) @ v


def sliding_window(q, k, v):
    i, j = torch.arange(q.shape[-2])[:, None], torch.arange(k.shape[-2])[None, :]
    s = (q @ k.transpose(-2, -1)).masked_fill((j > i) | (i - j > 20), float("-inf"))
    return torch.softmax(s, -1) @ v


def prefix_lm(q, k, v):
    i, j = torch.arange(q.shape[-2])[:, None], torch.arange(k.shape[-2])[None, :]
    s = torch.where((j <= i) | (j < 24), q @ k.transpose(-2, -1), float("-inf"))
    return torch.softmax(s, -1) @ v


def causal_tril_finite(q, k, v):
    m = torch.tril(torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool))
    return torch.softmax(torch.where(m, q @ k.transpose(-2, -1), torch.finfo(q.dtype).min), -1) @ v


def causal_triu_bias(q, k, v):
    bias = torch.triu(torch.full((q.shape[-2], k.shape[-2]), float("-inf")), diagonal=1)
    return torch.softmax(q @ k.transpose(-2, -1) + bias, -1) @ v


def document(q, k, v, doc):
    m = doc[:, None, :, None] == doc[:, None, None, :]
    return torch.softmax((q @ k.transpose(-2, -1)).masked_fill(~m, float("-inf")), -1) @ v


def document_causal(q, k, v, doc):
    i = torch.arange(q.shape[-2])
    m = (doc[:, None, :, None] == doc[:, None, None, :]) & (i[None, :] <= i[:, None])
    return torch.softmax(torch.where(m, q @ k.transpose(-2, -1), float("-inf")), -1) @ v


def differential(q, k, v, lam=0.2):
    q0, q1 = q.chunk(2, dim=1)
    k0, k1 = k.chunk(2, dim=1)
    a0 = torch.softmax(q0 @ k0.transpose(-2, -1) * 0.25, -1)
    a1 = torch.softmax(q1 @ k1.transpose(-2, -1) * 0.25, -1)
    return a0 @ v - lam * (a1 @ v)


def evoformer(q, k, v, mask_bias, pair_bias):  # [B, N, S, H, D]
    qt, kt, vt = q.transpose(-2, -3), k.transpose(-2, -3), v.transpose(-2, -3)
    s = qt @ kt.transpose(-1, -2) * 0.25 + mask_bias + pair_bias
    return (torch.softmax(s, -1) @ vt).transpose(-2, -3)


def ipa_like(q, k, v, qp, kp):  # logits from an extra reduction over points and coordinates
    d2 = ((qp[:, :, :, None] - kp[:, :, None, :]) ** 2).sum(dim=(-1, -2))
    return torch.softmax(q @ k.transpose(-2, -1) * 0.25 - 0.1 * d2, -1) @ v


def key_lengths(q, k, v, lens):
    j = torch.arange(k.shape[-2])
    s = (q @ k.transpose(-2, -1)).masked_fill(~(j[None, :] < lens[:, None])[:, None, None, :], float("-inf"))
    return torch.softmax(s, -1) @ v


def plain(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v


def _docs():
    return torch.sort(torch.randint(0, 4, (B, S), generator=G), dim=-1).values


CASES = {
    "gqa_expand": (gqa_expand, lambda: (rnd(B, H, S, D), rnd(B, 2, S, D), rnd(B, 2, S, D))),
    "gqa_repeat_interleave": (gqa_repeat_interleave, lambda: (rnd(B, H, S, D), rnd(B, 2, S, D), rnd(B, 2, S, D))),
    "gqa_5d": (gqa_5d, lambda: (rnd(B, H, S, D), rnd(B, 2, S, D), rnd(B, 2, S, D))),
    "alibi": (alibi, lambda: (rnd(B, H, S, D), rnd(B, H, S, D), rnd(B, H, S, D))),
    "softcap": (softcap, lambda: (rnd(B, H, S, D), rnd(B, H, S, D), rnd(B, H, S, D))),
    "sliding_window": (sliding_window, lambda: (rnd(B, H, S, D), rnd(B, H, S, D), rnd(B, H, S, D))),
    "prefix_lm": (prefix_lm, lambda: (rnd(B, H, S, D), rnd(B, H, S, D), rnd(B, H, S, D))),
    "causal_tril_finite_fill": (causal_tril_finite, lambda: (rnd(B, H, S, D), rnd(B, H, S, D), rnd(B, H, S, D))),
    "causal_triu_bias": (causal_triu_bias, lambda: (rnd(B, H, S, D), rnd(B, H, S, D), rnd(B, H, S, D))),
    "document": (document, lambda: (rnd(B, H, S, D), rnd(B, H, S, D), rnd(B, H, S, D), _docs())),
    "document_causal": (document_causal, lambda: (rnd(B, H, S, D), rnd(B, H, S, D), rnd(B, H, S, D), _docs())),
    "differential": (differential, lambda: (rnd(B, 2 * H, S, D), rnd(B, 2 * H, S, D), rnd(B, H, S, 2 * D))),
    "evoformer": (evoformer, lambda: (rnd(B, 3, S, H, D), rnd(B, 3, S, H, D), rnd(B, 3, S, H, D),
                                      rnd(B, 3, 1, 1, S), rnd(B, 1, H, S, S))),
    "ipa_like": (ipa_like, lambda: (rnd(B, H, S, D), rnd(B, H, S, D), rnd(B, H, S, D),
                                    rnd(B, H, S, 4, 3), rnd(B, H, S, 4, 3))),
    "cross_key_lengths": (key_lengths, lambda: (rnd(B, H, 33, D), rnd(B, H, S, D), rnd(B, H, S, D),
                                                torch.tensor([50, 70]))),
    "decode": (plain, lambda: (rnd(B, H, 1, D), rnd(B, H, 300, D), rnd(B, H, 300, D))),
    "head_dim_80": (plain, lambda: (rnd(1, 2, 40, 80), rnd(1, 2, 40, 80), rnd(1, 2, 40, 80))),
    "head_dim_96": (plain, lambda: (rnd(1, 2, 40, 96), rnd(1, 2, 40, 96), rnd(1, 2, 40, 96))),
    "head_dim_128_v256": (plain, lambda: (rnd(1, 2, 40, 128), rnd(1, 2, 40, 128), rnd(1, 2, 40, 256))),
}


def test_differential_with_wide_values_takes_one_kernel_per_softmax_chain():
    """Two accumulators of 160 columns a row exceed what one program keeps in registers: the
    first chain runs as a kernel of its own and leaves its per-row results in memory."""
    args = rnd(1, 4, 40, 80), rnd(1, 4, 40, 80), rnd(1, 2, 40, 160)
    ex = flashlight.explain(differential, *args)
    assert len(ex.kernels) == 2 and not ex.fallbacks
    assert any(p.legal and p.transformation.startswith("split") for p in ex.proofs)
    assert sorted(b.shape for b in ex.buffers) == [(1, 2, 40), (2, 40, 160)], "a sum and an accumulator per row"
    stores = [line.split("_ptr")[0] for line in ex.kernels[0].source.splitlines() if "tl.store(" in line]
    assert sorted(stores) == sorted(set(stores)) and len(stores) == 2, "each stored once, after its NaN fixup"
    assert "superseded [sum_1, bmm_2_sum]" in ex.stages[-1][1], "supersede-stores decided it, code generation read it"
    ref = differential(*[a.double() for a in args])
    assert relerr(flashlight.compile(differential)(*args), ref) < 1e-5


def _padded_by_bias(q, k, v, bias):
    return torch.softmax(q @ k.transpose(-2, -1) * 0.25 + bias, -1) @ v


def _padded_by_fill(q, k, v, pad):
    s = (q @ k.transpose(-2, -1) * 0.25).masked_fill(pad[:, None, :, None], torch.finfo(torch.float32).min)
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("fn", [_padded_by_bias, _padded_by_fill])
def test_fully_masked_rows_with_finite_fills_are_uniform_as_in_eager(fn):
    """Padded query rows masked with finfo.min (additively or by masked_fill): eager's softmax of
    a row of equal fills is uniform. Rebasing the exponentials on round(R*log2e) overflowed there
    (R*log2e = -inf: NaN), so the pass is refused for such scores."""
    q, k, v = rnd(1, 2, 40, 16), rnd(1, 2, 40, 16), rnd(1, 2, 40, 16)
    pad = torch.zeros(1, 40, dtype=torch.bool)
    pad[0, 30:] = True
    mask = torch.zeros(1, 1, 40, 40).masked_fill(pad[:, None, :, None], torch.finfo(torch.float32).min)
    args = (q, k, v, mask if fn is _padded_by_bias else pad)
    ex = flashlight.explain(fn, *args)
    assert any(p.transformation.startswith("rebase") and not p.legal for p in ex.proofs)
    got = flashlight.compile(fn)(*args)
    assert not got.isnan().any() and relerr(got, fn(*args)) < 1e-5


@pytest.mark.parametrize("name", list(CASES))
def test_variant(name):
    fn, make = CASES[name]
    args = make()
    ex = flashlight.explain(fn, *args)
    assert len(ex.kernels) == 1 and not ex.fallbacks, (ex.kernels, ex.fallbacks)
    out = fn(*args)
    sq, sk = out.shape[-2] if name != "evoformer" else S, args[1].shape[-2] if name != "evoformer" else S
    assert not [b for b in ex.buffers if sq in b.shape and sk in b.shape], ex.buffers
    got = flashlight.compile(fn)(*args)
    ref = fn(*[a.double() if a.is_floating_point() else a for a in args])
    assert got.shape == out.shape and got.dtype == out.dtype
    assert relerr(got, ref) < 1e-5
    check_against_eager(fn, *args)  # and the gradients of every floating-point input


# hoist-tile-bounds leaves loops shorter than 2048 keys to each program's scan; these tests lower it
HOISTED = flashlight.passes.DEFAULT_PIPELINE.replace("hoist-tile-bounds", "hoist-tile-bounds{min_extent=1}")


def test_document_mask_skips_tiles_at_run_time():
    args = CASES["document"][1]()
    src = flashlight.explain(document, *args, options=flashlight.Options(block_m=32, block_n=32)).kernels[0].source
    assert "tl.min(" in src and "tl.max(" in src and "bounds of the guard over" in src, \
        "a scan of per-tile min/max document ids bounds the key tiles that are visited"


def test_document_mask_bounds_per_key_tile_are_computed_once():
    args = CASES["document"][1]()
    ex = flashlight.explain(document, *args, options=flashlight.Options(block_m=32, block_n=32, pipeline=HOISTED))
    bounds, attention = (k.source for k in ex.kernels)
    assert "tl.min(" in bounds and "tl.max(" in bounds and "doc_lo_ptr" in bounds, \
        "a kernel computes the min/max document id of every key tile once"
    assert {(b.name, b.shape) for b in ex.buffers} == {("doc_lo", (B, 3)), ("doc_hi", (B, 3))}
    scan = [ln for ln in attention.splitlines() if "bounds of the guard over" in ln or "doc_lo_ptr +" in ln]
    assert len(scan) == 3 and "4 tiles at a time" in scan[0] and "(c_i2)" in scan[1], \
        "the attention kernel scans those bounds, the two full key tiles (a power of two) in one step"
    assert "(t_i2)" in scan[2], "and reads them once for the tail tile of S = 70, which it tests"
    got = flashlight.compile(document, block_m=32, block_n=32, pipeline=HOISTED)(*args)
    assert relerr(got, document(*[a.double() if a.is_floating_point() else a for a in args])) < 1e-5


def _loop_bodies(src: str) -> dict[str, str]:
    """The kernel's top-level ``for`` loops: header comment -> body text."""
    out, header = {}, None
    for line in src.splitlines():
        if line.startswith("    for "):
            header = line
            out[header] = ""
        elif header and line.startswith("        "):
            out[header] += line + "\n"
        else:
            header = None
    return out


def test_document_mask_runs_tiles_inside_one_document_without_mask_code():
    args = CASES["document"][1]()
    src = flashlight.explain(document, *args, options=flashlight.Options(block_m=16, block_n=16)).kernels[-1].source
    loops = _loop_bodies(src)
    sure = [body for header, body in loops.items() if "every data-dependent guard holds" in header]
    assert len(sure) == 1 and "tl.dot" in sure[0], loops
    assert "doc_ptr" not in sure[0] and " if " not in sure[0], "the run of certain tiles neither loads ids nor tests"
    # the tiles before and after the run apply the mask; the tail tile of S = 70 is tested on its own
    assert sum("tl.dot" in body for body in loops.values()) == 4


@pytest.mark.parametrize("block,pipeline", [(16, flashlight.passes.DEFAULT_PIPELINE),
                                            (32, flashlight.passes.DEFAULT_PIPELINE), (16, HOISTED)])
def test_document_mask_with_interleaved_documents(block, pipeline):
    """Tiles where the mask holds everywhere are not contiguous here (documents alternate every
    16 positions), so no run is taken without mask code; the result must still be eager's."""
    q, k, v = rnd(B, H, S, D), rnd(B, H, S, D), rnd(B, H, S, D)
    doc = ((torch.arange(S) // 16) % 2).expand(B, S).contiguous()
    doc[1, 40:] = 5  # one batch ends in a long document: a run exists there
    got = flashlight.compile(document, block_m=block, block_n=block, pipeline=pipeline)(q, k, v, doc)
    assert relerr(got, document(q.double(), k.double(), v.double(), doc)) < 1e-5


def test_fully_masked_rows_match_eager():
    lens = torch.tensor([0, 70])  # batch 0 has no keys at all: eager gives nan
    q, k, v = rnd(B, H, 5, D), rnd(B, H, S, D), rnd(B, H, S, D)
    out, ref = flashlight.compile(key_lengths)(q, k, v, lens), key_lengths(q, k, v, lens)
    assert torch.isnan(out[0]).all() and torch.isnan(ref[0]).all()
    assert relerr(out[1], ref[1]) < 1e-5


def test_document_mask_scanned_one_tile_at_a_time(monkeypatch, tmp_path):
    """Where a chunk of tiles cannot be scanned at once, the guard bounds are scanned per tile:
    the same first, last and run of tiles, the same result."""
    from flashlight.codegen import tile_scan

    monkeypatch.setattr(tile_scan, "SCAN_ELEMENTS", 1)  # a chunk of one tile: per-tile scan
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))  # no segment compiled with chunks
    q, k, v = rnd(B, H, S, D), rnd(B, H, S, D), rnd(B, H, S, D)
    for pipeline in (flashlight.passes.DEFAULT_PIPELINE, HOISTED):
        for doc in (_docs(), ((torch.arange(S) // 16) % 2).expand(B, S).contiguous()):
            opts = dict(block_m=16, block_n=16, pipeline=pipeline)
            src = flashlight.explain(document, q, k, v, doc, options=flashlight.Options(**opts)).kernels[-1].source
            assert "bounds of the guard over each tile" in src and "every data-dependent guard holds" in src
            assert ("doc_lo_ptr +" in src) == (pipeline == HOISTED), "per tile, the precomputed bounds are read"
            got = flashlight.compile(document, **opts)(q, k, v, doc)
            assert relerr(got, document(q.double(), k.double(), v.double(), doc)) < 1e-5


def test_alibi_converts_positions_once_per_row_and_column():
    """``f32(j - i)`` over a score tile is spread into ``f32(j) - f32(i)`` (exact below 2**24): no
    int-to-float conversion per score, and the same values as eager."""
    args = CASES["alibi"][1]()
    src = flashlight.explain(alibi, *args, options=flashlight.Options(block_m=16, block_n=16)).kernels[0].source
    converted = [line.split("=", 1)[1].strip() for line in src.splitlines() if ".to(tl.float32)" in line]
    assert "o_i2.to(tl.float32)" in converted and "o_i3.to(tl.float32)" in converted, converted
    assert not [c for c in converted if "[" in c], "a broadcast tile converted per element"
    assert relerr(flashlight.compile(alibi)(*args), alibi(*args)) < 1e-5


def test_a_conversion_past_two_to_the_24_stays_per_element():
    def far(q, k, v):  # positions 2**20 apart: partial sums would not be exact in fp32
        i, j = torch.arange(q.shape[-2])[:, None], torch.arange(k.shape[-2])[None, :]
        return torch.softmax(q @ k.transpose(-2, -1) + 1e-6 * (j * 2 ** 20 - i), -1) @ v

    q, k, v = rnd(1, 1, 32, 16), rnd(1, 1, 32, 16), rnd(1, 1, 32, 16)
    src = flashlight.explain(far, q, k, v, options=flashlight.Options(block_m=16, block_n=16)).kernels[0].source
    assert ".to(tl.float32)" in src and not [ln for ln in src.splitlines() if "o_" in ln and ".to(tl.float32)" in ln], \
        "the tile is converted as a whole"
    assert relerr(flashlight.compile(far)(q, k, v), far(q, k, v)) < 1e-5


def additive_causal(q, k, v, keep_diagonal: bool = True, fill: float | None = None):
    """Causal attention as a model of the ``transformers`` library writes it: a mask of 0 and
    ``finfo.min`` added to the scores."""
    n = q.shape[-2]
    i = torch.arange(n)
    keep = i[None, :] <= i[:, None] if keep_diagonal else i[None, :] < i[:, None]
    mask = torch.where(keep, 0.0, torch.finfo(q.dtype).min if fill is None else fill)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask, -1) @ v


@pytest.mark.parametrize("keep_diagonal, fill, visits", [
    (True, None, "visits 3 of 4 tiles"),    # finfo.min and every row keeps a key: a domain, key tiles skipped
    (False, None, "visits 4 of 4 tiles"),   # row 0 masked whole: eager's uniform row, kept by walking it
    (True, -1e4, "visits 4 of 4 tiles"),    # a fill a large score could pass: not -inf
])
def test_an_additive_finite_min_mask_skips_key_tiles_where_it_acts_as_minus_inf(keep_diagonal, fill, visits):
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 2, 128, 16, generator=g) for _ in range(3))

    def fn(q, k, v):
        return additive_causal(q, k, v, keep_diagonal, fill)
    ex = flashlight.explain(fn, q, k, v)
    assert [p.reason for p in ex.proofs if p.transformation.startswith("tile ranges")][0].startswith(visits)
    assert relerr(flashlight.compile(fn)(q, k, v), fn(q, k, v)) < 1e-5
