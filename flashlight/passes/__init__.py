"""Program -> Program transformations, each in its own module with its legality argument.

Every pass is a plain function of a :class:`~flashlight.ir.Program` (plus keyword options) and
has a name for pipelines: ``"inline,masks-to-domains,fuse-reductions,tile{block_m=128}"``.
Each pass records its legality decisions in ``program.proofs``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from flashlight.ir.nodes import Program
from flashlight.ir.verify import verify
from flashlight.passes.contract_buffers import contract_buffers
from flashlight.passes.defer_normalization import defer_normalization
from flashlight.passes.elide_roundings import elide_roundings
from flashlight.passes.factor_scales import factor_scales
from flashlight.passes.fuse_reductions import fuse_reductions
from flashlight.passes.hoist_tile_bounds import hoist_tile_bounds
from flashlight.passes.inline_pointwise import inline_pointwise
from flashlight.passes.masks_to_domains import masks_to_domains
from flashlight.passes.order_launches import order_launches
from flashlight.passes.rebase_exponentials import rebase_exponentials
from flashlight.passes.restrict_to_demand import restrict_to_demand
from flashlight.passes.tile import tile
from flashlight.passes.tile_ranges import tile_ranges

PASSES: dict[str, Callable[..., Program]] = {
    "inline": inline_pointwise,
    "defer-normalization": defer_normalization,
    "elide-roundings": elide_roundings,
    "masks-to-domains": masks_to_domains,
    "restrict-to-demand": restrict_to_demand,
    "fuse-reductions": fuse_reductions,
    "factor-scales": factor_scales,
    "rebase-exponentials": rebase_exponentials,
    "contract-buffers": contract_buffers,
    "tile": tile,
    "tile-ranges": tile_ranges,
    "hoist-tile-bounds": hoist_tile_bounds,
    "order-launches": order_launches,
}

DEFAULT_PIPELINE = ("inline,defer-normalization,inline,masks-to-domains,elide-roundings,restrict-to-demand,"
                    "fuse-reductions,factor-scales,rebase-exponentials,contract-buffers,tile,tile-ranges,hoist-tile-bounds,"
                    "order-launches")


def parse_pipeline(spec: str) -> list[tuple[str, dict[str, int | float | str]]]:
    """``"a,b{x=1,y=2}"`` -> ``[("a", {}), ("b", {"x": 1, "y": 2})]``; malformed text raises."""
    out = []
    pos = 0
    item = re.compile(r"\s*([\w-]+)\s*(?:\{([^}]*)\})?\s*(,|$)")
    while pos < len(spec):
        m = item.match(spec, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"malformed pipeline at character {pos}: {spec[pos:]!r}")
        name, args = m.group(1), {}
        if name not in PASSES:
            raise ValueError(f"unknown pass {name!r}; known passes: {', '.join(PASSES)}")
        for part in filter(None, (x.strip() for x in (m.group(2) or "").split(","))):
            key, eq, val = part.partition("=")
            if not eq or not key.strip() or not val.strip() or " " in val.strip():
                raise ValueError(f"malformed option {part!r} of pass {name!r}; write key=value")
            args[key.strip().replace("-", "_")] = _literal(val.strip())
        out.append((name, args))
        pos = m.end()
        if m.group(3) == "" and pos < len(spec):
            raise ValueError(f"malformed pipeline at character {pos}: {spec[pos:]!r}")
    return out


def _literal(text: str) -> int | float | str:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def run_pipeline(program: Program, spec: str | list = DEFAULT_PIPELINE,
                 on_stage: Callable[[str, Program], None] | None = None,
                 overrides: dict[str, dict] | None = None) -> Program:
    """Run passes in order, verifying after each; ``on_stage(name, program)`` sees every stage."""
    steps = parse_pipeline(spec) if isinstance(spec, str) else spec
    for name, args in steps:
        kwargs = dict((overrides or {}).get(name, {}))
        kwargs.update(args)  # options written in the pipeline win
        program = _apply(PASSES[name], program, program.proofs, tuple(sorted(kwargs.items())))
        if on_stage is not None:
            on_stage(name, program)
    return program


@functools.lru_cache(maxsize=64)
def _apply(pass_fn: Callable[..., Program], program: Program, proofs: tuple, kwargs: tuple) -> Program:
    """A pass is a function of the (immutable) program and its options, so a repeated application
    is looked up: the autotuner compiles one program for several tile sizes, and every pass before
    ``tile`` (fuse-reductions' isl proofs: seconds for a prefix-LM mask) would rerun unchanged.
    The key holds the program's proofs too (they are not part of its equality): the result carries
    them on, and one equal program with other decisions behind it must not get these."""
    return verify(pass_fn(program, **dict(kwargs)))


__all__ = [
    "DEFAULT_PIPELINE", "PASSES", "contract_buffers", "defer_normalization", "elide_roundings", "fuse_reductions",
    "hoist_tile_bounds", "inline_pointwise", "masks_to_domains", "order_launches", "parse_pipeline", "rebase_exponentials", "restrict_to_demand", "run_pipeline", "tile", "tile_ranges",
]
