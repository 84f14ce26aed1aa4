"""``torch.compile(fn, backend="flashlight")``: flashlight as a Dynamo backend.

The entry point ``torch_dynamo_backends: flashlight = flashlight.backend:flashlight_backend`` in
``pyproject.toml`` makes the name known to Dynamo once the package is installed. Options come
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
