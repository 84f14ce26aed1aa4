"""bound-guard-tiles: the tile test of data-dependent guards, its text form, the verifier's rules
for it, and the interpreter's check of both of its claims on every tile."""

from __future__ import annotations

import numpy as np
import pytest

from flashlight import ir, passes
from flashlight.ir.interpret import interpret
from flashlight.ir.parser import ParseError

SEGMENT_SUM = """\
program segment_sum(x: f32[2,3,40], seg: i64[2,40], seg32: i32[2,40], w: f32[2,40]) -> (out: f32[2,3,40])
  for b in 0:2 parallel tile 1 @grid, h in 0:3 parallel tile 1 @grid, i in 0:40 parallel tile 16 @grid
    for j in 0:40 reduce tile 16 @serial
      if seg[b,i] == seg[b,j]
        S: out[b,h,i] += x[b,h,j]"""

TESTED = """\
    for j in 0:40 reduce tile 16 @serial test [possible tile_lo(seg[b,i]) <= tile_hi(seg[b,j]) & \
tile_lo(seg[b,j]) <= tile_hi(seg[b,i]); certain tile_lo(seg[b,i]) == tile_hi(seg[b,i]) & \
tile_lo(seg[b,j]) == tile_hi(seg[b,j]) & tile_lo(seg[b,i]) == tile_lo(seg[b,j])]"""


