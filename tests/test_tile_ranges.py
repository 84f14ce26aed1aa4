"""Masks as domains: isl-derived tile ranges. Nothing here runs a kernel (explain only)."""

from __future__ import annotations

import re

import pytest
import torch

import flashlight
from flashlight import ir, passes

from conftest import check_golden, qkv

S, T = 1024, 64


def _mask(kind: str):
    def fn(q, k, v):
        s = q @ k.transpose(-2, -1)
        i = torch.arange(q.shape[-2])[:, None]
        j = torch.arange(k.shape[-2])[None, :]
        if kind == "causal":
            keep = j <= i
        elif kind == "sliding":
            keep = (j <= i) & (i - j < 256)
        else:  # prefix LM: bidirectional over the first 256 keys, causal after
            keep = (j <= i) | (j < 256)
        return torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1) @ v
    return fn


def _counts(kind: str) -> tuple[int, int, int]:
    q, k, v = qkv(1, 1, S, S, 16)
    ex = flashlight.explain(_mask(kind), q, k, v, options=flashlight.Options(block_m=T, block_n=T))
    proof = next(p for p in ex.proofs if p.transformation.startswith("tile ranges"))
    m = re.search(r"visits (\d+) of (\d+) tiles.*?(\d+) of them with mask code", proof.reason)
    assert m, proof.reason
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _expected(kind: str) -> tuple[int, int]:
    """Brute force over the 16 x 16 tiles: (visited, masked)."""
    n = S // T
    visited = masked = 0
    for a in range(n):
        for b in range(n):
            pts = [(i, j) for i in range(a * T, a * T + T) for j in range(b * T, b * T + T)]
            if kind == "causal":
                keep = [j <= i for i, j in pts]
            elif kind == "sliding":
                keep = [j <= i and i - j < 256 for i, j in pts]
            else:
                keep = [j <= i or j < 256 for i, j in pts]
            visited += any(keep)
            masked += any(keep) and not all(keep)
    return visited, masked


@pytest.mark.parametrize("kind", ["causal", "sliding", "prefix"])
def test_visited_and_masked_tiles(kind):
    visited, total, masked = _counts(kind)
    assert total == 256
    assert (visited, masked) == _expected(kind)
    if kind == "causal":
        assert (visited, masked) == (136, 16), "the diagonal and below; mask code on the diagonal only"


def test_tile_ranges_golden():
    text = """\
program causal(s: f32[256,256]) -> (m: f32[256])
  for i in 0:256 parallel tile 64 @grid
    for j in 0:256 reduce tile 64 @serial
      if j <= i
        A: m[i] max= s[i,j]"""
    prog = passes.tile_ranges(ir.parse(text))
    check_golden("tile_ranges_causal", str(prog))
    loop = prog.body[0].body[0]
    assert [r.masked for r in loop.ranges] == [False, True]
    assert str(ir.parse(str(prog))) == str(prog)


@pytest.mark.parametrize("heads", [3, 20])
def test_causal_programs_launch_heaviest_first_within_a_group_of_heads(heads):
    """The grid mapping (pid -> query tile, head) is a bijection, and within each group of heads
    the query tiles that see the most keys come first."""
    q, k, v = qkv(1, heads, 256, 256, 16)
    src = flashlight.explain(_mask("causal"), q, k, v,
                             options=flashlight.Options(block_m=64, block_n=64)).kernels[0].source
    body = src.split("pid = tl.program_id(0)\n", 1)[1].splitlines()
    prologue = body[:next(k for k, line in enumerate(body) if "tl.full" in line)]
    mapping = [line.strip() for line in prologue if re.match(r"\s+(pid\w*|i\d+) = ", line)]
    tile = next(x.split(" = ")[0] for x in mapping if x.startswith("pid_"))
    head = next(x.split(" = ")[0] for x in mapping if re.match(r"i\d+ = ", x) and "% " + str(heads) in x)
    order = []
    for pid in range(4 * heads):
        env = {"pid": pid}
        for line in mapping:
            exec(line, {}, env)
        order.append((env[tile], env[head]))
    assert sorted(order) == [(t, h) for t in range(4) for h in range(heads)], "every program exactly once"
    group = max(d for d in range(1, min(heads, 16) + 1) if heads % d == 0)
    assert [t for t, _ in order[:group]] == [3] * group, "the heaviest tile of every head in the group first"
    assert order[4 * group - 1][0] == 0


