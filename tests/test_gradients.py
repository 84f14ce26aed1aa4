"""Gradients through compiled forwards: every tensor a compiled forward hands to a backward (the
saved statistics of a norm, a loss's total weight, pooling indices) must be eager's, or the
gradient is silently wrong. Each op whose decomposition returns such auxiliary outputs is here,
inside a program, with its gradients compared with eager's (inputs and parameters)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import check_against_eager

X_SHAPE = (4, 6, 10)


def _case(module, make):
    return module, make


CASES = {
    "layer_norm": _case(nn.LayerNorm(10), lambda m: lambda x: m(x)),
    "group_norm": _case(nn.GroupNorm(2, 6), lambda m: lambda x: m(x)),
    "rms_norm": _case(nn.RMSNorm(10), lambda m: lambda x: m(x)),
    "batch_norm_train": _case(nn.BatchNorm1d(6), lambda m: lambda x: m(x)),
    "weight_norm": _case(nn.utils.parametrizations.weight_norm(nn.Linear(10, 5)), lambda m: lambda x: m(x)),
    "log_sigmoid": _case(None, lambda m: lambda x: F.logsigmoid(x) * 2),
    "cross_entropy": _case(None, lambda m: lambda x: F.cross_entropy(x.reshape(-1, 10), torch.arange(24) % 10)),
    "nll_sum": _case(None, lambda m: lambda x: F.nll_loss(F.log_softmax(x.reshape(-1, 10), -1), torch.arange(24) % 10,
                                                           reduction="sum")),
    "var_mean": _case(None, lambda m: lambda x: torch.var_mean(x, -1)[0] * torch.var_mean(x, -1)[1]),
    "std_mean": _case(None, lambda m: lambda x: torch.std_mean(x, 1)[0] + torch.std_mean(x, 1)[1]),
    "aminmax": _case(None, lambda m: lambda x: torch.aminmax(x, dim=-1)[0] - torch.aminmax(x, dim=-1)[1]),
    "max_pool1d": _case(None, lambda m: lambda x: F.max_pool1d(x, 2)),
    "gelu_tanh": _case(None, lambda m: lambda x: F.gelu(x, approximate="tanh")),
    "silu_times_input": _case(None, lambda m: lambda x: F.silu(x) * x),
    # the gradient of an embedding is a scatter-add into its table (index_put with accumulate)
    "embedding": _case(nn.Embedding(13, 10, padding_idx=2),
                       lambda m: lambda x: m((x[..., :3].abs() * 4).long() % 13) * x[..., :1, None]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_match_eager(name):
    module, make = CASES[name]
    x = torch.randn(*X_SHAPE, generator=torch.Generator().manual_seed(1))
    check_against_eager(make(module), x, module=module)
