"""Eager against compiled, for one program: eager's reference results and :func:`check_results`.

:func:`reference` runs the program eagerly (with its gradients, :func:`with_grads`, if an input
requires grad), noting the narrowest float dtype it computes in (:func:`eager_with_dtypes`), and
again on float64 inputs (:func:`reference64`): what the comparison (``comparison.py``) measures
errors against. :func:`check_program` is the whole check, which the reproducers in
``fuzz/corpus`` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .comparison import Mismatch, compare
from .gradients import wants_grad, with_grads
from .nested import flat
from .noise import eager_noise, widen
from .quiet import quiet


def _ref64_inputs(inputs: tuple) -> tuple:
    """The floating-point inputs in float64, the others as they are."""
    return tuple(widen(x) for x in inputs)


def _truncates(func: Any, args: tuple, out: Any) -> bool:
    """A cast of a float tensor to an integer dtype (``.long()``, ``.int()``, ``.to(torch.int32)``)."""
    return (func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.to) and bool(args)
            and isinstance(args[0], torch.Tensor) and args[0].is_floating_point() and isinstance(out, torch.Tensor)
            and not out.dtype.is_floating_point and not out.dtype.is_complex and out.dtype != torch.bool)


def eager_with_dtypes(prog: Callable, inputs: tuple, casts: list[torch.Tensor] | None = None
                      ) -> tuple[Any, torch.dtype | None]:
    """``prog(*inputs)`` and the narrowest float dtype among its inputs and op results. ``casts``,
    if given, receives the float source of each float-to-integer cast, in program order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[torch.dtype] = {x.dtype for x in inputs if isinstance(x, torch.Tensor)}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in flat(out):
                if isinstance(t, torch.Tensor):
                    seen.add(t.dtype)
            if casts is not None and _truncates(func, args, out):
                casts.append(args[0].detach().double())
            return out

    with Record():
        out = prog(*inputs)
    floats = [d for d in (torch.bfloat16, torch.float16) if d in seen]
    return out, (floats[0] if floats else None)


def reference64(prog: Callable, inputs: tuple, casts32: list[torch.Tensor]) -> tuple[Any, tuple]:
    """``prog`` on float64 inputs, and the same twice more with the source of each float-to-integer
    cast moved down, then up, by eager's largest error on that source (``casts32``, from
    :func:`eager_with_dtypes`). A float that lies within rounding noise of an integer truncates
    either way in float32 (a sum of -10000-masked log_softmax values, 0.08 from an integer while
    eager is 0.14 off elsewhere): where the flipped references differ, no integer is right.
    ``(None, ())`` if the program fails on float64."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shift(TorchDispatchMode):
        def __init__(self, sign: float) -> None:
            super().__init__()
            self.sign, self.k = sign, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not _truncates(func, args, out):
                return out
            src, k = args[0], self.k
            self.k += 1
            if k >= len(casts32) or casts32[k].shape != src.shape or not casts32[k].numel():
                return out
            err = (casts32[k] - src.double()).abs().nan_to_num(0.0, 0.0, 0.0).max()
            return func(src + self.sign * err.to(src.dtype), *args[1:], **(kwargs or {}))

    class Widen(TorchDispatchMode):
        """Casts to a narrower float cast to float64: the program's own ``.to(torch.bfloat16)``
        would round (and SDPA refuses a bfloat16 mask beside float64 queries: seed 5501272)."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") in _NARROWER_FLOATS:
                kwargs["dtype"] = torch.float64
            return func(*args, **kwargs)

    inputs64 = _ref64_inputs(inputs)
    try:
        with Widen():
            ref64 = prog(*inputs64)
    except Exception:
        return None, ()
    flipped = []
    for sign in (-1.0, 1.0) if casts32 else ():
        with Widen(), Shift(sign):
            flipped.append(prog(*inputs64))
    return ref64, tuple(flipped)


_NARROWER_FLOATS = (torch.float32, torch.float16, torch.bfloat16)

def fallbacks_of(f: Any) -> list[tuple[str, str]]:
    """The segments of a compiled function that ran in eager PyTorch, with the reasons (the whole
    function first, if nothing was compiled)."""
    whole = [("function", f.eager_reason)] if getattr(f, "eager_reason", None) else []
    return whole + [x for g in getattr(f, "graphs", []) for x in g.fallbacks]


@dataclass
class Reference:
    """What the compiled function must give: eager's results (of ``fn``: the program, or with
    :func:`with_grads` its outputs and gradients) and what excuses rounding."""
    fn: Callable
    ref: Any
    narrowest: torch.dtype | None
    ref64: Any
    flipped: tuple
    saved: list          # copies of the inputs
    labels: list[str] | None  # names of the flattened results in messages

    @property
    def grad(self) -> bool:
        return self.labels is not None


def reference(prog: Callable, inputs: tuple) -> Reference:
    """Eager's results for :func:`check_results`; raises what eager raises."""
    grad = wants_grad(inputs)
    fn = with_grads(prog) if grad else prog
    casts: list[torch.Tensor] = []
    with quiet():
        ref, narrowest = eager_with_dtypes(fn, inputs, casts)
    with quiet():
        ref64, flipped = reference64(fn, inputs, casts)
    saved = [x.detach().clone().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x for x in inputs]
    labels = None
    if grad:
        labels = [f"output {k}" for k in range(len(flat(ref[0])))] + \
            [f"gradient of input {k}" for k, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.requires_grad]
    return Reference(fn, ref, narrowest, ref64, flipped, saved, labels)


def check_results(out: Any, r: Reference, inputs: tuple) -> None:
    """Raise :class:`Mismatch` unless the compiled function's ``out`` (with gradients if ``r.grad``)
    is eager's, and the inputs are as they were."""
    if r.grad:
        n = len(flat(r.ref[0]))
        for what, a, b in zip(r.labels[n:], out[1], r.ref[1]):
            if (a is None) != (b is None):
                raise Mismatch(f"{what}: {'none' if a is None else 'a gradient'}, eager gives "
                               f"{'none' if b is None else 'a gradient'}")
    compare(out, r.ref, r.ref64, r.narrowest, r.flipped, lambda: eager_noise(r.fn, r.saved), labels=r.labels)
    for k, (x, y) in enumerate(zip(inputs, r.saved)):
        if isinstance(x, torch.Tensor) and not torch.equal(x.detach().nan_to_num(), y.detach().nan_to_num()):
            raise Mismatch(f"input {k} was modified by the compiled function")


def check_program(prog: Callable, make_inputs: Callable[[], tuple], options: dict | None = None,
                  strict_fallbacks: bool = False) -> list:
    """Eager against ``flashlight.compile(prog, **options)``: raises ``AssertionError`` if they
    differ or if flashlight raises (with ``strict_fallbacks``, also if compiling a segment
    raised and it ran eagerly instead); returns the fallbacks. If some input requires grad, the
    gradients of those inputs are compared too (:func:`with_grads`). The reproducers call this."""
    import flashlight

    inputs = make_inputs()
    r = reference(prog, inputs)
    with quiet():
        f = flashlight.compile(prog, **(options or {}))
        try:
            out = (with_grads(f) if r.grad else f)(*inputs)
        except Exception as exc:
            raise AssertionError(f"flashlight raised {type(exc).__name__}: {exc}") from exc
    check_results(out, r, inputs)
    raised = [(op, why) for op, why in fallbacks_of(f) if op.startswith("program ")]
    if strict_fallbacks and raised:
        raise AssertionError(f"compiling {raised[0][0]} raised, it ran eagerly: {raised[0][1]}")
    return fallbacks_of(f)
