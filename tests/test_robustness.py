"""Hostile inputs, numerics and the cache: every case behaves as eager PyTorch does."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
from dataclasses import replace

import pytest
import torch

import flashlight

from conftest import warnings_of

INF, NAN = float("inf"), float("nan")


def _same(fn, *args, rtol=1e-5, atol=1e-6):
    f = flashlight.compile(fn)
    out, ref = f(*args), fn(*args)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol, equal_nan=True)
    return f


def _r(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", ["empty_rows", "empty_reduction", "empty_softmax"])
def test_zero_size_dimensions(case):
    fn, x = {"empty_rows": (lambda x: x.sum(-1) * 2, torch.empty(0, 5)),
             "empty_reduction": (lambda x: x.sum(-1) + 1, torch.empty(4, 0)),
             "empty_softmax": (lambda x: torch.softmax(x, -1), torch.empty(0, 7))}[case]
    _same(fn, x)


def _attention(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * 0.3, -1) @ v


@pytest.mark.parametrize("shape", [(1, 2, 0, 8), (1, 2, 5, 0), (0, 2, 5, 8)], ids=["S0", "D0", "B0"])
def test_zero_size_attention_matmul_and_reshape(shape):
    """Empty results run eagerly (nothing to compute); a program never holds an empty tensor."""
    q = _r(*shape)
    _same(_attention, q, q, q)
    _same(lambda q: torch.nn.functional.scaled_dot_product_attention(q, q, q), q)
    _same(lambda a, b: (a @ b) * 2, _r(3, 0), _r(0, 4))  # a sum of nothing: zeros
    _same(lambda x: x.reshape(2, 0, 3) * 2, _r(0, 6))


def test_an_empty_cache_concatenated_with_new_keys_stays_in_the_program():
    """A KV cache of length 0 (what a model library starts decoding with) is dropped by cat: no
    eager split, no fallback."""
    def step(q, k, v, k_cache, v_cache):
        return _attention(q, torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2))

    q, k, v = _r(1, 2, 5, 8), _r(1, 2, 5, 8, seed=1), _r(1, 2, 5, 8, seed=2)
    empty = torch.empty(1, 2, 0, 8)
    ex = flashlight.explain(step, q, k, v, empty, empty)
    assert len(ex.kernels) == 1 and not ex.fallbacks and "k_cache" not in str(ex.programs[0]).splitlines()[0]
    _same(step, q, k, v, empty, empty)


def test_float64_compiles_and_keeps_its_precision():
    def causal(q, k, v):
        i, j = torch.arange(q.shape[-2])[:, None], torch.arange(k.shape[-2])[None, :]
        return torch.softmax((q @ k.transpose(-2, -1) * 0.3).masked_fill(j > i, -INF), -1) @ v

    q, k, v = (_r(1, 2, 19, 8, seed=s).double() for s in range(3))
    for fn in (causal, lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)):
        ex = flashlight.explain(fn, q, k, v)
        assert len(ex.kernels) == 1 and not ex.fallbacks
        src = ex.kernels[0].source
        assert "tl.float32" not in src, "a float64 program computes in float64"
        _same(fn, q, k, v, rtol=1e-12, atol=1e-13)


def test_nan_and_inf_inputs():
    x = torch.tensor([[NAN, 1.0, 2.0, INF], [1.0, -INF, 3.0, 0.5], [-INF, -INF, -INF, -INF]])
    _same(lambda x: torch.exp(x) * 2 + 1, x)
    _same(lambda x: x.amax(-1), x)  # NaN propagates through max, as in torch.amax
    _same(lambda x: x.amin(-1), x)
    _same(lambda x: torch.softmax(x, -1), x)  # a row of -inf gives NaN, as in eager
    _same(lambda x: x.long().amax(-1), torch.tensor([[3.0, -7.0], [2.0, 9.0]]))  # integers: no NaN to carry


def test_max_folds_under_the_interpreter_are_numpy_folds():
    """The interpreter runs a ``tl.reduce`` combine in Python once per element (seed 314580: a
    16x16x16 tile took minutes); its NaN-propagating max and min are numpy's max and a NaN test."""
    x = torch.tensor([[NAN, 1.0, 2.0], [1.0, -INF, 3.0]])
    src = "".join(k.source for k in flashlight.explain(lambda x: x.amax(-1) + x.amin(-1), x).kernels)
    assert "_nanmax(" in src and "_nanmin(" in src and "tl.reduce" not in src
    _same(lambda x: x.amax(-1) + x.amin(-1), x)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded", "offset"])
