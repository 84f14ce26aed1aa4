"""The disk cache of compiled program segments, and the code version that every cache entry is for.

A segment compiles to its final IR and kernel sources; both are kept under
``<cache dir>/programs/<key>.json`` (the cache directory is the launcher's,
:func:`flashlight.codegen.launcher.cache_dir`), keyed by the lifted program, the options, the
target, the input strides, the versions of torch and Triton, and :func:`code_version`: a digest
of flashlight's own source, so that no entry outlives the code that wrote it. The autotuner keys
its stored choices by the same code version. An entry that cannot be read is compiled again, and
one that cannot be written is only a warning.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from pathlib import Path

import torch

from flashlight.codegen import launcher
from flashlight.codegen.triton import KernelSource
from flashlight.frontend.segments import ProgramSegment
from flashlight.ir import parse
from flashlight.ir.nodes import Program
from flashlight.options import Options

log = logging.getLogger("flashlight")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of flashlight's own source: a cached compilation is valid only for the same code."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def segment_key(seg: ProgramSegment, o: Options, target: str) -> str:
    import triton  # only once a segment is compiled: importing flashlight does not load Triton

    # a symbolic stride is named, never evaluated: int() of a SymInt makes Dynamo specialise it
    strides = [tuple(str(x) if isinstance(x, torch.SymInt) else int(x) for x in n.meta["val"].stride())
               for n in seg.inputs]
    text = "\n".join([str(seg.program), repr(o), target, repr(strides), torch.__version__, triton.__version__,
                      code_version()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _path(seg: ProgramSegment, o: Options, target: str) -> Path:
    return launcher.cache_dir() / "programs" / f"{segment_key(seg, o, target)}.json"


def load_segment(seg: ProgramSegment, o: Options, target: str) -> tuple[Program, list[KernelSource]] | None:
    """The final program and kernels of ``seg`` compiled with ``o`` for ``target``, if cached."""
    path = _path(seg, o, target)
    try:
        data = json.loads(path.read_text())
        return parse(data["program"]), [KernelSource(**k) for k in data["kernels"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, or corrupt: compile again (and overwrite it)


def store_segment(seg: ProgramSegment, o: Options, target: str, final: Program,
                  kernels: list[KernelSource]) -> None:
    path = _path(seg, o, target)
    data = {"program": str(final), "kernels": [dataclasses.asdict(k) for k in kernels]}
    try:
        launcher.write_atomic(path, json.dumps(data))
    except OSError as exc:
        log.warning("flashlight: cannot cache compiled programs in %s (%s); compiling without a cache",
                    path.parent, exc)
