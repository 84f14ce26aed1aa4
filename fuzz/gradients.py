"""Gradients in the check: when some input requires grad, the compiled function's backward is
compared too. :func:`with_grads` runs a function and one backward of a fixed cotangent
(:func:`cotangent`) and returns the outputs with the inputs' gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .nested import flat


def cotangent(t: torch.Tensor) -> torch.Tensor:
    """The direction the gradient check pulls back through an output: ``sin(0.7 k + 0.3)`` over its
    elements in order, rounded to a multiple of 1/64 (exact in every float dtype: the float64
    reference and the perturbed runs pull back the same one). Fixed and generic: ``sum(out**2)``
    would give identically zero gradients through a normalization."""
    c = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.7 + 0.3)
    return (torch.round(c * 64) / 64).reshape(t.shape).to(t.dtype)


def wants_grad(inputs: Any) -> bool:
    """Whether some input requires grad: then the check compares gradients too."""
    return any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs)


def _detached(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (tuple, list)):
        return type(x)(_detached(e) for e in x)
    return x


def with_grads(fn: Callable) -> Callable:
    """``fn`` and its backward: a function of the same inputs that returns ``(outputs, grads)``,
    ``grads`` the ``.grad`` of each input that requires grad, in order (``None`` where it got
    none), after one backward of :func:`cotangent` through every floating-point output that
    requires grad. Each call makes fresh leaves (detached copies) of those inputs, so that runs do
    not accumulate into each other; the outputs come back detached."""
    def run(*inputs: Any) -> tuple[Any, tuple]:
        xs = [x.detach().clone().requires_grad_() if isinstance(x, torch.Tensor) and x.requires_grad else x
              for x in inputs]
        out = fn(*xs)
        diff = [o for o in flat(out) if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad]
        if diff:
            torch.autograd.backward(diff, [cotangent(o) for o in diff])
        return _detached(out), tuple(x.grad for x in xs if isinstance(x, torch.Tensor) and x.requires_grad)
    return run
