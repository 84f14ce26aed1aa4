"""Loading generated kernels and launching them: on the GPU, or under Triton's interpreter.

Kernel sources are written to the on-disk cache (``$FLASHLIGHT_CACHE_DIR``, else
``$XDG_CACHE_HOME/flashlight`` or ``~/.cache/flashlight``) under a name derived from their
hash, atomically (write to a temporary file, then rename), and imported from there: Triton's
JIT reads a kernel's source from its file. CPU tensors run the same kernel through
:class:`triton.runtime.interpreter.InterpretedFunction`, so no environment variable is needed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import keyword
import logging
import os
import sys
import tempfile
import threading
import tokenize
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flashlight.codegen.triton import KernelSource

log = logging.getLogger("flashlight")
_lock = threading.Lock()
_loaded: dict[tuple[str, bool], Any] = {}


def cache_dir() -> Path:
    root = os.environ.get("FLASHLIGHT_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "flashlight"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def interpreter_runs_bf16() -> bool:
    """Whether this Triton's interpreter can make bfloat16 constants (Triton 3.6's cannot: a kernel
    with ``where(c, 2.0, x)`` or ``x * 2`` for a bfloat16 ``x`` raises)."""
    from triton.runtime.interpreter import InterpreterBuilder

    return hasattr(InterpreterBuilder, "get_bf16")


def canonical_source(source: str, name: str) -> str:
    """``source`` with the kernel ``name``, its parameters and its local variables renamed ``k__0``,
    ``k__1``, ... in order of first appearance: two kernels alike up to the names of the tensors
    they read (the same layer of a model, once per layer) have one canonical source. Names bound
    outside the kernel (``tl``, helper functions, builtins), attributes and keyword arguments keep
    theirs."""
    toks = list(tokenize.generate_tokens(io.StringIO(source).readline))
    outside = {t.string for t in toks if t.type == tokenize.NAME} - _kernel_names(toks, name)
    names: dict[str, str] = {}
    out, depth = [], 0
    for i, t in enumerate(toks):
        text = t.string
        if t.type == tokenize.NAME and text not in outside and toks[i - 1].string != "." \
                and not (depth and toks[i + 1].string == "="):
            text = names.setdefault(text, f"k__{len(names)}")
        if t.type == tokenize.OP:
            depth += (text in "([{") - (text in ")]}")
        out.append((t.type, text))
    return tokenize.untokenize(out)


def _kernel_names(toks: list[tokenize.TokenInfo], name: str) -> set[str]:
    """The names the kernel ``name`` binds: itself, its parameters, what it assigns and loops over."""
    bound, inside, depth = {name}, False, 0
    for i, t in enumerate(toks):
        if t.type == tokenize.NAME and t.string == "def":
            inside = toks[i + 1].string == name
        if not inside or t.type != tokenize.NAME or keyword.iskeyword(t.string):
            if t.type == tokenize.OP:
                depth += (t.string in "([{") - (t.string in ")]}")
            continue
        before, after = toks[i - 1].string, toks[i + 1].string
        if before == "for" or (depth == 0 and after == "=" and before != ".") or \
                (depth == 1 and toks[i - 1].string in "(," and after in ",)" and _in_def(toks, i)):
            bound.add(t.string)
    return bound


def _in_def(toks: list[tokenize.TokenInfo], i: int) -> bool:
    """Whether token ``i`` is in the parameter list of a ``def``."""
    while i > 0 and toks[i].string != "(":
        i -= 1
    return i >= 2 and toks[i - 2].string == "def"


def load(kernel: KernelSource, interpret: bool) -> Any:
    """The launchable kernel: a ``JITFunction``, or an ``InterpretedFunction`` for CPU tensors.
    Kernels with one canonical source (:func:`canonical_source`) share one function, so Triton
    compiles it once: a model's layers alike launch the first one's binary with their own
    tensors (arguments are positional, in the order of the parameters)."""
    same = None if kernel.library else canonical_source(kernel.source, kernel.name)
    digest = hashlib.sha256((same or kernel.source).encode()).hexdigest()[:20]
    key = (digest, interpret)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        path = _kernel_path(kernel.name, digest, kernel.source)
        mod_name = f"flashlight_kernels.{kernel.name}_{digest}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        spec.loader.exec_module(module)
        fn = getattr(module, kernel.name)
        if interpret and not kernel.library:
            fn = _interpretable(module, fn)
        _loaded[key] = fn
        return fn


class _InterpretedLanguage:
    """``triton.language`` as seen by an interpreted kernel: its library functions that are
    themselves ``@triton.jit`` functions (``tl.max``, ``tl.sum``, ``tl.sigmoid``) are interpreted
    too, as ``TRITON_INTERPRET=1`` would have made them; everything else is the module's own."""

    def __init__(self) -> None:
        import triton.language as tl

        self._tl = tl
        self._wrapped: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        value = getattr(self._tl, name)
        if isinstance(value, JITFunction):
            if name not in self._wrapped:
                self._wrapped[name] = InterpretedFunction(value.fn)
            return self._wrapped[name]
        return value


