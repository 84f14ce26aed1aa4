"""Split-KV, derived (issue 20): a decode step's long reduction over the cache, for few rows,
runs in chunks that are programs of their own, then a merge of their partial states (the online
state's monoid). Each case matches eager PyTorch on the CPU interpreter; the split is explained
with the lemma, and a grid the rows fill is left alone."""

from __future__ import annotations

import math

import pytest
import torch

import flashlight
from conftest import check_against_eager
from flashlight.counting import counters

B, H, HKV, D, SK = 1, 4, 2, 16, 1500  # a cache of three chunks of 512, the last one partial


def _scores(q, k):
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


def _positions(q, k):
    sq, sk = q.shape[-2], k.shape[-2]
    i = torch.arange(sq, device=q.device)[:, None] + (sk - sq)  # the queries are the cache's last positions
    return i, torch.arange(sk, device=q.device)[None, :]


def vanilla(q, k, v):
    return torch.softmax(_scores(q, k), -1) @ v


def causal_offset(q, k, v):
    i, j = _positions(q, k)
    return torch.softmax(_scores(q, k).masked_fill(j > i, float("-inf")), -1) @ v


def sliding_window(q, k, v):  # 200 keys: two of the three chunks see none
    i, j = _positions(q, k)
    return torch.softmax(_scores(q, k).masked_fill((j > i) | (j <= i - 200), float("-inf")), -1) @ v


def alibi(q, k, v):
    i, j = _positions(q, k)
    slopes = 2.0 ** (-8.0 * torch.arange(1, q.shape[1] + 1, device=q.device) / q.shape[1])
    return torch.softmax(_scores(q, k) + (slopes[:, None, None] * (j - i)).to(q.dtype), -1) @ v


def softcap(q, k, v):
    s = _scores(q, k)
    return torch.softmax(torch.tanh(s / 5.0) * 5.0, -1) @ v


def gqa(q, k, v):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return torch.softmax(_scores(q, k), -1) @ v


def one_row_masked(q, k, v):  # query row 1 sees no key: eager's NaN, the others as usual
    i, _ = _positions(q, k)
    s = _scores(q, k).masked_fill((i == k.shape[-2] - q.shape[-2] + 1), float("-inf"))
    return torch.softmax(s, -1) @ v


CASES = {
    "vanilla": (vanilla, 1, H), "causal_offset": (causal_offset, 4, H), "sliding_window": (sliding_window, 1, H),
    "alibi": (alibi, 4, H), "softcap": (softcap, 1, H), "gqa": (gqa, 1, HKV), "one_row_masked": (one_row_masked, 4, H),
}


def _inputs(sq: int, hkv: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, sq, D, generator=g), torch.randn(B, hkv, SK, D, generator=g),
            torch.randn(B, hkv, SK, D, generator=g)]


@pytest.mark.parametrize("name", list(CASES))
def test_a_decode_step_runs_in_chunks_and_matches_eager(name):
    fn, sq, hkv = CASES[name]
    args = _inputs(sq, hkv, 3)
    ex = flashlight.explain(fn, *args)
    split = [p for p in ex.proofs if p.transformation.startswith("split ")]
    assert split and split[0].legal, [(p.transformation, p.reason) for p in split]
    assert "into 3 chunks of 512" in split[0].transformation and "monoid" in split[0].lemma
    grids = [k.grid for k in ex.kernels]
    assert max(grids) >= 3 and not ex.fallbacks, [(k.name, k.grid, k.computes) for k in ex.kernels]
    assert not [b for b in ex.buffers if SK in b.shape], ex.buffers  # the scores stay in registers
    check_against_eager(fn, *args)


GROWING = (5, 7, 64, 65, 301)  # within a tile, one full tile, one key past it, a few tiles per chunk (no
# length equals another size of the inputs: Dynamo would give both one symbol, then recompile)


