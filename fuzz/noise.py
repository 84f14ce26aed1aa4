"""Eager's own rounding noise, measured by Monte-Carlo arithmetic (:func:`eager_noise`).

A value outside the comparison's tolerance is no bug if eager is as far from the truth (an
ill-conditioned output): :func:`eager_noise` re-runs the program with each rounding perturbed,
and the spread of those runs around eager is how far any evaluation may be. Also
:func:`widen`, which the float64 reference uses too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .nested import flat
from .quiet import quiet

# Monte-Carlo rounding of eager (:func:`eager_noise`): how many runs, and how far beyond eager's
# noise an error is still rounding. Runs: an element that depends on a few roundings, each of which
# moves it with probability about 1/2, keeps a spread of exactly 0 in a few runs by chance (seed
# 53511, ours off by an ulp of values in [64, 128): some such element had no spread in 76% of 4-run
# sets, 2.5% of 8-run sets, none of 16). Factor: a run perturbs each rounding by up to one ulp, uniform, about twice
# round-to-nearest's spread, and 16 runs reach about 2 of their standard deviations, yet a sum or
# a matmul is perturbed once where any evaluation rounds once per addend, in its own order (ours:
# tiled, fused, reassociated): 4x covers that. The two false positives this was made for (and their
# minimized reproducers) come out within 0.9x; real bugs are far beyond: a 3e-4 error (relative to the output's scale)
# injected into one element of each of 659 outputs (seeds 0-699) is caught in every one.
NOISE_RUNS = 16
NOISE_FACTOR = 4.0

# Composite ops whose internals round more than once (a mean, a variance, a max-subtracted sum of
# exps): :func:`eager_noise` runs them as their decompositions so that each step is perturbed.
_COMPOSITE = {"_softmax", "_log_softmax", "_safe_softmax", "logsumexp", "native_layer_norm", "native_group_norm",
              "native_batch_norm", "_native_batch_norm_legit_no_training", "var_mean", "std", "std_mean", "mean",
              "linalg_vector_norm", "gelu", "silu", "addmm", "baddbmm", "logaddexp"}
# Ops whose float results are some of their inputs' values (moved, selected, compared) or exact
# constants: they do not round.
_EXACT = {"_to_copy", "to", "convert_element_type", "clone", "copy", "copy_", "contiguous", "alias", "detach",
          "lift_fresh", "lift_fresh_copy", "_unsafe_view", "view", "reshape", "expand", "broadcast_in_dim", "permute",
          "transpose", "t", "squeeze", "unsqueeze", "slice", "select", "split", "split_with_sizes", "chunk", "unbind",
          "real", "cat", "stack", "flip", "roll", "repeat", "constant_pad_nd", "gather", "index", "index_select",
          "embedding", "masked_fill", "where", "tril", "triu", "maximum", "minimum", "amax", "amin", "max", "min",
          "clamp", "clamp_min", "clamp_max", "relu", "abs", "neg", "sign", "floor", "ceil", "round", "trunc", "sort",
          "topk", "fill", "full", "full_like", "zeros", "zeros_like", "ones", "ones_like", "empty", "empty_like",
          "scalar_tensor", "arange", "iota"}


def _rounds(func: Any, args: tuple, out: Any) -> bool:
    """Whether ``func`` rounds its floating-point result (as opposed to moving values around). A
    cast rounds when it narrows."""
    name = func.overloadpacket.__name__
    tensors = [a for a in flat(list(args)) if isinstance(a, torch.Tensor)]
    if name in ("_to_copy", "to", "convert_element_type") and tensors and isinstance(out, torch.Tensor):
        src = tensors[0]
        return (src.is_floating_point() and out.is_floating_point()
                and torch.finfo(out.dtype).eps > torch.finfo(src.dtype).eps)
    return bool(tensors) and not func.is_view and name not in _EXACT


def widen(a: Any) -> Any:
    """A floating-point tensor or dtype in float64; anything else as it is."""
    if isinstance(a, torch.Tensor) and a.is_floating_point():
        return a.double()
    return torch.float64 if isinstance(a, torch.dtype) and a.is_floating_point else a


def eager_noise(prog: Callable, inputs: tuple, runs: int = NOISE_RUNS) -> list:
    """``prog(*inputs)`` ``runs`` times, each time with every floating-point result that an op
    rounded multiplied by ``1 + u * eps`` (``u`` uniform in [-1, 1], ``eps`` its dtype's ulp at 1,
    seeded: deterministic), composite ops (:data:`_COMPOSITE`) run as their decompositions so that
    their internal steps are perturbed too (a layer_norm's mean). Monte-Carlo arithmetic (Parker,
    1997; random rounding: a result that the same op in float64 gives exactly was not rounded and
    is left alone, so -10000 * -1.5 stays 15000). The spread of these runs around eager is eager's
    own rounding noise, elementwise, also where eager happens to be exact (equal rows minus their
    mean give exactly 0, while an equally valid rounding of one row gives ``eps * |row|``).
    ``[]`` if a run raises."""
    from torch._decomp import decomposition_table
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

    class Perturb(TorchDispatchMode):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.gen = torch.Generator().manual_seed(seed)

        def jitter(self, t: Any, wide: Any) -> Any:
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or not t.numel():
                return t
            u = torch.rand(t.shape, generator=self.gen, dtype=torch.float64) * 2 - 1
            moved = (t.double() * (1 + u * torch.finfo(t.dtype).eps)).to(t.dtype)
            if isinstance(wide, torch.Tensor) and wide.shape == t.shape:
                return torch.where(t.double() == wide.double(), t, moved)
            return moved

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket.__name__ in _COMPOSITE and func in decomposition_table:
                with self:  # the decomposition's ops come back here, to be perturbed
                    out = decomposition_table[func](*args, **kwargs)
                if out is not NotImplemented:
                    return out
            out = func(*args, **kwargs)
            if not _rounds(func, args, out):
                return out
            outs, spec = tree_flatten(out)
            try:  # the op in float64: where it gives the same value, nothing was rounded
                wides = tree_flatten(func(*tree_map(widen, args), **tree_map(widen, kwargs)))[0]
            except Exception:
                wides = []
            if len(wides) != len(outs):
                wides = [None] * len(outs)
            return tree_unflatten([self.jitter(t, w) for t, w in zip(outs, wides)], spec)

    results = []
    for k in range(runs):
        try:
            with quiet(), Perturb(k):
                results.append(prog(*[x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]))
        except Exception:
            return []
    return results
