"""``python -m flashlight``: the command line (see :mod:`flashlight.cli`)."""

from __future__ import annotations

import sys

from flashlight.cli import main

if __name__ == "__main__":
    sys.exit(main())