@pytest.mark.parametrize("name", list(CASES))
def test_a_growing_cache_compiled_once_runs_in_interleaved_chunks(name):
    """A decode loop whose cache length varies: one program for every length (the length a size
    parameter), its reduction still split. The chunk count cannot follow the length, so a fixed
    number of chunks takes the keys ``n·u + c``; each call matches eager (masked chunks, the
    fully masked row and tails included) and nothing is compiled after the first call."""
    fn, sq, hkv = CASES[name]
    f = flashlight.compile(fn, dynamic=True)
    g = torch.Generator().manual_seed(8)
    counters.clear()
    for n in GROWING:
        q = torch.randn(B, H, sq, D, generator=g)
        k, v = (torch.randn(B, hkv, n, D, generator=g) for _ in range(2))
        got, ref = f(q, k, v), fn(q, k, v)
        assert torch.equal(got.isnan(), ref.isnan()), f"cache length {n}"
        torch.testing.assert_close(got.nan_to_num(), ref.nan_to_num(), rtol=1e-4, atol=1e-5, msg=f"cache length {n}")
    assert counters["programs_compiled"] == 1 and counters["eager_calls"] == 0, dict(counters)
    for t in (k, v):
        torch._dynamo.mark_dynamic(t, 2)
    ex = flashlight.explain(fn, q, k, v)
    split = [p for p in ex.proofs if p.transformation.startswith("split ")]
    assert split and split[0].legal and "interleaved chunks" in split[0].transformation, split
    assert "monoid" in split[0].lemma and not [b for b in ex.buffers if "S" in b.shape], ex.buffers


def test_the_query_heads_of_a_group_are_the_rows_of_one_tile():
    """GQA decode: the heads are packed by group (``h = 2·hk + r``), so each program reads its
    group's keys at a grid index, once, and meets the group's queries in one matrix product."""
    args = _inputs(1, HKV, 9)
    ex = flashlight.explain(gqa, *args)
    packed = [p for p in ex.proofs if p.transformation.startswith("pack the groups")]
    assert packed and packed[0].legal and "bijection" in packed[0].reason, packed
    chunks = ex.kernels[0].source
    assert "tl.dot(" in chunks and "k_ptr + (i0_kv) * " in chunks, chunks  # one key tile per program
    check_against_eager(gqa, *args)
    grads = [a.requires_grad_() for a in _inputs(1, HKV, 10)]  # the packed backward's gradients too
    backward = flashlight.explain(gqa, *grads).backward
    assert any(p.transformation.startswith("pack the groups") and p.legal for p in backward.proofs)
    check_against_eager(gqa, *grads)


def test_the_rows_fill_the_grid_so_prefill_is_not_split():
    """Many rows (a prefill's queries): the grid is full without chunks (16 heads of 1100 queries
    in tiles of 64: 288 programs), nothing is split, and the refusal counts the programs."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, 16, 1100, 8, generator=g) for _ in range(3))
    ex = flashlight.explain(vanilla, q, k, v)
    split = [p for p in ex.proofs if p.transformation.startswith("split ")]
    assert [p.legal for p in split] == [False] and "has 288 programs without a split" in split[0].reason, split
    assert len(ex.kernels) == 1


def test_a_loss_over_many_rows_with_few_programs_splits_its_vocabulary():
    """Linear + cross-entropy: 8192 rows are 128 programs of 64 rows (an H100 has 132
    multiprocessors), each walking the whole vocabulary. The log-sum-exp splits into chunks although
    the rows are many; the loss's sum over the rows reads the merged statistics (an epilogue), and
    the logits the target's gather reads are copied, so that the chunks' own are computed in their
    programs (a matrix product reduced again) and never stored."""
    def lce(x, w, t):
        return torch.nn.functional.cross_entropy((x @ w.T).float(), t)

    x, w, t = torch.zeros(8192, 32), torch.zeros(4096, 32), torch.zeros(8192, dtype=torch.long)
    ex = flashlight.explain(lce, x, w, t)
    split = [p for p in ex.proofs if p.transformation.startswith("split ")]
    assert [p.legal for p in split] == [True] and "into 2 chunks of 2048" in split[0].transformation, split
    assert "128 programs without the split, 256 with it" in split[0].reason
    assert all(4096 not in b.shape for b in ex.buffers), ex.buffers
    chunks = [k.computes for k in ex.kernels if "c:2" in k.computes]
    assert chunks and "sum_1_chunk (+ online)" in chunks[0], [k.computes for k in ex.kernels]


def test_a_split_loss_and_its_gradients_match_eager():
    """The split log-sum-exp of linear + cross-entropy (five chunks, the last one partial, an
    ignored target) gives eager's loss and gradients."""
    def lce(x, w, t):
        return torch.nn.functional.cross_entropy((x @ w.T).float(), t)

    g = torch.Generator().manual_seed(7)
    x, w = torch.randn(70, 32, generator=g), torch.randn(2100, 32, generator=g) / 32 ** 0.5
    t = torch.randint(0, 2100, (70,), generator=g)
    t[3] = -100
    ex = flashlight.explain(lce, x, w, t)
    assert [p.transformation for p in ex.proofs if p.transformation.startswith("split ")] == \
        ["split S1 (S1, S4) over i1 into 5 chunks of 512"]
    check_against_eager(lce, x, w, t)


