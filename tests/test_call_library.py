"""call-library (not in the default pipeline): a kernel that is a plain matrix product runs as
``torch.matmul`` on strided views (cuBLAS on the GPU, the CPU's BLAS here); a kernel where the
passes fused anything into the product stays generated."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import flashlight
from flashlight.passes.declare import DEFAULT_PIPELINE

from conftest import check_against_eager, relerr

PIPELINE = DEFAULT_PIPELINE + ",call-library"


def _library_kernels(ex: flashlight.Explanation) -> list:
    return [k for k in ex.kernels if "torch.matmul" in k.source]


def _explain(fn, *args, **options):
    return flashlight.explain(fn, *args, options=flashlight.Options(pipeline=PIPELINE, **options))


def test_a_projection_is_one_library_call():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 96, generator=g), torch.randn(128, 96, generator=g)
    ex = _explain(lambda x, w: x @ w.T, x, w)
    assert len(ex.kernels) == 1 and _library_kernels(ex), ex.kernels[0].source
    assert "library matmul" in ex.kernels[0].computes
    assert any(p.transformation.endswith("as library matmul") and p.legal for p in ex.proofs)
    got = flashlight.compile(lambda x, w: x @ w.T, pipeline=PIPELINE)(x, w)
    assert relerr(got, x @ w.T) < 1e-6


def test_a_batched_product_broadcast_over_heads_and_transposed():
    g = torch.Generator().manual_seed(1)
    b, c = torch.randn(2, 4, 64, 32, generator=g), torch.randn(2, 1, 48, 32, generator=g)

    def fn(b, c):
        return torch.matmul(b, c.transpose(-1, -2))
    ex = _explain(fn, b, c)
    (kernel,) = _library_kernels(ex)
    assert "(1536, 0, 1, 32)" in kernel.source  # c read transposed, with a stride of 0 over the heads
    assert relerr(flashlight.compile(fn, pipeline=PIPELINE)(b, c), fn(b, c)) < 1e-6


def test_fused_kernels_stay_generated():
    """Attention's kernel (an online softmax around two products) and an MLP's second projection
    (it reads gelu of the first) are fusions: generated. The first projection, stored for the
    second (it reduces over a loop longer than a block, block_limit=64), is a plain product."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 80, 16, generator=g) for _ in range(3))

    def attention(q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16), -1) @ v
    assert not _library_kernels(_explain(attention, q, k, v))

    def mlp(x, w1, w2):
        return F.gelu(x @ w1.T) @ w2.T
    x, w1, w2 = torch.randn(256, 80, generator=g), torch.randn(512, 80, generator=g), torch.randn(96, 512, generator=g)
    ex = _explain(mlp, x, w1, w2, block_limit=64)
    assert len(_library_kernels(ex)) == 1 and len(ex.kernels) == 2, [k.computes for k in ex.kernels]
    got = flashlight.compile(mlp, pipeline=PIPELINE, block_limit=64)(x, w1, w2)
    assert relerr(got, mlp(x, w1, w2)) < 1e-5


def test_a_linear_layer_trains_with_library_products():
    """The backward's products (dX = dY W, dW = dYᵀ X) are plain too: gradients as eager's."""
    torch.manual_seed(3)
    layer = torch.nn.Linear(48, 80, bias=False)
    x = torch.randn(32, 48)
    compiled = flashlight.compile(layer, pipeline=PIPELINE)
    check_against_eager(layer, x, module=layer, compiled=compiled)
    ex = flashlight.explain(layer, x.requires_grad_(), options=flashlight.Options(pipeline=PIPELINE))
    assert _library_kernels(ex) and _library_kernels(ex.backward), ex.backward.kernels


def test_the_mark_prints_and_parses_back():
    from flashlight.ir import format_program, parse

    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(64, 96, generator=g), torch.randn(128, 96, generator=g)
    final = _explain(lambda x, w: x @ w.T, x, w).programs[0]
    text = format_program(final)
    assert "as library matmul" in text
    assert format_program(parse(text)) == text
