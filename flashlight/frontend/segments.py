"""What lifting makes of a graph: program segments and eager segments, in order.

A *program segment* is a maximal run of liftable nodes, one :class:`~flashlight.ir.Program`; an
*eager segment* is one node that runs in eager PyTorch, with the reason. A segment's inputs are
the graph values it reads from outside, its outputs the values it defines that anything later
reads. The runtime runs the segments in order (:mod:`flashlight.runtime`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx

from flashlight.ir.nodes import Program


@dataclass
class ProgramSegment:
    program: Program
    inputs: list[fx.Node]   # in the order of program.inputs
    outputs: list[fx.Node]  # in the order of program.outputs
    nodes: list[fx.Node]    # the graph nodes it replaces, in order (for running it eagerly)
    params: dict[str, str] = field(default_factory=dict)  # Dynamo's size symbol -> the program's size parameter
    bound: dict[str, int] = field(default_factory=dict)  # Dynamo's size symbol -> the number lifted for it
    # cut by what flashlight keeps (flashlight.handoff.kept_region): whether these nodes are in it;
    # None where the program was not cut
    kept: bool | None = None


@dataclass
class EagerSegment:
    node: fx.Node
    reason: str
    computes: bool = True  # False for a view or an empty result: eager costs nothing, nothing is lost


@dataclass
class LiftedGraph:
    graph: fx.Graph
    placeholders: list[fx.Node]
    segments: list[ProgramSegment | EagerSegment] = field(default_factory=list)
    # get_attr nodes (tensor constants such as torch.tensor(2.0) in the function) and their values:
    # like placeholders, they are values of the graph that no segment computes
    constants: dict[fx.Node, object] = field(default_factory=dict)

    @property
    def programs(self) -> list[Program]:
        return [s.program for s in self.segments if isinstance(s, ProgramSegment)]

    @property
    def fallbacks(self) -> list[EagerSegment]:
        return [s for s in self.segments if isinstance(s, EagerSegment) and s.computes]


def is_empty(n: fx.Node) -> bool:
    """Whether ``n``'s traced value is a tensor with no elements (a model's key/value cache before
    its first update): a lifted program drops it; whatever else runs the nodes reading it makes it
    again."""
    val = n.meta.get("val")
    return isinstance(val, torch.Tensor) and val.numel() == 0
