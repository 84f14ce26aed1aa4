"""The API as a PyTorch user meets it: Dynamo capture, guards, the backend entry point,
gradients, debug dumps and errors."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import torch

import flashlight

from conftest import relerr, warnings_of


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_three_shapes_compile_three_variants_and_reuse_them():
    f = flashlight.compile(lambda x: torch.softmax(x * 2, dim=-1))
    shapes = [(3, 40), (5, 17), (2, 3, 9)]
    for s in shapes + shapes:
        x = _x(*s)
        assert relerr(f(x), torch.softmax(x * 2, dim=-1)) < 1e-5
    assert len(f.graphs) == 3, "one compiled variant per shape, reused on the second round"


def test_graph_breaks_kwargs_scalars_and_structured_outputs():
    def fn(x, y, *, scale=2.0, mode="sum"):
        z = torch.exp(x) * scale
        if z.sum() > 0:  # data-dependent Python control flow: a graph break
            z = z + y
        print("", end="")  # another graph break
        out = {"total": z.sum(-1) if mode == "sum" else z.amax(-1), "parts": [z * 2, torch.tanh(y)]}
        return out, (z.mean(), 3)

    f = flashlight.compile(fn)
    x, y = _x(4, 20), _x(4, 20, seed=1)
    got, ref = f(x, y, scale=0.5, mode="max"), fn(x, y, scale=0.5, mode="max")
    assert set(got[0]) == {"total", "parts"} and got[1][1] == 3
    for a, b in [(got[0]["total"], ref[0]["total"]), (got[0]["parts"][0], ref[0]["parts"][0]),
                 (got[0]["parts"][1], ref[0]["parts"][1]), (got[1][0], ref[1][0])]:
        assert relerr(a, b) < 1e-5
    assert len(f.graphs) >= 2, "the graph breaks give several compiled graphs"


def test_in_place_ops_in_user_code():
    def fn(x):
        y = x.clone()
        y.mul_(3).add_(1)
        y[:, 0] = 0.0
        return torch.softmax(y, -1)

    x = _x(6, 11)
    assert relerr(flashlight.compile(fn)(x), fn(x)) < 1e-5


def test_gradients_are_eager_gradients():
    def fn(q, k, v):
        return (torch.softmax(q @ k.transpose(-2, -1) * 0.3, -1) @ v).square().sum()

    args = [_x(2, 9, 8, seed=s).requires_grad_() for s in range(3)]
    ref_args = [a.detach().clone().requires_grad_() for a in args]
    flashlight.compile(fn)(*args).backward()
    fn(*ref_args).backward()
    for a, b in zip(args, ref_args):
        assert relerr(a.grad, b.grad) < 1e-5


def test_wrong_argument_count_raises_like_eager():
    f = flashlight.compile(lambda x, y: x + y)
    with pytest.raises(TypeError):
        f(_x(3))


def test_inputs_on_different_devices_are_refused_clearly():
    f = flashlight.compile(lambda x, y: x + y)
    with pytest.raises(ValueError, match="different devices"):
        f(_x(3), torch.empty(3, device="meta"))


def test_decorator_with_options():
    @flashlight.compile(block_m=32, block_n=32)
    def fn(x):
        return torch.softmax(x, -1)

    x = _x(70, 300)
    assert relerr(fn(x), torch.softmax(x, -1)) < 1e-5


def test_debug_dump(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLIGHT_DEBUG_DIR", str(tmp_path))
    f = flashlight.compile(lambda x: torch.softmax(x, -1) * 2)
    f(_x(5, 300))
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    names = sorted(p.name for p in run.iterdir())
    assert "decisions.txt" in names and "fallbacks.txt" in names
    assert any(n.endswith("_lifted.ir") for n in names) and any(n.endswith("_tile-ranges.ir") for n in names)
    assert any(n.startswith("flashlight_") and n.endswith(".py") for n in names), names


def test_torch_compile_backend_in_a_fresh_process():
    code = textwrap.dedent("""
        import torch
        def fn(x):
            return torch.softmax(x * 3, dim=-1).sum(0)
        x = torch.randn(6, 50)
        f = torch.compile(fn, backend="flashlight")
        assert torch.allclose(f(x), fn(x), rtol=1e-5, atol=1e-6)
        import flashlight.backend  # it was loaded through the entry point
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_import_flashlight_registers_the_backend_without_an_installed_entry_point():
    """A checkout on ``PYTHONPATH`` has no installed metadata, so no entry point: ``import
    flashlight`` registers the name (run 22's whole-model benchmark got ``InvalidBackend``)."""
    code = textwrap.dedent("""
        import torch
        from torch._dynamo.backends import registry
        registry._discover_entrypoint_backends = lambda: None  # as without installed metadata
        import flashlight
        def fn(x):
            return torch.softmax(x * 3, dim=-1).sum(0)
        x = torch.randn(6, 50)
        f = torch.compile(fn, backend="flashlight")
        assert torch.allclose(f(x), fn(x), rtol=1e-5, atol=1e-6)
        assert "flashlight" in torch._dynamo.list_backends()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


@pytest.mark.parametrize("options,message", [
    ({"pipeline": "inline,bogus"}, "unknown pass 'bogus'; known passes: inline,"),
    ({"block_m": 0}, "block_m=0 is not a positive power of two"),
    ({"block_n": 48}, "block_n=48 is not a positive power of two"),
    ({"num_stages": -1}, "num_stages=-1 is not a positive integer"),
    ({"blockm": 64}, "unknown option blockm; valid options: block_m, block_n,"),
])
def test_invalid_options_raise_at_compile_time(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        flashlight.compile(lambda x: x * 2, **options)
    # through torch.compile the backend first sees its options when Dynamo hands it a graph
    with pytest.raises(Exception, match=re.escape(message)):
        torch.compile(lambda x: x * 2, backend="flashlight", options=options)(_x(3))


@pytest.mark.parametrize("fn,args", [
    (lambda a, b: a @ b, ((3, 4), (5, 6))),
    (lambda a, b: a + b, ((3, 4), (5, 6))),
    (lambda a, b: torch.cat([a, b], 1), ((3, 4), (5, 6))),
    (lambda a, b: a[:, None, :, None] + b, ((64,), (1,))),
], ids=["matmul", "add", "cat", "index"])
def test_user_errors_are_eagers_errors(fn, args):
    xs = [_x(*s) for s in args]
    with pytest.raises(Exception) as eager:
        fn(*xs)
    with pytest.raises(Exception) as ours:
        flashlight.compile(fn)(*xs)
    assert type(ours.value) is type(eager.value) and str(ours.value) == str(eager.value)
    assert "Dynamo" not in str(ours.value) and "fake" not in str(ours.value)
    with pytest.raises(type(eager.value)) as explained:  # explain and trace raise it too
        flashlight.explain(fn, *xs)
    assert str(explained.value) == str(eager.value)


def test_the_recompile_limit_is_said_once():
    f = flashlight.compile(lambda x: torch.softmax(x, -1), dynamic=False)  # a compilation per shape
    limit = torch._dynamo.config.recompile_limit
    for n in range(1, limit + 1):
        f(_x(n, 5))
    text = warnings_of(lambda: [torch.testing.assert_close(f(_x(n, 5)), torch.softmax(_x(n, 5), -1))
                                for n in range(limit + 1, limit + 4)])
    assert text.count("recompile limit") == 1 and "run in eager PyTorch" in text
    # the flag that makes Dynamo raise at its limit is flashlight's during its calls only
    assert torch._dynamo.config.fail_on_recompile_limit_hit is False
    g = torch.compile(lambda x: x + 1, dynamic=False)  # the user's own: Dynamo's eager past the limit
    assert [g(_x(n, 2)).shape[0] for n in range(1, limit + 3)] == list(range(1, limit + 3))


def test_ops_without_a_lifting_rule_are_said_once_per_compilation():
    def fn(x):
        return torch.cumprod(x, -1) * 2

    f = flashlight.compile(fn)
    text = warnings_of(lambda: [f(_x(4, 5)) for _ in range(3)])
    assert text.count("run") == 1 and "cumprod" in text, text


def test_explain_reads_top_down():
    """A screen of summary (kernels with what they compute, buffers, saved tensors, fallbacks, one
    line per decision); the IR of every pass and the kernels' source only in ``full()``."""
    from conftest import attention, qkv

    q, k, v = qkv(2, 3, 77, 93, 16)
    ex = flashlight.explain(attention, q, k, v)
    text = str(ex).splitlines()
    assert text[0] == "== flashlight explain: attention ==" and text[1].startswith("1 kernel, 0 buffers")
    (line,) = [t for t in text if t.startswith("flashlight_attention_k0:")]
    assert "loops over tiles of i3:93/64" in line and "sum_1 (+ online)" in line and line.endswith("writes out0")
    assert len(text) < 34 and "@triton.jit" not in str(ex) and "-- lifted --" not in str(ex)
    decisions = text[text.index("-- legality decisions --") + 1:]
    assert sum(t.startswith(("[legal  ]", "[refused]")) for t in decisions) == len(ex.proofs)
    full = ex.full()
    assert full.startswith(str(ex)) and "-- lifted --" in full and "@triton.jit" in full and "witness:" in full

    x = _x(4, 5).requires_grad_()
    saved = flashlight.explain(lambda x: torch.softmax(x, -1) * 2, x).saved
    # the input and the row max and sum; the probabilities are recomputed from them
    assert [(s.shape, s.dtype) for s in saved] == [((4, 5), "f32"), ((4, 1), "f32"), ((4, 1), "f32")], saved
    assert saved[0].why == "an input of the graph" and saved[1].why.startswith("a row statistic")


def test_counters_say_what_compiled_and_what_ran_eagerly(tmp_path, monkeypatch):
    """``programs_compiled`` counts pipeline runs (not disk-cache hits), ``eager_calls`` the calls
    that ran entirely in eager PyTorch."""
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    flashlight.counters.clear()
    f = flashlight.compile(lambda x: torch.softmax(x * 2, -1))
    f(_x(3, 5))
    f(_x(3, 5))  # the same shape: nothing new
    assert flashlight.counters["programs_compiled"] == 1
    f(_x(4, 5))
    assert flashlight.counters["programs_compiled"] == 2
    g = flashlight.compile(lambda x: torch.softmax(x * 2, -1))  # a new function, the same programs
    g(_x(3, 5))
    assert flashlight.counters["programs_compiled"] == 2, "the disk cache served it"
    assert flashlight.counters["eager_calls"] == 0
    limit = torch._dynamo.config.recompile_limit
    for n in range(5, 5 + limit + 1):  # the program compiled at the second shape serves them all
        torch.testing.assert_close(f(_x(n, 5)), torch.softmax(_x(n, 5) * 2, -1))
    assert flashlight.counters["programs_compiled"] == 2 and flashlight.counters["eager_calls"] == 0
    static = flashlight.compile(lambda x: torch.softmax(x * 3, -1), dynamic=False)
    for n in range(5, 5 + limit + 3):
        torch.testing.assert_close(static(_x(n, 5)), torch.softmax(_x(n, 5) * 3, -1))
    assert flashlight.counters["eager_calls"] == 3, "the shapes past the recompile limit ran eagerly"