def _interpretable(module: Any, jit_fn: Any) -> Any:
    import triton.language
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    module.__dict__["_triton_language"] = triton.language  # the interpreter patches the real module
    module.__dict__["tl"] = _InterpretedLanguage()
    for key, value in list(module.__dict__.items()):  # helpers the kernel calls
        if isinstance(value, JITFunction) and value is not jit_fn:
            module.__dict__[key] = InterpretedFunction(value.fn)
    return InterpretedFunction(jit_fn.fn)


_private_dir: Path | None = None


def _kernel_path(name: str, digest: str, source: str) -> Path:
    """The kernel's source file in the cache, rewritten if absent or corrupt; a private temporary
    directory (with a warning) if the cache cannot be written."""
    global _private_dir
    path = cache_dir() / "kernels" / f"{name}_{digest}.py"
    try:
        if not path.exists() or path.read_text() != source:
            write_atomic(path, source)
        return path
    except OSError as exc:
        if _private_dir is None:
            _private_dir = Path(tempfile.mkdtemp(prefix="flashlight-"))
            log.warning("flashlight: the cache %s is not writable (%s); kernels go to %s and are not kept",
                        cache_dir(), exc, _private_dir)
        path = _private_dir / f"{name}_{digest}.py"
        write_atomic(path, source)
        return path


def tensors_on_cpu(args: list[Any]) -> bool:
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    return first is not None and first.device.type == "cpu"


# Triton's interpreter patches triton.language while it runs a kernel: one kernel at a time.
_interpreter_lock = threading.Lock()


@dataclass
class Launch:
    kernel: KernelSource
    fn: Any

    def __call__(self, tensors: dict[str, torch.Tensor], sizes: Mapping[str, int] | None = None) -> None:
        """Launch over ``tensors``; ``sizes`` binds the size parameters the kernel takes (plain int
        arguments after the tensors) and counts its grid where they decide it."""
        sizes = sizes or {}
        self.kernel.check_sizes(sizes)
        grid = self.kernel.programs(sizes)
        if grid == 0:
            return
        args: list[Any] = [tensors[p] for p in self.kernel.params]
        args += [int(sizes[s]) for s in self.kernel.sizes]
        if self.kernel.library:  # a library call (torch.matmul) on the tensors themselves
            self.fn(*args)
            return
        launch = self.fn[(grid,)]
        if tensors_on_cpu(args):
            import numpy as np

            with _interpreter_lock, np.errstate(all="ignore"):  # masked-out lanes may overflow
                launch(*args, num_warps=self.kernel.num_warps, num_stages=self.kernel.num_stages)
        else:
            # contraction of a multiply and an add into an fma stays on, as every Triton before 3.10
            # defaults to (3.10 turns it off): our kernels are measured and tuned with it
            launch(*args, num_warps=self.kernel.num_warps, num_stages=self.kernel.num_stages,
                   enable_fp_fusion=True)
