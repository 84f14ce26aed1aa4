"""flashlight's logging: one ``"flashlight"`` logger, quiet unless asked.

Enable it from Python::

    import logging
    logging.basicConfig()                                   # any handler, e.g. the root one
    logging.getLogger("flashlight").setLevel(logging.DEBUG)

or from the environment, ``FLASHLIGHT_LOG=debug`` (or ``info``, ``warning``, ``error``): when this
module is imported, it attaches a stderr handler to the ``"flashlight"`` logger at that level.
The command line (``python -m flashlight``) imports it, and ``--log LEVEL`` does the same.

Modules log through :func:`get_logger`; :func:`progress` is the one-liner for a step of work with
a few ``key=value`` fields (they are also attached to the record as ``record.fields``).

.. autofunction:: get_logger
.. autofunction:: progress
.. autofunction:: configure
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

__all__ = ["LOGGER_NAME", "configure", "get_logger", "progress"]

LOGGER_NAME = "flashlight"
ENV_VAR = "FLASHLIGHT_LOG"
FORMAT = "[%(name)s %(levelname)s] %(message)s"

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}


def get_logger(name: str | None = None) -> logging.Logger:
    """The ``"flashlight"`` logger, or its child ``"flashlight.<name>"`` (which propagates to it)."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def _format_value(value: Any) -> str:
    text = str(value)
    return repr(text) if (not text or any(c.isspace() for c in text)) else text


def progress(msg: str, **fields: Any) -> None:
    """Log a step of work at INFO: ``progress("fused", kernel=0, stmts=4)`` -> ``fused kernel=0 stmts=4``."""
    log = get_logger()
    if not log.isEnabledFor(logging.INFO):
        return
    text = " ".join([msg] + [f"{k}={_format_value(v)}" for k, v in fields.items()])
    log.info(text, extra={"fields": fields})


def parse_level(level: str | int) -> int:
    """``"debug"`` / ``"DEBUG"`` / ``10`` -> ``logging.DEBUG``; ValueError for anything else."""
    if isinstance(level, int):
        return level
    text = level.strip().lower()
    if text.isdigit():
        return int(text)
    if text not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of debug, info, warning, error")
    return _LEVELS[text]


def configure(level: str | int, stream: Any = None) -> logging.Logger:
    """Send the ``"flashlight"`` logger's records at ``level`` and above to ``stream`` (stderr).

    Calling it again changes the level and stream of the same handler instead of adding another.
    """
    log = get_logger()
    log.setLevel(parse_level(level))
    handler = next((h for h in log.handlers if getattr(h, "_flashlight", False)), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler._flashlight = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(FORMAT))
        log.addHandler(handler)
    elif stream is not None:
        handler.setStream(stream)
    return log


def _configure_from_env() -> None:
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return
    try:
        configure(value)
    except ValueError as exc:
        print(f"flashlight: ignoring {ENV_VAR}={value!r}: {exc}", file=sys.stderr)


_configure_from_env()
