"""flashlight's loop-nest IR: programs of loops, guards and statements over tensors.

This package knows nothing of torch or triton. See ``docs/ir.md`` for the syntax and semantics.
"""

from flashlight.ir import dtypes
from flashlight.ir.expr import Call, Const, Expr, Iter, Load, affine_form, const, index
from flashlight.ir.nodes import (Guard, Loop, Node, Program, Proof, Stmt, TensorDecl, TileBound, TileRange, TileTest,
                                 walk_stmts)
from flashlight.ir.printer import format_expr, format_program
from flashlight.ir.verify import VerificationError, verify


def parse(text: str) -> Program:
    """Parse the printer's text form back into a program."""
    from flashlight.ir.parser import parse_program

    return parse_program(text)


__all__ = [
    "Call", "Const", "Expr", "Guard", "Iter", "Load", "Loop", "Node", "Program", "Proof", "Stmt",
    "TensorDecl", "TileBound", "TileRange", "TileTest", "VerificationError", "affine_form", "const", "dtypes",
    "format_expr", "format_program", "index", "parse", "verify", "walk_stmts",
]