def test_strided_inputs(layout):
    base = _r(30, 40)
    x = {"transposed": base.t(), "sliced": base[::2, 5:25], "expanded": base[:1].expand(12, 40),
         "offset": base[3:, 2:]}[layout]
    _same(lambda x: torch.softmax(x * 2, -1) + x, x)


def test_mixed_dtypes_follow_promotion():
    _same(lambda x, y: x * y + 1, _r(8, 9).half(), _r(8, 9, seed=1))
    _same(lambda x, y: x + y, torch.randint(-5, 5, (8, 9)), _r(8, 9))


def test_extreme_logits():
    _same(lambda x: torch.softmax(x, -1), _r(4, 300) * 1e4)
    _same(lambda x: torch.softmax(x, -1), _r(4, 300) * 1e-30)
    _same(lambda x: (x * 1000).exp().to(torch.float16), _r(4, 30))  # overflow to inf in float16
    one = lambda x: torch.softmax(x.masked_fill(torch.arange(300) != 5, -INF), -1)  # noqa: E731
    _same(one, _r(4, 300))  # a single unmasked entry per row: exactly 1.0 there


def test_corrupt_cache_entries_are_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    fn = lambda x: torch.softmax(x * 3, -1)  # noqa: E731
    _same(fn, _r(5, 70))
    for f in (tmp_path / "programs").glob("*.json"):
        f.write_text(f.read_text()[:40])  # truncated
    for f in (tmp_path / "kernels").glob("*.py"):
        f.write_text("garbage")
    from flashlight.codegen import launcher

    launcher._loaded.clear()  # as a new process would: nothing loaded yet
    _same(fn, _r(5, 70))
    assert all(json.loads(f.read_text()) for f in (tmp_path / "programs").glob("*.json"))
    assert all("@triton.jit" in f.read_text() for f in (tmp_path / "kernels").glob("*.py"))




