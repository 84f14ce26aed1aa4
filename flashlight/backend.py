"""``torch.compile(fn, backend="flashlight")``: flashlight as a Dynamo backend.

The entry point ``torch_dynamo_backends: flashlight = flashlight.backend:flashlight_backend`` in
``pyproject.toml`` makes the name known to Dynamo once the package is installed; ``import
flashlight`` registers it too, for a checkout on ``PYTHONPATH`` (no installed metadata). Options come
through ``torch.compile(..., options={...})`` with the fields of :class:`flashlight.Options`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch.fx as fx

from flashlight.api import boxed_runner, compile_graph
from flashlight.frontend.capture import make_backend
from flashlight.options import make_options


def flashlight_backend(gm: fx.GraphModule, example_inputs: Sequence[Any], **kwargs: Any) -> Callable:
    """A Dynamo backend: each graph is lifted, fused and compiled by flashlight."""
    opts = make_options(kwargs.get("options") or {})

    def compile_one(aten_gm: fx.GraphModule, inputs: Sequence[Any], names: list[str], name: str = "graph") -> Callable:
        return boxed_runner(compile_graph(aten_gm, inputs, names, opts, name))

    def compile_backward(aten_gm: fx.GraphModule, inputs: Sequence[Any], names: list[str]) -> Callable:
        return compile_one(aten_gm, inputs, names, "graph_backward")

    return make_backend(compile_one, compile_backward if opts.compile_backward else None)(gm, example_inputs)


def register_backend() -> None:
    """Makes ``backend="flashlight"`` known to Dynamo without the installed entry point (a checkout
    on ``PYTHONPATH`` has none: run 22's whole-model benchmark got ``InvalidBackend``)."""
    from torch._dynamo.backends import registry

    discover = getattr(registry, "_discover_entrypoint_backends", None)  # private: absent, nothing is known
    if discover is not None:
        discover()
    # an installed entry point registers the backend when Dynamo first looks the name up (and
    # refuses a second registration under the same name): only a name without one is registered
    if registry._BACKENDS.get("flashlight") is None and "flashlight" not in registry._COMPILER_FNS:
        registry.register_backend(compiler_fn=flashlight_backend, name="flashlight")
