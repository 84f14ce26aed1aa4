"""Debug dumps: each compiled program's stages, decisions, kernels and fallbacks, as files.

With ``Options(debug_dir=...)`` or ``$FLASHLIGHT_DEBUG_DIR`` set, every program segment that
``flashlight.compile`` compiles is written to ``<dir>/<program>_<k>/``: the IR after each stage
(``00_lifted.ir``, ...), ``decisions.txt`` (every legality decision with its evidence), the
kernels' source, ``fallbacks.txt`` and, if it failed, ``error.txt``. A directory that cannot be
written is a warning, never an error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flashlight.options import Options
from flashlight.report import SegmentReport, format_proofs

log = logging.getLogger("flashlight")


def debug_dir(options: Options) -> str | None:
    """Where to dump compilations: the option, else ``$FLASHLIGHT_DEBUG_DIR``; None for nowhere."""
    return options.debug_dir or os.environ.get("FLASHLIGHT_DEBUG_DIR") or None


def dump_segment(root: str, name: str, report: SegmentReport, fallbacks: list[tuple[str, str]]) -> None:
    """Write ``report`` and the graph's ``fallbacks`` under ``root``, and log where."""
    out = _write(root, name, report, fallbacks)
    if out is None:
        log.warning("flashlight: cannot write debug output to %s", root)
    else:
        log.info("flashlight: wrote the compilation of %s to %s", name, out)


def _write(root: str, name: str, report: SegmentReport, fallbacks: list[tuple[str, str]]) -> Path | None:
    """Every stage, decision, kernel and fallback of one compiled program, as files in a directory
    (``<root>/<name>_<k>``); returns it, or None if it cannot be written."""
    base = Path(root)
    k = 0
    while (base / f"{name}_{k}").exists():
        k += 1
    out = base / f"{name}_{k}"
    program = report.program
    try:
        out.mkdir(parents=True)
        for i, (stage, text) in enumerate(report.stages):
            (out / f"{i:02d}_{stage}.ir").write_text(text + "\n")
        (out / "decisions.txt").write_text(format_proofs(program.proofs if program is not None else ()) + "\n")
        for kern in report.kernels:
            (out / f"{kern.name}.py").write_text(kern.source)
        (out / "fallbacks.txt").write_text("\n".join(f"{op}: {why}" for op, why in fallbacks) + "\n")
        if report.error:
            (out / "error.txt").write_text(report.error + "\n")
    except OSError:
        return None
    return out
