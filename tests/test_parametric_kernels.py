"""Kernels of programs with size parameters: the sizes are kernel arguments, so kernels
generated once run at every size (design section 10). Tiled, mapped programs are written by
hand (the passes after ``tile`` do not keep parameters yet), launched through
:class:`~flashlight.runtime.CompiledProgram` under Triton's interpreter at sizes of one, of a
tail shorter than a tile, of exactly a tile and of several tiles, and compared with the
reference interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flashlight import ir
from flashlight.codegen import CodegenError, KernelSource, generate, launcher
from flashlight.ir.interpret import interpret
from flashlight.ir.verify import verify
from flashlight.runtime import CompiledProgram, symbolic_strides

SIZES = (1, 5, 16, 17, 40)

RMS = """\
program rms[S](x: f32[S,64], w: f32[64]) -> (out0: f32[S,64])
  local mean_acc: f32[S]
  for i0 in 0:S parallel tile 16 @grid
    for i1 in 0:64 reduce tile 64 @block
      S1: mean_acc[i0] += x[i0,i1] * x[i0,i1]
    for i1 in 0:64 parallel tile 64 @block
      S7: out0[i0,i1] = x[i0,i1] * rsqrt(mean_acc[i0] / 64.0 + 1e-06) * w[i1]"""

# rows of a parametric length T, held in one block of 64 (so T <= 64)
SOFTMAX = """\
program smr[S, T](x: f32[S,T]) -> (out0: f32[S,T])
  local amax: f32[S]
  local sum_1: f32[S]
  for i0 in 0:S parallel tile 4 @grid
    for i1 in 0:T reduce tile 64 @block
      S0: amax[i0] max= x[i0,i1]
    for i1 in 0:T reduce tile 64 @block
      S3: sum_1[i0] += exp2((x[i0,i1] - amax[i0]) * 1.4426950408889634)
    for i1 in 0:T parallel tile 64 @block
      S5: out0[i0,i1] = exp2((x[i0,i1] - amax[i0]) * 1.4426950408889634) / sum_1[i0]"""

SUM = """\
program sumr[S, T](x: f32[S,T]) -> (out0: f32[S])
  local sum_1: f32[S]
  for i0 in 0:S parallel tile 1 @grid
    for i1 in 0:T reduce tile 16 @serial
      S0: sum_1[i0] += x[i0,i1]
    S1: out0[i0] = sum_1[i0]"""

# a stride that depends on a size: x is [2, S, 16], its first stride 16 * S
SCALE3D = """\
program scale[S](x: f32[2,S,16]) -> (out0: f32[2,S,16])
  for i0 in 0:2 parallel tile 1 @grid, i1 in 0:S parallel tile 4 @grid
    for i2 in 0:16 parallel tile 16 @block
      S0: out0[i0,i1,i2] = x[i0,i1,i2] * 2.0"""

# the attention-like kernel: a running max, sum and accumulator over key tiles of 16 of a
# parametric key length T (queries S in tiles of 16 on the grid), as the default pipeline tiles
# it for static sizes
ONLINE = """\
program attn[S, T](q: f32[S,16], k: f32[T,16], v: f32[T,16]) -> (out0: f32[S,16])
  local mm: f32[S,T]
  local amax: f32[S]
  local sum_1: f32[S]
  local mm_1_sum: f32[S,16]
  local amax_prev: f32[S]
  for i0 in 0:S parallel tile 16 @grid
    for i1 in 0:T reduce tile 16 @serial state [running amax; previous amax_prev; rescaled sum_1, mm_1_sum]
      for i2 in 0:16 reduce tile 16 @block
        S0: mm[i0,i1] += q[i0,i2] * k[i1,i2] as dot over i2
      S2_prev: amax_prev[i0] = amax[i0]
      S2: amax[i0] max= mm[i0,i1] then * 0.25
      S5: sum_1[i0] += exp2(fma(mm[i0,i1], 0.36067376022224085, -(where(amax[i0] == -inf, 0.0, amax[i0]) * 1.4426950408889634))) rescale exp2(amax_prev[i0] * 1.4426950408889634 - where(amax[i0] == -inf, 0.0, amax[i0]) * 1.4426950408889634)
      for i3 in 0:16 parallel tile 16 @block
        S7: mm_1_sum[i0,i3] += exp2(fma(mm[i0,i1], 0.36067376022224085, -(where(amax[i0] == -inf, 0.0, amax[i0]) * 1.4426950408889634))) * v[i1,i3] rescale exp2(amax_prev[i0] * 1.4426950408889634 - where(amax[i0] == -inf, 0.0, amax[i0]) * 1.4426950408889634) as dot over i1
    S5_empty: sum_1[i0] = where(amax[i0] == -inf, nan, sum_1[i0]) as nan fixup
    for i3 in 0:16 parallel tile 16 @block
      S7_empty: mm_1_sum[i0,i3] = where(amax[i0] == -inf, nan, mm_1_sum[i0,i3]) as nan fixup
    for i3 in 0:16 parallel tile 16 @block
      S8: out0[i0,i3] = mm_1_sum[i0,i3] / sum_1[i0]"""


# causal attention over S queries and S keys, as the default pipeline tiles it for static sizes
# (tiles of 16): heaviest query tiles launched first, key tiles below the diagonal visited
# without mask code, the diagonal one masked, none above it
CAUSAL = """\
program causal[S](q: f32[S,16], k: f32[S,16], v: f32[S,16]) -> (out0: f32[S,16])
  local mm: f32[S,S]
  local amax: f32[S]
  local sum_1: f32[S]
  local mm_1_sum: f32[S,16]
  local amax_prev: f32[S]
  for i0 in 0:S parallel tile 16 @grid launch heaviest-first group 1
    for i1 in 0:S reduce tile 16 @serial state [running amax; previous amax_prev; rescaled sum_1, mm_1_sum] tiles [0:i0 // 16 full, i0 // 16:i0 // 16 + 1 masked]
      for i2 in 0:16 reduce tile 16 @block
        if i1 <= i0
          S0: mm[i0,i1] += q[i0,i2] * k[i1,i2] as dot over i2
      if i0 >= i1
        S3_prev: amax_prev[i0] = amax[i0]
      if i0 >= i1
        S3: amax[i0] max= mm[i0,i1] then * 0.25
      if i0 >= i1
        S6: sum_1[i0] += exp2(fma(mm[i0,i1], 0.36067376022224085, -(where(amax[i0] == -inf, 0.0, amax[i0]) * 1.4426950408889634))) rescale exp2(amax_prev[i0] * 1.4426950408889634 - where(amax[i0] == -inf, 0.0, amax[i0]) * 1.4426950408889634)
      for i3 in 0:16 parallel tile 16 @block
        if i0 >= i1
          S8: mm_1_sum[i0,i3] += exp2(fma(mm[i0,i1], 0.36067376022224085, -(where(amax[i0] == -inf, 0.0, amax[i0]) * 1.4426950408889634))) * v[i1,i3] rescale exp2(amax_prev[i0] * 1.4426950408889634 - where(amax[i0] == -inf, 0.0, amax[i0]) * 1.4426950408889634) as dot over i1
    S6_empty: sum_1[i0] = where(amax[i0] == -inf, nan, sum_1[i0]) as nan fixup
    for i3 in 0:16 parallel tile 16 @block
      S8_empty: mm_1_sum[i0,i3] = where(amax[i0] == -inf, nan, mm_1_sum[i0,i3]) as nan fixup
    for i3 in 0:16 parallel tile 16 @block
      S9: out0[i0,i3] = mm_1_sum[i0,i3] / sum_1[i0]"""


def compile_once(text: str) -> tuple[ir.Program, list[KernelSource], CompiledProgram]:
    """The program's kernels, generated once, and the callable that launches them at any size."""
    p = ir.parse(text)
    verify(p)
    strides = {t.name: symbolic_strides(t.shape) for t in p.tensors}
    kernels = generate(p, strides, "interpreter")
    launches = [launcher.Launch(k, launcher.load(k, interpret=True)) for k in kernels]
    return p, kernels, CompiledProgram(p, launches, {d.name: strides[d.name] for d in p.inputs})


def check(p: ir.Program, compiled: CompiledProgram, inputs: list[torch.Tensor], rtol: float = 1e-5) -> None:
    outs = compiled(inputs)
    ref = interpret(p, {d.name: t.numpy() for d, t in zip(p.inputs, inputs)})
    for o, d in zip(outs, p.outputs):
        assert tuple(o.shape) == ref[d.name].shape
        np.testing.assert_allclose(o.numpy(), ref[d.name], rtol=rtol, atol=1e-5)


def same_kernels(compiled: CompiledProgram, kernels: list[KernelSource], sources: list[str]) -> None:
    """Nothing was generated again: the launches hold the kernels generated once, unchanged."""
    assert [la.kernel for la in compiled.launches] == kernels
    assert all(la.kernel is k for la, k in zip(compiled.launches, kernels))
    assert [k.source for k in kernels] == sources


def rnd(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))


