"""Running one program: eager against compiled, with a time limit, as an :class:`Outcome`.

:func:`run_program` is what campaigns and the minimizer run on each program: ``ok``,
``mismatch``, ``crash`` (flashlight raised, or compiled nothing), ``timeout`` or ``eager_error``
(the program is invalid). A crash's signature (exception type and innermost flashlight frame)
tells one crash from another.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .check import check_results, fallbacks_of, reference
from .comparison import Mismatch
from .gradients import with_grads
from .program import Program, materialize
from .quiet import quiet


@dataclass
class Outcome:
    """What running a program gave."""
    kind: str  # ok | mismatch | crash | timeout | eager_error
    detail: str = ""
    signature: str = ""
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


class ProgramTimeout(Exception):
    """A program ran longer than its time limit (raised from SIGALRM)."""


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """:class:`ProgramTimeout` once the ``with`` block has run ``seconds`` (by SIGALRM: no limit
    outside the main thread or where there is no SIGALRM)."""
    if not seconds or threading_main() is False or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise ProgramTimeout(f"took longer than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def threading_main() -> bool:
    """Whether this is the main thread (the only one that can set a signal handler)."""
    import threading
    return threading.current_thread() is threading.main_thread()


_FUZZER_DIR = Path(__file__).resolve().parent


def _in_fuzzer(filename: str) -> bool:
    """A frame of the fuzzer itself (which a checkout named ``flashlight`` also has under ``/flashlight/``)."""
    return Path(filename).resolve().parent == _FUZZER_DIR


def _crash_signature(exc: BaseException) -> str:
    """Exception type and the innermost flashlight frame: what tells one crash from another."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    for fr in frames:
        if "/flashlight/" in fr.filename.replace(os.sep, "/") and not _in_fuzzer(fr.filename):
            where = f"{Path(fr.filename).parent.name}/{Path(fr.filename).name}:{fr.name}"
    if not where and frames:
        fr = frames[-1]
        where = f"{Path(fr.filename).name}:{fr.name}"
    return f"{type(exc).__name__}@{where}"


# Set by ``--fail-on-compile-error``: a segment whose compilation raised (and that flashlight then
# ran eagerly, correctly) counts as a crash, so that it is minimized like one.
STRICT_FALLBACKS = False


def run_program(p: Program, timeout: float | None = 120.0) -> Outcome:
    """``p`` eagerly and compiled (with gradients if an input requires grad), compared."""
    import flashlight

    t0 = time.monotonic()
    try:
        ns = materialize(p)
        prog, inputs = ns["prog"], ns["make_inputs"]()
        r = reference(prog, inputs)
    except Exception as exc:
        return Outcome("eager_error", f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - t0)
    f = None
    try:
        with quiet(), _time_limit(timeout):
            f = flashlight.compile(prog, **p.options)
            out = (with_grads(f) if r.grad else f)(*inputs)
    except ProgramTimeout as exc:
        return Outcome("timeout", str(exc), "timeout", fallbacks_of(f), time.monotonic() - t0)
    except Exception as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
        return Outcome("crash", f"{type(exc).__name__}: {exc}\n{tb}", _crash_signature(exc), fallbacks_of(f),
                       time.monotonic() - t0)
    fb = fallbacks_of(f)
    try:
        check_results(out, r, inputs)
    except Mismatch as exc:
        return Outcome("mismatch", str(exc), "mismatch", fb, time.monotonic() - t0)
    if f.eager_reason is None and not f.graphs:  # Dynamo ran it without calling flashlight
        f.eager_reason = "nothing was captured: Dynamo ran the function eagerly (recompile limit?)"
    if f.eager_reason is not None:  # correct, but nothing was compiled: the campaign must not count it ok
        return Outcome("crash", f.eager_reason, "capture:" + f.eager_reason.split(":")[1].strip(), fb,
                       time.monotonic() - t0)
    raised = [(op, why) for op, why in fb if op.startswith("program ")]
    if STRICT_FALLBACKS and raised:
        why = raised[0][1]
        return Outcome("crash", f"compilation raised, the segment ran eagerly: {why}",
                       "fallback:" + re.sub(r"\d+", "N", why.split(":")[0] + ":" + " ".join(why.split()[1:4])),
                       fb, time.monotonic() - t0)
    return Outcome("ok", "", "", fb, time.monotonic() - t0)
