"""The lifting rules: how each aten operator becomes IR, one module per family of operators.

:data:`RULES` maps an operator's overload packet to its :class:`~.base.Rule`, the function that
lifts it and the operator's properties the driver reads (:mod:`flashlight.frontend.lift`). An
operator without a rule, or whose rule raises :class:`~flashlight.frontend.unsupported.Unsupported`,
runs in eager PyTorch. ``getitem`` (the results of a multi-output operator) has no rule, so such
operators run eagerly too.

Families: :mod:`.views` (index expressions only), :mod:`.constants`, :mod:`.elementwise`,
:mod:`.reductions`, :mod:`.contractions` (matrix products), :mod:`.index_maps` (copies at
computed indices: repeat, cat, pad, scatters), :mod:`.gathers` (indirect accesses), :mod:`.facts` (statements about inputs); the
statements they make are built with :mod:`.pointwise`, indices read with :mod:`.indices`.
"""

from __future__ import annotations

from flashlight.frontend.rules import (constants, contractions, elementwise, facts, gathers, index_maps, reductions,
                                      views)
from flashlight.frontend.rules.base import Rule, RuleContext, Rules, overload_packet, op_name

__all__ = ["RULES", "Rule", "RuleContext", "overload_packet", "op_name"]

FAMILIES = (views, constants, elementwise, reductions, contractions, index_maps, gathers, facts)

RULES = Rules()
for _family in FAMILIES:
    assert not RULES.keys() & _family.RULES.keys(), f"{_family.__name__} redefines a rule"
    RULES.update(_family.RULES)
