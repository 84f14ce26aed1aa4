"""Whether the compiled function's results are eager's: :func:`compare`.

Same structure, shapes, dtypes and devices; integers and booleans exactly; floats within
:data:`TOLERANCES` (NaN in the same places, infinities equal), or, beyond that, no further from a
float64 evaluation of the program than eager's own rounding noise (``noise.py``). A difference
is raised as :class:`Mismatch`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .nested import flat, structure
from .noise import NOISE_FACTOR

TOLERANCES = {  # dtype: (rtol, atol relative to the output's scale)
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-7, 1e-7),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (3e-2, 3e-2),
}


class Mismatch(AssertionError):
    """The compiled function's results differ from eager's (an ``AssertionError``, as the
    reproducers' ``check()`` raises)."""


def compare(out: Any, ref: Any, ref64: Any = None, narrowest: torch.dtype | None = None,
            ref64_flipped: tuple = (), noise: Callable[[], list] | None = None,
            labels: list[str] | None = None) -> None:
    """Raise :class:`Mismatch` (an ``AssertionError``) unless ``out`` is what eager's ``ref`` is.

    ``ref64`` (the same program on float64 inputs), if given, excuses values outside the
    tolerance where our error against it is within eager's own (an ill-conditioned output).
    ``narrowest``: the narrowest float dtype the program computes in; a float32 output of a
    program that rounds to bfloat16 on the way gets bfloat16's tolerance (flashlight keeps fused
    intermediates in float32, see ``passes/elide_roundings.py``).
    ``ref64_flipped``: ``ref64`` again with its float-to-integer casts pushed by eager's rounding
    error either way (:func:`reference64`); integers that differ there are decided by rounding.
    ``noise``: called at most once, only if a float value is otherwise beyond the tolerance: runs of
    the program with eager's rounding perturbed (:func:`eager_noise`); where our error against
    ``ref64`` is within :data:`NOISE_FACTOR` times their spread, it is rounding noise too.
    ``labels``: what each flattened value is called in a message (default ``output k``)."""
    if structure(out) != structure(ref):
        raise Mismatch(f"output structure {structure(out)}, eager gives {structure(ref)}")
    outs, refs = flat(out), flat(ref)
    r64s = flat(ref64) if ref64 is not None and structure(ref64) == structure(ref) else [None] * len(refs)
    flips = [flat(f) for f in ref64_flipped if structure(f) == structure(ref)]
    runs: list[list] | None = None

    def noise_of(k: int, r: torch.Tensor) -> list[torch.Tensor]:
        nonlocal runs
        if runs is None:  # once for all outputs
            runs = [flat(n) for n in (noise() if noise is not None else []) if structure(n) == structure(ref)]
        return [n[k] for n in runs if isinstance(n[k], torch.Tensor) and n[k].shape == r.shape]
    # a gradient's rounding noise is on the scale of the values it flows from (the cotangent is at
    # most 1): one that is exactly 0 in exact arithmetic comes out as noise of the outputs' scale
    outputs = [r for k, r in enumerate(refs) if isinstance(r, torch.Tensor) and r.dtype.is_floating_point
               and not (labels is not None and k < len(labels) and labels[k].startswith("gradient"))]
    finite = [r.detach().double()[torch.isfinite(r.detach())] for r in outputs]
    out_scale = max((float(f.abs().max()) for f in finite if f.numel()), default=0.0)
    for k, (o, r, r64) in enumerate(zip(outs, refs, r64s)):
        what = labels[k] if labels is not None and k < len(labels) else f"output {k}"
        if not isinstance(r, torch.Tensor):
            if o != r:
                raise Mismatch(f"{what}: {o!r}, eager gives {r!r}")
            continue
        if (o.shape, o.dtype) != (r.shape, r.dtype):
            raise Mismatch(f"{what}: {o.dtype}{list(o.shape)}, eager gives {r.dtype}{list(r.shape)}")
        if o.device != r.device:
            raise Mismatch(f"{what} on {o.device}, eager's on {r.device}")
        r64 = r64.detach() if isinstance(r64, torch.Tensor) and r64.shape == r.shape else None
        flipped = [f[k] for f in flips if isinstance(f[k], torch.Tensor) and f[k].shape == r.shape]
        _compare_tensor(what, o.detach(), r.detach(), r64, narrowest, flipped, lambda k=k, r=r: noise_of(k, r),
                        out_scale if what.startswith("gradient") else 0.0)


def _compare_tensor(what: str, o: torch.Tensor, r: torch.Tensor, r64: torch.Tensor | None,
                    narrowest: torch.dtype | None = None, flipped: list[torch.Tensor] = (),
                    noise: Callable[[], list[torch.Tensor]] | None = None, min_scale: float = 0.0) -> None:
    """One tensor against eager's (the arguments are :func:`compare`'s, for this value; ``noise``
    gives this value's perturbed runs). ``min_scale``: the scale of the program's outputs, for a
    gradient (its rounding noise is on their scale, not its own)."""
    if not r.dtype.is_floating_point and not r.dtype.is_complex:
        _compare_exact(what, o, r, r64, narrowest, flipped)
        return
    o32, r32 = o.double(), r.double()
    r32 = _same_nans(what, o, r, o32, r32, r64, noise)
    o32 = _same_infinities(what, o, r, o32, r32, r64, noise)
    fin = torch.isfinite(r32)
    if not fin.any():
        return
    _close(what, o32, r32, r, r64, fin, narrowest, noise, min_scale)


def _compare_exact(what: str, o: torch.Tensor, r: torch.Tensor, r64: torch.Tensor | None,
                   narrowest: torch.dtype | None, flipped: list[torch.Tensor]) -> None:
    """Integers and booleans: equal, except where eager's own rounding decides the value (a
    float-to-integer cast, a comparison of a rounded float)."""
    bad = o != r
    if bad.any() and r64 is not None:
        # positions where eager itself disagrees with float64 are decided by rounding
        bad &= r64.to(r.dtype) == r
        for f in flipped:  # and so are those whose truncated value lies within eager's error of an integer
            bad &= f.to(r.dtype) == r
    if bad.any() and not rounding_flips(bad, narrowest):
        idx = bad.nonzero()[0].tolist()
        raise Mismatch(f"{what} ({r.dtype}{list(r.shape)}): {int(bad.sum())} of {r.numel()} elements differ, "
                       f"first at {idx}: {o[tuple(idx)].item()} vs eager {r[tuple(idx)].item()}")


def _same_nans(what: str, o: torch.Tensor, r: torch.Tensor, o32: torch.Tensor, r32: torch.Tensor,
               r64: torch.Tensor | None, noise: Callable[[], list[torch.Tensor]] | None = None) -> torch.Tensor:
    """NaN in the same places as eager; returns eager's values (``r32``, float64) with eager's
    quirky NaNs replaced by the float64 evaluation's values, and NaN where eager's rounding noise
    decides whether there is one."""
    nan_o, nan_r = torch.isnan(o32), torch.isnan(r32)
    if not torch.equal(nan_o, nan_r) and r64 is not None:
        # eager's own NaN where the float64 evaluation of the program has a value, and ours is that
        # value (CPU bfloat16 matmuls of rows of infinities give NaN where float32 and float64 sum
        # them to +-inf): judged against the float64 evaluation there
        r64d = r64.double()
        quirk = nan_r & ~nan_o & ~torch.isnan(r64d) & ((o32 == r64d) | (torch.isfinite(r64d) & torch.isfinite(o32)))
        if quirk.any():
            r32 = torch.where(quirk, r64d, r32)
            nan_r = torch.isnan(r32)
    differ = nan_o != nan_r
    if differ.any() and r64 is not None and noise is not None:
        # a NaN that eager's own rounding noise decides (a clamp's threshold crossed by the rounding
        # noise of a layer norm's row sum, the gradient beyond it overflowing float16: seed
        # 9921422): excused where a perturbed eager run has a NaN where we have one, or none where
        # we have none; not compared there
        runs = [torch.isnan(n.double()) for n in noise() if n.shape == r.shape]
        if runs:
            excused = differ & (torch.stack(runs) == nan_o).any(0)
            r32, differ = torch.where(excused, torch.full_like(r32, float("nan")), r32), differ & ~excused
    if differ.any():
        idx = differ.nonzero()[0].tolist()
        raise Mismatch(f"{what} ({r.dtype}{list(r.shape)}): NaN in other places than eager "
                       f"({int(nan_o.sum())} vs {int(nan_r.sum())}); first at {idx}: "
                       f"{o[tuple(idx)].item()} vs eager {r[tuple(idx)].item()}")
    return r32


def _same_infinities(what: str, o: torch.Tensor, r: torch.Tensor, o32: torch.Tensor, r32: torch.Tensor,
                     r64: torch.Tensor | None, noise: Callable[[], list[torch.Tensor]] | None) -> torch.Tensor:
    """Infinities equal to eager's; returns our values (``o32``, float64) with the infinities
    that eager's rounding noise excuses replaced by eager's values."""
    inf_r = torch.isinf(r32)
    differ = (torch.isinf(o32) != inf_r) | (inf_r & (o32 != r32))
    if differ.any() and r64 is not None and noise is not None:
        # an overflow that eager's own rounding noise decides (a difference of two values 1e17 apart
        # from 1e8 of each other, cast to float16): excused where a perturbed eager run agrees with us
        same = [(torch.isinf(n.double()) == torch.isinf(o32)) & (~torch.isinf(o32) | (n.double() == o32))
                for n in noise()]
        if same:
            excused = differ & torch.stack(same).any(0)
            o32, differ = torch.where(excused, r32, o32), differ & ~excused
    if differ.any():
        idx = differ.nonzero()[0].tolist()
        raise Mismatch(f"{what} ({r.dtype}{list(r.shape)}): infinities differ; first at {idx}: "
                       f"{o[tuple(idx)].item()} vs eager {r[tuple(idx)].item()}")
    return o32


def _close(what: str, o32: torch.Tensor, r32: torch.Tensor, r: torch.Tensor, r64: torch.Tensor | None,
           fin: torch.Tensor, narrowest: torch.dtype | None, noise: Callable[[], list[torch.Tensor]] | None,
           min_scale: float) -> None:
    """The finite values (``fin``: where eager's are) within the tolerance, or within eager's own
    rounding noise of the float64 evaluation, or a few rounding flips of a 16-bit program."""
    rtol, atol, scale = _tolerance(r, r32, fin, narrowest, min_scale)
    try:
        torch.testing.assert_close(o32, r32, rtol=rtol, atol=atol, equal_nan=True)
        return
    except AssertionError as exc:
        first = str(exc).strip().splitlines()
    err = (o32 - r32).abs()
    err[~fin] = 0
    bad = err > atol + rtol * r32.abs()
    excused, spread = _within_rounding_noise(o32, r32, r64, fin, bad, atol, noise)
    if excused:
        return
    if bad.any() and rounding_flips(bad, narrowest):
        return
    if not bad.any():
        bad = err == err.max()
    idx = tuple(bad.nonzero()[0].tolist())
    raise Mismatch(f"{what} ({r.dtype}{list(r.shape)}): {int(bad.sum())} of {r.numel()} elements beyond "
                   f"rtol {rtol:g}, atol {atol:.2g}; max abs error {float(err.max()):.3g} (scale {scale:.3g}); "
                   f"first at {list(idx)}: {o32[idx].item()} vs eager {r32[idx].item()}"
                   + (f" (eager's rounding noise there {float(spread[idx]):.3g})" if spread is not None else "")
                   + "\n" + "\n".join(first[:6]))


def _tolerance(r: torch.Tensor, r32: torch.Tensor, fin: torch.Tensor, narrowest: torch.dtype | None,
               min_scale: float) -> tuple[float, float, float]:
    """``(rtol, atol, scale)`` for eager's value ``r``: :data:`TOLERANCES` of its dtype, or of
    the narrowest dtype the program computes in if that is looser; ``atol`` relative to ``scale``,
    the largest finite magnitude (at least ``min_scale``, and 1 in a 16-bit program)."""
    rtol, atol_rel = TOLERANCES.get(r.dtype, (1e-4, 1e-4))
    if narrowest in TOLERANCES:
        rtol, atol_rel = max(rtol, TOLERANCES[narrowest][0]), max(atol_rel, TOLERANCES[narrowest][1])
    # a 16-bit program's rounding noise is relative to its values (about 1 for these inputs), not
    # to an output that cancels to nearly zero
    floor = 1.0 if narrowest in (torch.float16, torch.bfloat16) or r.dtype in (torch.float16, torch.bfloat16) else 1e-3
    scale = max(float(r32[fin].abs().max()), floor, min_scale)
    return rtol, atol_rel * scale, scale


def _within_rounding_noise(o32: torch.Tensor, r32: torch.Tensor, r64: torch.Tensor | None, fin: torch.Tensor,
                           bad: torch.Tensor, atol: float, noise: Callable[[], list[torch.Tensor]] | None
                           ) -> tuple[bool, torch.Tensor | None]:
    """Whether our values beyond the tolerance (``bad``) are no worse than eager's own rounding,
    and the spread of eager's perturbed runs if it was measured (for the message)."""
    if r64 is None:
        return False, None
    # no worse than eager's own rounding: its error against float64, or where that is lucky (a
    # row of equal values minus its mean comes out exactly 0), the spread of eager's runs with
    # perturbed roundings (only computed here, for what would otherwise be a mismatch)
    r64d = r64.double()
    eager_err = (r32 - r64d).abs()[fin & torch.isfinite(r64d)]
    eager_err = float(eager_err.max()) if eager_err.numel() else 0.0
    ours = (o32 - r64d).abs()
    ours[~fin | ~torch.isfinite(r64d)] = 0
    if float(ours[bad].max()) <= NOISE_FACTOR * eager_err + atol:
        return True, None
    runs = noise() if noise is not None else []
    if not runs:
        return False, None
    # a run that overflows or gives NaN where eager does not excuses nothing
    spread = torch.stack([(n.double() - r32).abs() for n in runs]).amax(0).nan_to_num(0.0, 0.0, 0.0)
    return bool((ours[bad] <= NOISE_FACTOR * spread[bad].clamp_min(eager_err) + atol).all()), spread


def rounding_flips(bad: torch.Tensor, narrowest: torch.dtype | None) -> bool:
    """A few isolated differences in a program that rounds to a 16-bit float: a comparison whose
    operand is one ulp off (flashlight decomposes softmax and keeps fused values in float32, eager
    rounds once per op) decides differently. At most 1% of the elements, and at most 3."""
    if narrowest not in (torch.float16, torch.bfloat16):
        return False
    n = int(bad.sum())
    return n <= min(3, max(1, bad.numel() // 100))
