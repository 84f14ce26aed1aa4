"""Parsing of a loop's annotations (``state [...]``, ``superseded [...]``, ``tiles [...]``,
``bounds [...]``, ``test [...]``): the facts passes state about a loop, each a typed record of
:mod:`flashlight.ir.nodes`. A mixin of the line parser, which supplies ``next``, ``at``,
``expect``, ``expect_name``, ``expr`` and ``load_expr``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from flashlight.ir.nodes import OnlineState, TileBound, TileRange, TileTest

T = TypeVar("T")


class LoopAnnotationParser:
    def names(self, what: str) -> list[str]:
        """``A, B, ...``: one name or more, separated by commas."""
        out = [self.expect_name(what)]
        while self.at(","):
            self.next()
            out.append(self.expect_name(what))
        return out

    def bracketed(self, what: str, item: Callable[[], T]) -> list[T]:
        """``KEYWORD [ITEM, ...]``: a loop annotation of one item or more."""
        self.expect("[", f"after '{self.next().text}'")
        out = [item()]
        while self.at(","):
            self.next()
            out.append(item())
        self.expect("]", f"after the {what}")
        return out

    def tile_range(self) -> TileRange:
        """``A:B full`` or ``A:B masked``."""
        lo = self.expr()
        self.expect(":", "between a tile range's bounds")
        hi = self.expr()
        tok = self.peek()
        if not (tok.kind == "name" and tok.text in ("full", "masked")):
            raise self.expected("'full' or 'masked' after a tile range")
        return TileRange(lo, hi, self.next().text == "masked")

    def tile_bound(self) -> TileBound:
        """``X in L:H``."""
        operand = self.load_expr("a tile bound's operand 'tensor[indices]'")
        self.expect("in", "after a tile bound's operand")
        least = self.load_expr("a tile bound's lower bound 'tensor[indices]'")
        self.expect(":", "between a tile bound's lower and upper bound")
        most = self.load_expr("a tile bound's upper bound 'tensor[indices]'")
        return TileBound(operand, least, most)

    def tile_test(self) -> TileTest:
        """``test [possible EXPR; certain EXPR]`` (the certain part optional)."""
        self.next()
        self.expect("[", "after 'test'")
        self.expect("possible", "first in a tile test")
        possible, certain = self.expr(), None
        if self.at(";"):
            self.next()
            self.expect("certain", "after ';' in a tile test")
            certain = self.expr()
        self.expect("]", "after the tile test (possible ...; certain ...)")
        return TileTest(possible, certain)

    def online_state(self) -> OnlineState:
        """``state [running A, ...; previous B, ...; rescaled C, ...]`` (each part optional, in order)."""
        self.next()
        self.expect("[", "after 'state'")
        parts: dict[str, list[str]] = {}
        for key in ("running", "previous", "rescaled"):
            if not self.at(key):
                continue
            self.next()
            parts[key] = self.names(f"a {key} tensor")
            if not self.at("]"):
                self.expect(";", "between the parts of a loop's state")
        self.expect("]", "after the loop's state (running ...; previous ...; rescaled ...)")
        return OnlineState(*(tuple(parts.get(k, ())) for k in ("running", "previous", "rescaled")))