def test_a_term_that_is_not_the_identity_for_a_masked_chunk_is_not_split():
    """``Σ_j exp(m - s)`` separates like softmax's sum, but over a chunk with every key masked
    (``s = -inf``) its term is not 0: such a chunk's partial would not be the identity, so the
    reduction stays whole, and says why."""
    def shifted(q, k, v):
        s = _scores(q, k)
        m = s.amax(-1, keepdim=True)
        return torch.exp(m - s).sum(-1)

    args = _inputs(1, H, 5)
    ex = flashlight.explain(shifted, *args)
    refused = [p for p in ex.proofs if p.transformation.startswith("split ")]
    assert refused and not refused[0].legal and "is not 0.0" in refused[0].reason, refused
    check_against_eager(shifted, *args)


def test_a_maximum_alone_splits_and_stays_exact():
    """A row maximum over few long rows: partial maxima per chunk, then theirs (no rescale, no
    rounding: the result is eager's bit for bit)."""
    x = torch.randn(4, 3000, generator=torch.Generator().manual_seed(6))
    ex = flashlight.explain(lambda x: x.amax(-1), x)
    split = [p for p in ex.proofs if p.transformation.startswith("split ")]
    assert split and split[0].legal and "associative" in split[0].lemma and len(ex.kernels) == 2
    assert torch.equal(flashlight.compile(lambda x: x.amax(-1))(x), x.amax(-1))


# {{{ paged caches: K/V gathered through a block table, ragged lengths

PAGE, PAGES, POOL = 16, 80, 400  # a table of 80 pages of 16 keys per sequence (1280: three chunks), from a pool of 400