def _rms(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * g


def test_kernels_alike_up_to_names_share_one_function():
    """Two norms of two inputs make two kernels alike but for the names of the tensors they read
    (as a model's layers do, once per layer): they load as one function, which Triton compiles
    once, each launched with its own tensors. A kernel that differs in anything else (a constant)
    has a function of its own."""
    from flashlight import passes
    from flashlight.codegen import launcher
    from flashlight.codegen.triton import generate
    from flashlight.runtime import contiguous_strides

    def two_norms(x, y, g1, g2):
        return _rms(x, g1), _rms(y, g2)

    args = (_r(16, 48), _r(16, 48), _r(48), _r(48))
    final = passes.run_pipeline(flashlight.trace(two_norms, *args))
    a, b = generate(final, {t.name: contiguous_strides(t.shape) for t in final.tensors}, "interpreter")
    assert a.name != b.name and a.source != b.source
    assert launcher.canonical_source(a.source, a.name) == launcher.canonical_source(b.source, b.name)
    assert launcher.load(a, interpret=True) is launcher.load(b, interpret=True)
    other = replace(b, source=b.source.replace("1e-06", "1e-05"))
    assert launcher.load(other, interpret=True) is not launcher.load(a, interpret=True)
    f = flashlight.compile(two_norms)
    for got, ref in zip(f(*args), two_norms(*args)):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_cache_directory_warns_and_works(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    tmp_path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        text = warnings_of(lambda: _same(lambda x: torch.tanh(x) * 5 - 1, _r(6, 13)))
    finally:
        tmp_path.chmod(stat.S_IRWXU)
    assert "not writable" in text or "cannot cache" in text


def test_unwritable_cache_path_warns_and_works(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(blocker / "cache"))  # cannot be created, even by root
    text = warnings_of(lambda: _same(lambda x: torch.tanh(x) * 7 - 1, _r(6, 13)))
    assert "not writable" in text and "cannot cache" in text


def test_compiled_function_from_several_threads():
    f = flashlight.compile(lambda x: torch.softmax(x, -1) * 2)
    xs = [_r(7, 50, seed=s) for s in range(6)]
    f(xs[0])  # compiled once, then shared
    results, errors = {}, []

    def work(k):
        try:
            results[k] = f(xs[k])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, x in enumerate(xs):
        torch.testing.assert_close(results[k], torch.softmax(x, -1) * 2)


def test_processes_compiling_the_same_function_at_once(tmp_path):
    code = textwrap.dedent("""
        import torch, flashlight
        fn = lambda x: torch.softmax(x * 2, -1).sum(0)
        x = torch.randn(9, 80)
        assert torch.allclose(flashlight.compile(fn)(x), fn(x), rtol=1e-5, atol=1e-6)
        print("ok")
    """)
    env = dict(os.environ, FLASHLIGHT_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(3)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]


def test_rows_of_minus_infinity_give_nan_like_eager():
    def unnormalised(q, k, v, bias):  # exp(s - max) @ v without the division: NaN rows survive
        s = q @ k.transpose(-2, -1) + bias
        return torch.exp(s - s.amax(-1, keepdim=True)) @ v

    def attention(q, k, v, bias):
        return torch.softmax(q @ k.transpose(-2, -1) + bias, -1) @ v

    q, k, v = _r(2, 70, 16), _r(2, 300, 16, seed=1), _r(2, 300, 16, seed=2)
    bias = torch.zeros(70, 300)
    bias[5] = -INF  # a row with no finite score: eager's softmax of all -inf is NaN
    for fn in (unnormalised, attention):
        f = flashlight.compile(fn)
        out, ref = f(q, k, v, bias), fn(q, k, v, bias)
        assert torch.isnan(ref[:, 5]).all() and torch.isnan(out[:, 5]).all()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_rows_a_mask_after_exp_removes_give_zero_like_eager():
    def banded(q, k, v, bias):  # rows i > Sk hold no unmasked key: eager sums nothing there
        s = q @ k.transpose(-2, -1) + bias
        i, j = torch.arange(s.shape[-2])[:, None], torch.arange(s.shape[-1])[None, :]
        return torch.exp(s - s.amax(-1, keepdim=True)).masked_fill((i - j >= 2) | (j > i), 0.0) @ v

    q, k, v = _r(2, 70, 16), _r(2, 40, 16, seed=1), _r(2, 40, 16, seed=2)
    bias = torch.zeros(70, 40)
    bias[5] = bias[60] = -INF  # row 5 folds exp(-inf - -inf) = NaN; row 60 folds nothing
    out, ref = flashlight.compile(banded)(q, k, v, bias), banded(q, k, v, bias)
    assert torch.isnan(ref[:, 5]).all() and (ref[:, 41:] == 0).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=True)

    def kept(s, keep, v):  # a data-dependent mask: isl cannot tell which rows fold nothing
        return torch.exp(s - s.amax(-1, keepdim=True)).masked_fill(~keep, 0.0) @ v

    s, v, keep = _r(8, 600), _r(600, 16, seed=1), _r(8, 600, seed=2) > 0
    keep[3] = False
    s[3] = s[4] = -INF  # row 3 folds nothing (0), row 4 folds NaN
    out, ref = flashlight.compile(kept)(s, keep, v), kept(s, keep, v)
    assert (ref[3] == 0).all() and torch.isnan(ref[4]).all()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_offsets_into_tensors_past_two_to_the_31_elements_are_64_bit():
    # No CPU test can allocate such tensors; the GPU run is in benchmarks/RESULTS.md. Here: the
    # kernel forms offsets into S (3.2e9 elements) in 64 bits, and those into V (4e8) in 32.
    from flashlight import ir, passes
    from flashlight.codegen.triton import generate
    from flashlight.runtime import contiguous_strides

    n = 200_000_000
    text = f"""\
program softmax_pv(S: f32[16,{n}], V: f32[{n},2]) -> (o: f32[16,2])
  buffer m: f32[16]
  buffer l: f32[16]
  buffer acc: f32[16,2]
  for i in 0:16 parallel
    for j in 0:{n} reduce
      M1: m[i] max= S[i,j]
  for i in 0:16 parallel
    for j in 0:{n} reduce
      L1: l[i] += exp(S[i,j] - m[i])
  for i in 0:16 parallel, d in 0:2 parallel
    for j in 0:{n} reduce
      O1: acc[i,d] += exp(S[i,j] - m[i]) * V[j,d]
  for i in 0:16 parallel, d in 0:2 parallel
    N1: o[i,d] = acc[i,d] / l[i]"""
    # one kernel walking the whole row (split-reductions would give its 16 rows chunks of their own)
    pipeline = passes.DEFAULT_PIPELINE.replace("split-reductions,", "")
    prog = passes.run_pipeline(ir.parse(text), pipeline)
    (kernel,) = generate(prog, {t.name: contiguous_strides(t.shape) for t in prog.tensors})
    src = kernel.source
    s_load = next(line for line in src.splitlines() if "tl.load(S_ptr" in line)
    v_load = next(line for line in src.splitlines() if "tl.load(V_ptr" in line)
    assert s_load.count(".to(tl.int64)") == 2, s_load  # both the row and the column offset
    assert "int64" not in v_load, v_load
    assert "tl.program_id(0).to(tl.int64)" in src
    compile(src, kernel.name, "exec")  # valid Python


def test_a_capture_failure_inside_dynamo_runs_eagerly_with_a_warning():
    from torch._dynamo.exc import InternalTorchDynamoError

    def fn(x):
        return torch.softmax(x, -1)

    def broken(*args, **kwargs):  # as torch 2.11 does for a function whose module cannot be imported
        raise InternalTorchDynamoError("ModuleNotFoundError: No module named 'generated'")

    f = flashlight.compile(fn)
    f._compiled = broken
    x = _r(3, 5)
    text = warnings_of(lambda: torch.testing.assert_close(f(x), fn(x)))
    assert "runs eagerly" in text and "No module named" in f.eager_reason
    torch.testing.assert_close(f(2 * x), fn(2 * x))  # later calls too, without trying Dynamo again


def _long_program(x, y):
    """213 aten ops, 12 of them wheres; every value read two or three times."""
    h = x
    for k in range(60):
        if k % 5 == 0:
            h = torch.where(h > 0.05 * (k % 7), h * 0.9, h * -0.5)
        elif k % 3 == 0:
            h = torch.tanh(h) * 0.5 + h * y
        else:
            h = h - h.mean(-1, keepdim=True) * 0.1
    return torch.softmax(h, -1)


def test_compile_time_is_bounded_on_a_200_op_program():
    """Inlining copies a definition into each read: a chain of values read twice grew
    exponentially and no pass finished. Definitions read by several statements whose copies would
    load more than inline's bound of tensors stay statements; without that bound, those over its
    size bound do."""
    import time

    from flashlight import passes

    x, y = _r(4, 32), _r(4, 32, seed=1)
    unbounded_loads = passes.DEFAULT_PIPELINE.replace("inline,", "inline{max_reads=1000},", 1)
    for pipeline, kept in ((passes.DEFAULT_PIPELINE, "more than 4 tensors"), (unbounded_loads, "more than 400 nodes")):
        started = time.time()
        ex = flashlight.explain(_long_program, x, y, options=flashlight.Options(pipeline=pipeline))
        assert time.time() - started < 60 and not ex.fallbacks
        inline = next(p for p in ex.proofs if p.transformation.startswith("inline"))
        assert "kept" in inline.reason and kept in inline.reason, inline.reason
    _same(_long_program, x, y, rtol=1e-4, atol=1e-5)


def test_a_real_scalar_is_compared_in_the_tensors_dtype():
    """Eager converts a Python real to the comparison's dtype first: ``fp16(x) != 1e-3`` compares
    with fp16(1e-3) = 0.0010004, so a value clamped to 1e-3 in fp16 equals it (fuzz seed 7480580)."""
    def prog(x):
        t = x.clamp(max=1e-3)
        return (t != 1e-3).float() + (t < 1e-3).float() * 2 + (x >= 0.1).float() * 4

    for dt in (torch.float16, torch.bfloat16):
        x = torch.tensor([0.5, 1e-3, 0.0999, 0.1, -1.0]).to(dt)
        torch.testing.assert_close(flashlight.compile(prog)(x), prog(x), rtol=0, atol=0)


def test_a_sum_of_exp_of_the_max_minus_x_repairs_from_the_previous_reference():
    """``Σ exp(max(x) - x)`` separates like softmax's sum, but its rescale is ``exp(m_new -
    m_old)``: from the previous maximum -inf (before the first tile) that is inf, and ``0 * inf``
    was NaN. The repair goes from the previous reference (0 while nothing was folded)."""
    import flashlight

    def reversed_exp(x):
        return torch.exp(x.amax(-1, keepdim=True) - x).sum(-1)

    from conftest import check_against_eager

    for shift in (0.0, 100.0):
        x = torch.randn(2, 300, generator=torch.Generator().manual_seed(2)) + shift
        got, want = flashlight.compile(reversed_exp)(x), reversed_exp(x)
        assert torch.isfinite(got).all() and torch.allclose(got, want, rtol=1e-5)
        check_against_eager(reversed_exp, x, tol=1e-5)  # and its gradient