CAUSAL_HEADS = """\
program causal(s: f32[6,256,256]) -> (m: f32[6,256])
  for h in 0:6 parallel tile 1 @grid, i in 0:256 parallel tile 64 @grid
    for j in 0:256 reduce tile 64 @serial
      if j <= i
        A: m[h,i] max= s[h,i,j]"""


def test_order_launches_marks_the_growing_query_tiles():
    prog = passes.order_launches(passes.tile_ranges(ir.parse(CAUSAL_HEADS)), group=4)
    grid = prog.body[0].body[0]
    assert grid.iterator == "i" and grid.launch == ir.nodes.HeaviestFirst(3), "the largest divisor of 6 up to 4"
    assert "i in 0:256 parallel tile 64 @grid launch heaviest-first group 3" in str(prog)
    assert str(ir.parse(str(prog))) == str(prog)
    proof = next(p for p in prog.proofs if p.transformation.startswith("launch the tiles of i"))
    assert proof.legal and "grow from 1 to 4" in proof.reason and "independent" in proof.reason


def test_order_launches_leaves_uniform_work_in_index_order():
    """Without tile ranges (no mask) or with work that shrinks along the query tiles, nothing is marked."""
    unmasked = ir.parse(CAUSAL_HEADS.replace("      if j <= i\n", "").replace("        A:", "      A:"))
    anti = ir.parse(CAUSAL_HEADS.replace("if j <= i", "if j >= i"))
    for prog in (passes.tile_ranges(unmasked), passes.tile_ranges(anti)):
        ordered = passes.order_launches(prog)
        assert ordered == prog and not ordered.proofs[len(prog.proofs):], str(ordered)


def test_a_launch_order_on_a_serial_loop_does_not_verify():
    text = CAUSAL_HEADS.replace("tile 64 @serial", "tile 64 @serial launch heaviest-first group 2")
    with pytest.raises(ir.VerificationError, match="launch order needs a tiled parallel grid loop"):
        ir.verify(ir.parse(text))


def test_the_interpreter_checks_what_tile_ranges_claim():
    """The oracle checks the pass's facts: the ranges it derived hold; a range that leaves out a
    tile with work, or calls a diagonal tile full, is caught where the claim fails."""
    import numpy as np

    from flashlight.ir.interpret import interpret

    text = CAUSAL_HEADS.replace("f32[6,", "f32[2,").replace("0:6", "0:2")
    prog = passes.tile_ranges(ir.parse(text))
    s = np.random.default_rng(0).standard_normal((2, 256, 256)).astype(np.float32)
    ref = np.where(np.tril(np.ones((256, 256), bool)), s, -np.inf).max(-1)
    np.testing.assert_array_equal(interpret(prog, {"s": s})["m"], ref)
    good = str(prog)
    assert "tiles [0:i // 64 full, i // 64:i // 64 + 1 masked]" in good
    with pytest.raises(ValueError, match=r"runs statements in tile 0 at h=0, i=0, j=0, which none of its tile ranges lists \(0:i // 64\)"):
        interpret(ir.parse(good.replace(", i // 64:i // 64 + 1 masked", "")), {"s": s})
    with pytest.raises(ValueError, match=r"claims every guard holds, but j <= i fails"):
        interpret(ir.parse(good.replace("i // 64 + 1 masked", "i // 64 + 1 full")), {"s": s})
