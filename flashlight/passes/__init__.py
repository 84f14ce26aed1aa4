"""Program -> Program transformations, each in its own module with its legality argument.

Every pass is a plain function of a :class:`~flashlight.ir.Program` (plus keyword options), the
public API, and a declared :class:`~flashlight.passes.declare.Pass` (its name in pipelines, a
summary, typed options; see :mod:`flashlight.passes.declare`) whose ``apply`` calls the function:
``"inline,masks-to-domains,fuse-reductions,tile{block_m=128}"``. Each pass records its legality
decisions in ``program.proofs``.
"""

from __future__ import annotations

# the declarations come first: every pass module declares its pass with them
from flashlight.passes.declare import (
    DEFAULT_PIPELINE, FunctionView, Pass, _applied, configure, format_pipeline, lookup, option, parse_pipeline,
    registered, remove_passes, resolve_pipeline, run_pipeline,
)
from flashlight.passes.bound_guard_tiles import bound_guard_tiles
from flashlight.passes.call_library import call_library
from flashlight.passes.contract_buffers import contract_buffers
from flashlight.passes.defer_normalization import defer_normalization
from flashlight.passes.elide_roundings import elide_roundings
from flashlight.passes.exchange_sums import exchange_sums
from flashlight.passes.factor_scales import factor_scales
from flashlight.passes.fuse_reductions import fuse_reductions
from flashlight.passes.hoist_tile_bounds import hoist_tile_bounds
from flashlight.passes.inline_pointwise import inline_pointwise
from flashlight.passes.join_dims import join_dims
from flashlight.passes.masks_to_domains import masks_to_domains
from flashlight.passes.merge_sums import merge_sums
from flashlight.passes.order_launches import order_launches
from flashlight.passes.pack_groups import pack_groups
from flashlight.passes.rebase_exponentials import rebase_exponentials
from flashlight.passes.restrict_to_demand import restrict_to_demand
from flashlight.passes.scale_after_fold import scale_after_fold
from flashlight.passes.split_reductions import split_reductions
from flashlight.passes.split_wide_state import split_wide_state
from flashlight.passes.stage_reductions import stage_reductions
from flashlight.passes.spread_conversions import spread_conversions
from flashlight.passes.supersede_stores import supersede_stores
from flashlight.passes.tile import tile
from flashlight.passes.tile_ranges import tile_ranges

#: ``name -> function(program, **options)``, read-only, derived from the registry (kept for
#: callers of the former hand-kept dict); declare a new pass as a :class:`Pass` instead
PASSES = FunctionView()

__all__ = [
    "DEFAULT_PIPELINE", "PASSES", "Pass", "bound_guard_tiles", "call_library", "configure", "contract_buffers", "defer_normalization", "elide_roundings", "exchange_sums",
    "factor_scales", "format_pipeline", "fuse_reductions", "hoist_tile_bounds", "inline_pointwise", "join_dims", "lookup",
    "masks_to_domains", "merge_sums", "option", "order_launches", "pack_groups", "parse_pipeline", "rebase_exponentials", "registered", "remove_passes",
    "resolve_pipeline", "restrict_to_demand", "run_pipeline", "scale_after_fold", "split_reductions", "split_wide_state",
    "spread_conversions", "stage_reductions", "supersede_stores", "tile", "tile_ranges",
]