def test_rows_of_a_grid_over_a_size_parameter():
    p, kernels, compiled = compile_once(RMS)
    (k,) = kernels
    assert k.sizes == ("S",) and k.grid_factors == (("S", 16),)
    assert "def flashlight_rms_k0(x_ptr, w_ptr, out0_ptr, S):" in k.source
    assert "m_i0 = o_i0 < S" in k.source and "pid % ((S + 15) // 16)" in k.source
    assert k.programs({"S": 1}) == 1 and k.programs({"S": 17}) == 2
    sources = [k.source]
    for n in SIZES:
        check(p, compiled, [rnd(n, 64), rnd(64)])
    same_kernels(compiled, kernels, sources)


def test_softmax_over_a_parametric_row_in_one_block():
    p, kernels, compiled = compile_once(SOFTMAX)
    (k,) = kernels
    assert k.sizes == ("S", "T") and k.size_limits == (("T", 64),)
    assert "m_i1 = o_i1 < T" in k.source and "* T" in k.source  # x's row stride is T
    sources = [k.source]
    for s, t in [(1, 1), (3, 5), (5, 17), (4, 40), (6, 64)]:
        check(p, compiled, [rnd(s, t)])
    same_kernels(compiled, kernels, sources)
    with pytest.raises(ValueError, match="holds T in one tile of 64"):
        compiled([rnd(2, 65)])


