"""What flashlight did, counted, for users to read: ``flashlight.counters``.

* ``programs_compiled``: lifted programs the pass pipeline compiled for a call (a disk-cache hit
  does not count; the tuning candidates of one program count once; ``explain`` does not count).
* ``eager_calls``: calls of a compiled function that ran entirely in eager PyTorch (capture
  failed, or Dynamo's recompile limit was reached); each is logged with its reason.
* ``eager_segments``: program segments of a call that ran in eager PyTorch because they could
  not be compiled (the reason was logged once, when that was found).

A ``collections.Counter``: ``flashlight.counters.clear()`` starts a new count.
"""

from __future__ import annotations

import collections
import logging

log = logging.getLogger("flashlight")

counters: collections.Counter[str] = collections.Counter()


def count_eager_call(name: str, reason: str) -> None:
    """A call of ``name`` ran in eager PyTorch, for ``reason``."""
    counters["eager_calls"] += 1
    log.info("flashlight: a call of %s ran in eager PyTorch: %s", name, reason)
