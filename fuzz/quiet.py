"""Running generated code quietly: no warnings, and flashlight's log at ERROR only.

The programs the generator draws are odd on purpose (empty tensors, mixed dtypes, segments that
fall back to eager), and eager PyTorch and flashlight warn about them; a campaign's output is
its verdicts, one line per program at most.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Warnings ignored and flashlight's log silenced below ERROR, for the ``with`` block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with silence_log():
            yield


@contextlib.contextmanager
def silence_log() -> Iterator[None]:
    """flashlight's logger at ERROR for the ``with`` block, then at its old level again."""
    lg = logging.getLogger("flashlight")
    old = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(old)
