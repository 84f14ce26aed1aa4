"""``python -m fuzz``, from the repository root: the fuzzer's command line (``--help`` lists it)."""

import sys

from fuzz import main

sys.exit(main())
