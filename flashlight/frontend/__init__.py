"""Capture PyTorch programs and lift them into the IR (this package only builds IR)."""

from flashlight.frontend.capture import capture_graphs, decompositions, make_backend
from flashlight.frontend.lift import lift_graph
from flashlight.frontend.segments import EagerSegment, LiftedGraph, ProgramSegment

__all__ = ["EagerSegment", "LiftedGraph", "ProgramSegment", "capture_graphs", "decompositions",
           "lift_graph", "make_backend"]
