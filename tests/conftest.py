"""Shared helpers: golden-text comparison and small attention programs."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"


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
    return ((out - ref).norm() / ref.norm()).item()


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