@pytest.mark.parametrize("t", SIZES)
def test_a_sum_over_a_parametric_serial_loop_masks_its_tail(t):
    p, kernels, compiled = _sum()
    (k,) = kernels
    assert "for t_i1 in range(0, _index(((T + 15) // 16))):" in k.source
    assert "m_i1 = o_i1 < T" in k.source  # masked at every size: T is not known to be a multiple of 16
    source = k.source
    check(p, compiled, [rnd(3, t)])
    same_kernels(compiled, kernels, [source])


_SUM_COMPILED: list = []


def _sum() -> tuple[ir.Program, list[KernelSource], CompiledProgram]:
    """One compilation shared by every size of the sum test: the point is that it is not redone."""
    if not _SUM_COMPILED:
        _SUM_COMPILED.append(compile_once(SUM))
    return _SUM_COMPILED[0]


def test_tile_ranges_whose_bounds_read_a_size():
    """Ranges in tiles as tile-ranges would state them for a parametric extent: the whole tiles,
    then the tail tile (still masked: the tail mask follows the extent, not the range)."""
    text = SUM.replace("tile 16 @serial", "tile 16 @serial tiles [0:T // 16 full, T // 16:(T + 15) // 16 masked]")
    p, (k,), compiled = compile_once(text)
    assert "for t_i1 in range(_index((T // 16)), _index(((T + 15) // 16))):" in k.source
    for t in SIZES:
        check(p, compiled, [rnd(2, t)])


def test_a_stride_that_depends_on_a_size_is_an_expression_of_it():
    p, kernels, compiled = compile_once(SCALE3D)
    (k,) = kernels
    assert "x_ptr + (i0) * (16 * S)" in k.source
    assert k.grid_factors == ((2, 1), ("S", 4))
    for n in (1, 3, 8, 9):
        check(p, compiled, [rnd(2, n, 16)])
    # an input laid out otherwise is copied to the layout the kernel reads
    x = rnd(16, 5, 2).permute(2, 1, 0)
    check(p, compiled, [x])


def test_an_online_softmax_over_a_parametric_key_length():
    p, kernels, compiled = compile_once(ONLINE)
    (k,) = kernels
    assert k.sizes == ("S", "T") and k.serial
    sources = [k.source]
    for s, t in [(1, 1), (5, 5), (16, 16), (17, 17), (3, 40)]:
        check(p, compiled, [rnd(s, 16), rnd(t, 16), rnd(t, 16)], rtol=1e-4)
    same_kernels(compiled, kernels, sources)


