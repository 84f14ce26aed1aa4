"""Facts: ``flashlight::given(g, o, definition)`` (:mod:`flashlight.frontend.givens`) is ``g``,
with a statement ``o[...] = definition[...] as given`` about the input ``o``, which runs nowhere."""

from __future__ import annotations

from flashlight.frontend.givens import GIVEN
from flashlight.frontend.rules.base import RuleContext, Rules
from flashlight.frontend.unsupported import Unsupported
from flashlight.frontend.values import Value
from flashlight.ir.expr import Load

RULES = Rules()


@RULES.handles(GIVEN)
def _given(c: RuleContext) -> Value:
    value, held, definition = (c.value(a) for a in c.node.args[:3])
    decl = c.b.tensors.get(held.expr.tensor) if isinstance(held.expr, Load) else None
    if decl is None or decl.role != "input":
        raise Unsupported("the value it states a fact about is not an input of the program")
    c.b.emit_given(held, definition)
    return value