def _paged(k_pages, table):
    """The cache of each sequence in order: ``k_pages[table[b, j // P], j % P]`` ([B, S, H, D])."""
    j = torch.arange(table.shape[1] * k_pages.shape[1], device=table.device)
    return k_pages[table[:, j // k_pages.shape[1]], j % k_pages.shape[1]]


def _paged_scores(q, k_pages, table, lengths):
    k = _paged(k_pages, table)
    g = q.shape[1] // k.shape[2]  # GQA: the query heads of a group share a key/value head
    s = torch.einsum("bhqd,bshd->bhqs", q, k.repeat_interleave(g, 2)) / math.sqrt(q.shape[-1])
    j = torch.arange(k.shape[1], device=q.device)
    i = lengths[:, None] - q.shape[2] + torch.arange(q.shape[2], device=q.device)[None, :]  # the last positions of each sequence
    return s, i[:, None, :, None], j, (j >= lengths[:, None, None, None])


def _paged_finish(s, v_pages, table, q):
    v = _paged(v_pages, table)
    v = v.repeat_interleave(q.shape[1] // v.shape[2], 2)
    return torch.einsum("bhqs,bshd->bhqd", torch.softmax(s, -1), v)


def paged_vanilla(q, k_pages, v_pages, table, lengths):
    s, _, _, beyond = _paged_scores(q, k_pages, table, lengths)
    return _paged_finish(s.masked_fill(beyond, float("-inf")), v_pages, table, q)


def paged_alibi(q, k_pages, v_pages, table, lengths):
    s, i, j, beyond = _paged_scores(q, k_pages, table, lengths)
    slopes = 2.0 ** (-8.0 * torch.arange(1, q.shape[1] + 1, device=q.device) / q.shape[1])
    s = s + (slopes[None, :, None, None] * (j - i)).to(q.dtype)  # the bias in the cache's precision (bf16)
    return _paged_finish(s.masked_fill(beyond | (j > i), float("-inf")), v_pages, table, q)


def paged_softcap(q, k_pages, v_pages, table, lengths):
    s, _, _, beyond = _paged_scores(q, k_pages, table, lengths)
    return _paged_finish((torch.tanh(s / 5.0) * 5.0).masked_fill(beyond, float("-inf")), v_pages, table, q)


def paged_sliding_window(q, k_pages, v_pages, table, lengths):
    s, i, j, beyond = _paged_scores(q, k_pages, table, lengths)
    return _paged_finish(s.masked_fill(beyond | (j > i) | (j <= i - 100), float("-inf")), v_pages, table, q)


PAGED = {"vanilla": (paged_vanilla, H), "alibi": (paged_alibi, H), "softcap": (paged_softcap, H),
         "sliding_window": (paged_sliding_window, H), "gqa": (paged_vanilla, HKV)}


@pytest.mark.parametrize("name", list(PAGED))
def test_a_paged_cache_with_ragged_lengths_matches_eager(name):
    """Four sequences of 0, 9, 777 and 1280 keys in pages scattered over a pool: each page is read
    through the table, keys past a sequence's length are masked (a sequence of none gets eager's
    NaN), and the long cache still runs in chunks. The scores, computed per page and slot and read
    as one row of keys, are joined into that row (join-dims), so each chunk computes its own: the
    chunks' kernel and the merge, no kernel or buffer of scores (run 21 stored them)."""
    fn, hkv = PAGED[name]
    g = torch.Generator().manual_seed(7)
    q = torch.randn(4, H, 1, D, generator=g)
    k_pages, v_pages = (torch.randn(POOL, PAGE, hkv, D, generator=g) for _ in range(2))
    table = torch.stack([torch.randperm(POOL, generator=g)[:PAGES] for _ in range(4)])
    lengths = torch.tensor([0, 9, 777, PAGE * PAGES])
    args = (q, k_pages, v_pages, table, lengths)
    ex = flashlight.explain(fn, *args)
    assert not ex.fallbacks, ex.fallbacks
    split = [p for p in ex.proofs if p.transformation.startswith("split ")]
    assert split and split[0].legal, [(p.transformation, p.reason) for p in split]
    assert [p.legal for p in ex.proofs if p.transformation.startswith("join dims")] == [True]
    assert len(ex.kernels) == 2 and all(b.name.endswith("_chunk") or len(b.shape) <= 4 for b in ex.buffers), \
        ([k.computes for k in ex.kernels], ex.buffers)
    got, ref = flashlight.compile(fn)(*args), fn(*args)
    assert torch.equal(got.isnan(), ref.isnan()) and got[0].isnan().all()
    assert torch.allclose(got.nan_to_num(), ref.nan_to_num(), rtol=1e-4, atol=1e-5)

# }}}


@pytest.mark.parametrize("name", ["vanilla", "gqa"])
def test_a_paged_caches_gradients_match_eager(name):
    """The gradient of the pages is a scatter-add through the table (index_put with accumulate,
    atomics): q, k_pages and v_pages get eager's gradients (every sequence has a key here: a
    sequence of none has NaN gradients, whose spread over its pages eager leaves to its kernels)."""
    fn, hkv = PAGED[name]
    g = torch.Generator().manual_seed(8)
    q = torch.randn(2, H, 1, D, generator=g)
    k_pages, v_pages = (torch.randn(POOL, PAGE, hkv, D, generator=g) for _ in range(2))
    table = torch.stack([torch.randperm(POOL, generator=g)[:PAGES] for _ in range(2)])
    lengths = torch.tensor([9, PAGE * PAGES - 300])  # the second one ends inside its third chunk
    check_against_eager(fn, q, k_pages, v_pages, table, lengths)