def test_causal_attention_launches_heaviest_first_over_a_parametric_length():
    p, kernels, compiled = compile_once(CAUSAL)
    (k,) = kernels
    assert "pid_i0 = ((S + 15) // 16) - 1 - (pid % ((S + 15) // 16)) // 1" in k.source
    assert "for t_i1 in range(_index(pid_i0), _index((pid_i0 + 1))):" in k.source
    sources = [k.source]
    for s in SIZES:
        check(p, compiled, [rnd(s, 16), rnd(s + 1, 16)[:s], rnd(s + 2, 16)[:s]], rtol=1e-4)
    same_kernels(compiled, kernels, sources)


# keys past a batch's length (a data-dependent guard) over a parametric length, with the tile
# test bound-guard-tiles writes (tests/filecheck/bound-guard-tiles/key-lengths.fl, 40 -> S):
# the scan of guard bounds per tile and the loop over the tiles it leaves run to sizes of S
KEY_LENGTHS = """\
program key_lengths[S](x: f32[2,3,S], lens: i64[2], seg: i64[2,S]) -> (out: f32[2,3,S], cnt: f32[2,3,S])
  for b in 0:2 parallel tile 1 @grid, h in 0:3 parallel tile 1 @grid, i in 0:S parallel tile 16 @grid
    for j in 0:S reduce tile 16 @serial test [possible tile_lo(j) < tile_hi(lens[b])]
      if j < lens[b]
        S0: out[b,h,i] += x[b,h,j]
        if seg[b,i] == seg[b,j]
          T0: cnt[b,h,i] += 1.0"""


def test_a_tile_test_scans_the_tiles_of_a_parametric_loop():
    p, kernels, compiled = compile_once(KEY_LENGTHS)
    (k,) = kernels
    assert "c_j = tl.minimum(c_j, ((S + 15) // 16) - 1)" in k.source
    sources = [k.source]
    for s in SIZES:
        seg = (torch.arange(s) // 4).repeat(2, 1)
        check(p, compiled, [rnd(2, 3, s), torch.tensor([min(s, 3), s]), seg])
    same_kernels(compiled, kernels, sources)


def test_inputs_that_disagree_on_a_size_are_refused():
    p, kernels, compiled = compile_once(ONLINE)
    with pytest.raises(ValueError, match=r"input 'v' has shape"):
        compiled([rnd(2, 16), rnd(5, 16), rnd(6, 16)])


def test_a_size_parameter_named_like_a_kernel_variable_is_refused():
    text = RMS.replace("[S]", "[pid]").replace("S,", "pid,").replace("0:S", "0:pid").replace("f32[S]", "f32[pid]")
    p = ir.parse(text)
    with pytest.raises(CodegenError, match="size parameter pid"):
        generate(p, {t.name: symbolic_strides(t.shape) for t in p.tensors}, "interpreter")


# the kernel of the static RMS program, as printed before size parameters reached code generation
STATIC_RMS_KERNEL = """\
import triton
import triton.language as tl


@triton.jit
def flashlight_rms_k0(x_ptr, w_ptr, out0_ptr):
    pid = tl.program_id(0)
    pid_i0 = pid % 1
    pid = pid // 1
    o_i0 = pid_i0 * 16 + tl.arange(0, 16)
    m_i0 = o_i0 < 8
    o_i1 = tl.arange(0, 64)
    v1 = tl.load(x_ptr + (o_i0[:, None]) * 64 + (o_i1[None, :]), mask=m_i0[:, None], other=0)
    v2 = (v1 * v1)
    r_mean_acc = tl.sum(v2, axis=1)
    v3 = (r_mean_acc / 64.0)
    v4 = (v3 + 1e-06)
    v5 = tl.rsqrt(v4)
    v6 = (v1 * v5[:, None])
    v7 = tl.load(w_ptr + (o_i1))
    v8 = (v6 * v7[None, :])
    tl.store(out0_ptr + (o_i0[:, None]) * 64 + (o_i1[None, :]), v8, mask=(m_i0[:, None]))
"""


def test_a_static_program_prints_as_before():
    text = RMS.replace("program rms[S]", "program rms").replace("f32[S,64]", "f32[8,64]") \
        .replace("f32[S]", "f32[8]").replace("0:S", "0:8")
    p, (k,), compiled = compile_once(text)
    assert k.source == STATIC_RMS_KERNEL
    assert k.grid == 1 and not k.sizes and not k.grid_factors
    check(p, compiled, [rnd(8, 64), rnd(64)])