def _inputs(seed: int = 0, segments: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    seg = np.sort(rng.integers(0, segments, size=(2, 40)), axis=1)
    return {"x": rng.standard_normal((2, 3, 40)).astype(np.float32), "seg": seg, "seg32": seg.astype(np.int32),
            "w": rng.standard_normal((2, 40)).astype(np.float32)}


def test_golden_round_trip_and_proof() -> None:
    prog = ir.parse(SEGMENT_SUM)
    out = passes.bound_guard_tiles(prog)
    assert str(out).splitlines()[2] == TESTED
    assert str(ir.parse(str(out))) == str(out)
    (proof,) = out.proofs
    assert proof.legal and "every statement runs under seg[b,i] == seg[b,j]" in proof.reason
    assert "certain bounds every data-dependent guard" in proof.reason and proof.lemma
    inputs = _inputs()
    np.testing.assert_array_equal(interpret(out, inputs)["out"], interpret(prog, inputs)["out"])


def test_with_hoisted_bounds_the_test_reads_the_same_operands() -> None:
    """After hoist-tile-bounds the test still bounds ``seg[b,j]``: the code generator reads its
    bounds from the loop's ``bounds``; the interpreter checks both facts."""
    out = passes.run_pipeline(ir.parse(SEGMENT_SUM), "hoist-tile-bounds{min_extent=1},bound-guard-tiles")
    assert "bounds [seg[b,j] in seg_lo[b,j // 16]:seg_hi[b,j // 16]] test [possible tile_lo(seg[b,i])" in str(out)
    inputs = _inputs(1)
    np.testing.assert_array_equal(interpret(out, inputs)["out"], interpret(ir.parse(SEGMENT_SUM), inputs)["out"])


def test_the_interpreter_catches_a_wrong_test() -> None:
    text = str(passes.bound_guard_tiles(ir.parse(SEGMENT_SUM)))
    inputs = _inputs()
    never = text.replace("possible tile_lo(seg[b,i]) <= tile_hi(seg[b,j])", "possible tile_lo(seg[b,i]) < tile_lo(seg[b,j])")
    with pytest.raises(ValueError, match=r"says no guard can hold in tile 0 \(possible is false\), but a statement runs"):
        interpret(ir.parse(never), inputs)
    always = text.replace("certain tile_lo(seg[b,i]) == tile_hi(seg[b,i]) &", "certain tile_lo(seg[b,i]) <= tile_hi(seg[b,j]) |")
    with pytest.raises(ValueError, match=r"claims every data-dependent guard holds, but seg\[b,i\] == seg\[b,j\] fails"):
        interpret(ir.parse(always), inputs)


# guards of every kind the pass bounds, over random segment data: the interpreter checks each
# test on every tile, so a bound that is not sound fails here
@pytest.mark.parametrize("guard", [
    "seg[b,i] == seg[b,j]", "seg[b,i] != seg[b,j]", "seg[b,j] < seg[b,i]", "seg[b,j] <= seg[b,i]",
    "seg[b,j] > seg[b,i]", "seg[b,j] >= seg[b,i] + 1", "seg[b,i] - seg[b,j] <= 1", "-seg[b,j] < -2",
    "i64(seg32[b,j]) == seg[b,i]", "seg[b,i] == seg[b,j] & j <= i", "seg[b,i] == seg[b,j] | j + 8 <= i",
    "(seg[b,i] == seg[b,j]) & (w[b,j] > 0.0)",
])
@pytest.mark.parametrize("segments", [1, 3, 40])
def test_every_bounded_guard_is_sound(guard: str, segments: int) -> None:
    prog = ir.parse(SEGMENT_SUM.replace("seg[b,i] == seg[b,j]", guard))
    out = passes.bound_guard_tiles(prog)
    assert out.proofs and out.proofs[0].legal, [p.reason for p in out.proofs]
    assert str(ir.parse(str(out))) == str(out)
    inputs = _inputs(segments, segments)
    np.testing.assert_array_equal(interpret(out, inputs)["out"], interpret(prog, inputs)["out"])


@pytest.mark.parametrize("guard,reason", [
    ("w[b,i] < w[b,j]", "w[b,i] is f32: a NaN lies in no interval"),
    ("seg[b,i] == seg[b,seg[b,j]]", "is an indirect access"),
    ("seg[b,i] * seg[b,j] == 4", "is not bounded by the bounds of its operands"),
    ("i32(seg[b,j]) == seg32[b,i]", "may not keep every value of i64 exactly"),
    ("b1(seg[b,j])", "is no comparison, conjunction or disjunction"),
    ("(seg[b,j] < 2) | (w[b,j] > 0.0)", "w[b,j] is f32"),  # possible(a | b) needs both parts
])
def test_refusals(guard: str, reason: str) -> None:
    prog = ir.parse(SEGMENT_SUM.replace("seg[b,i] == seg[b,j]", guard))
    out = passes.bound_guard_tiles(prog)
    assert str(out) == str(prog), "no test where the guard cannot be bounded"
    (proof,) = out.proofs
    assert not proof.legal and reason in proof.reason, proof.reason


def test_data_the_kernel_writes_is_not_bounded() -> None:
    prog = ir.parse("""\
program p(x: f32[2,40], seg: i64[2,40]) -> (out: f32[2,40], s: i64[2,40])
  for b in 0:2 parallel tile 1 @grid, i in 0:40 parallel tile 16 @grid
    for j in 0:40 reduce tile 16 @serial
      if s[b,i] == seg[b,j]
        S: out[b,i] += x[b,j]
    T: s[b,i] = seg[b,i]""")
    (proof,) = passes.bound_guard_tiles(prog).proofs
    assert not proof.legal and "the kernel writes s: its values are not known before the loop" in proof.reason


def test_no_certain_part_unless_every_data_guard_is_proved() -> None:
    text = SEGMENT_SUM.replace("        S: out[b,h,i] += x[b,h,j]",
                               "        S: out[b,h,i] += x[b,h,j]\n        if seg32[b,j] < 3\n          T: out[b,h,i] += 1.0")
    out = passes.bound_guard_tiles(ir.parse(text))
    assert "test [possible tile_lo(seg[b,i]) <= tile_hi(seg[b,j]) & tile_lo(seg[b,j]) <= tile_hi(seg[b,i])]" in str(out)
    assert "no certain part (its tiles would run without guard code): seg32[b,j] < 3 not proved" in out.proofs[0].reason
    inputs = _inputs(2)
    np.testing.assert_array_equal(interpret(out, inputs)["out"], interpret(ir.parse(text), inputs)["out"])


def test_loops_without_data_guards_are_left_alone() -> None:
    prog = ir.parse(SEGMENT_SUM.replace("seg[b,i] == seg[b,j]", "j <= i"))
    out = passes.bound_guard_tiles(prog)
    assert out is prog and not out.proofs


@pytest.mark.parametrize("change,error", [
    (("@serial test", "@block test"), "only tiled serial loops have a tile test"),
    (("possible tile_lo(seg[b,i]) <=", "possible seg[b,i] <="), "is read outside tile_lo/tile_hi"),
    (("possible tile_lo(seg[b,i]) <=", "possible i <="), "iterator i outside tile_lo/tile_hi"),
    (("possible tile_lo(seg[b,i]) <=", "possible tile_lo(seg[b,i] + 1) <="), "neither a load nor an iterator"),
    (("possible tile_lo(seg[b,i]) <= tile_hi(seg[b,j]) & tile_lo(seg[b,j]) <= tile_hi(seg[b,i])",
      "possible tile_lo(seg[b,i])"), "is not boolean"),
    (("S: out[b,h,i] += x[b,h,j]", "S: out[b,h,i] += tile_lo(x[b,h,j])"), "meaningful only in a loop's tile test"),
    (("possible tile_lo(seg[b,i])", "possible tile_lo(seg[b,k])"), "iterator 'k' is not bound"),
])
def test_the_verifier_checks_the_test(change: tuple[str, str], error: str) -> None:
    text = str(passes.bound_guard_tiles(ir.parse(SEGMENT_SUM)))
    ir.verify(ir.parse(text))
    with pytest.raises(ir.VerificationError, match=error):
        ir.verify(ir.parse(text.replace(*change)))


def test_parse_errors() -> None:
    text = str(passes.bound_guard_tiles(ir.parse(SEGMENT_SUM)))
    with pytest.raises(ParseError, match="'possible' first in a tile test"):
        ir.parse(text.replace("test [possible", "test [certain"))
    with pytest.raises(ParseError, match="after the tile test"):
        ir.parse(text.replace("; certain", " certain"))
    with pytest.raises(ParseError, match="takes 1 argument"):
        ir.parse(text.replace("tile_lo(seg[b,i]) <=", "tile_lo(seg[b,i], j) <=", 1))
