"""Shared helpers: golden-text comparison and small attention programs."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"


def pytest_configure(config: pytest.Config) -> None:
    """The suite compiles into a cache of its own (unless one is named): a cache kept from an
    earlier run on the same machine would serve programs that a test expects to be compiled."""
    if not os.environ.get("FLASHLIGHT_CACHE_DIR"):
        os.environ["FLASHLIGHT_CACHE_DIR"] = tempfile.mkdtemp(prefix="flashlight-tests-")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test starts with no size history: Dynamo remembers the sizes a function was compiled
    at by its source location, across compiled instances (automatic dynamic shapes), so a test
    would otherwise get a program with size parameters because an earlier test used other shapes."""
    torch._dynamo.reset()
    yield


def check_golden(name: str, text: str) -> None:
    """Compare ``text`` with ``tests/golden/<name>.txt``; FLASHLIGHT_UPDATE_GOLDEN=1 rewrites it."""
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("FLASHLIGHT_UPDATE_GOLDEN") or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        if not os.environ.get("FLASHLIGHT_UPDATE_GOLDEN"):
            pytest.fail(f"golden file {path.name} did not exist; written now, check it in")
    assert text + "\n" == path.read_text(), f"output differs from golden file {path.name}"


def relerr(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def attention(q, k, v):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(s, dim=-1) @ v


def causal_attention(q, k, v):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    i = torch.arange(q.shape[-2])[:, None]
    j = torch.arange(k.shape[-2])[None, :]
    s = s.masked_fill(j > i, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def qkv(B=2, H=3, Sq=7, Sk=5, D=4, Dv=None, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Sq, D, generator=g).to(dtype)
    k = torch.randn(B, H, Sk, D, generator=g).to(dtype)
    v = torch.randn(B, H, Sk, Dv or D, generator=g).to(dtype)
    return q, k, v


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += record.getMessage() + "\n"


def warnings_of(run) -> str:
    """The warnings flashlight logs while ``run()`` runs (pytest's log capture may be off)."""
    handler = _Records()
    logger = logging.getLogger("flashlight")
    logger.addHandler(handler)
    try:
        run()
    finally:
        logger.removeHandler(handler)
    return handler.text


def _tensors(x) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for y in x for t in _tensors(y)]
    if hasattr(x, "values") and callable(x.values):  # dicts and model outputs
        return [t for y in x.values() for t in _tensors(y)]
    return []


def _cotangent(t: torch.Tensor) -> torch.Tensor:
    """A fixed, generic direction: ``sum(out**2)`` would give zero gradients through a norm."""
    return torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.7 + 0.3).reshape(t.shape).to(t.dtype)


def check_against_eager(fn, *args, module: torch.nn.Module | None = None, tol: float = 1e-4,
                        compiled=None) -> None:
    """``fn`` compiled matches eager on ``args``: every output, and the gradients of every
    floating-point input and of ``module``'s parameters, for a generic cotangent (relative
    error below ``tol``)."""
    import flashlight

    compiled = compiled if compiled is not None else flashlight.compile(fn)
    params = [p for p in module.parameters() if p.requires_grad] if module is not None else []

    def run(f):
        xs = [a.detach().clone().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a
              for a in args]
        for p in params:
            p.grad = None
        outs = [o for o in _tensors(f(*xs)) if o.is_floating_point()]
        diff = [o for o in outs if o.requires_grad]
        if diff:
            torch.autograd.backward(diff, [_cotangent(o) for o in diff])
        grads = [x.grad for x in xs if isinstance(x, torch.Tensor) and x.requires_grad] + [p.grad for p in params]
        return outs, grads

    got, got_grads = run(compiled)
    ref, ref_grads = run(fn)
    assert len(got) == len(ref)
    for k, (a, b) in enumerate(zip(got, ref)):
        assert a.shape == b.shape and a.dtype == b.dtype, (k, a.shape, b.shape, a.dtype, b.dtype)
        assert torch.equal(a.isnan(), b.isnan()), f"output {k}: NaN where eager has none, or the other way"
        if b.numel():
            assert relerr(a.nan_to_num(), b.nan_to_num()) < tol, (k, relerr(a.nan_to_num(), b.nan_to_num()))
    for k, (a, b) in enumerate(zip(got_grads, ref_grads)):
        assert (a is None) == (b is None), f"gradient {k}: {a is None} vs eager {b is None}"
        if b is not None and b.numel():
            assert torch.equal(a.isnan(), b.isnan()), f"gradient {k}: NaN where eager has none, or the other way"
            assert relerr(a.nan_to_num(), b.nan_to_num()) < tol, (k, relerr(a.nan_to_num(), b.nan_to_num()))
