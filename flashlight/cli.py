"""The command line, in the manner of ``mlir-opt``: ``python -m flashlight {opt,explain,passes}``.

* ``opt FILE --passes PIPELINE`` parses IR text (see ``docs/ir.md``), runs a pass pipeline with
  :func:`flashlight.passes.run_pipeline` and prints the result; ``--print-after-all`` prints
  every stage and ``--proofs`` the legality decisions the passes recorded.
* ``explain SCRIPT.py:FN --shapes ...`` imports a PyTorch function, makes random inputs and prints
  :func:`flashlight.explain` for it.
* ``passes [NAME ...]`` lists the declared passes with their options (or documents the named
  ones: summary, options, legality argument); ``passes --markdown`` prints the reference section
  of ``docs/passes.md``, generated from the declarations.

Every entry point is :func:`main`, which takes ``argv`` and returns the exit status: 0 on success,
1 on an error in the input (``FILE:LINE:COL: error: ...`` for IR syntax errors), 2 on a usage error.

.. autofunction:: main
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import re
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flashlight.report import format_proofs

__all__ = ["CLIError", "load_function", "main", "parse_shapes", "pass_summary"]

PROG = "python -m flashlight"

DESCRIPTION = """\
flashlight: plain PyTorch compiled to fused Triton kernels through an affine loop-nest IR,
with every transformation proved legal by isl or an algebraic lemma.

This tool drives the compiler from the shell: run passes on IR text (opt), see what the
compiler does with a PyTorch function (explain), and list the passes (passes)."""

EPILOG = """\
examples:
  # round trip (parse, verify, print) and run passes on IR text; '-' reads stdin
  python -m flashlight opt examples/softmax_pv.fl
  python -m flashlight opt examples/softmax_pv.fl --passes 'fuse-reductions{block_limit=4},contract-buffers'
  python -m flashlight opt examples/softmax_pv.fl --passes default --print-after-all --proofs
  cat examples/softmax_pv.fl | python -m flashlight opt - --passes inline -o out.fl

  # what the compiler does with a PyTorch function (random inputs of these shapes)
  python -m flashlight explain examples/attention.py:attention --shapes 2x3x77x16,2x3x77x16,2x3x77x16
  python -m flashlight explain examples/attention.py:doc_attention --shapes 1x2x64x16,1x2x64x16,1x2x64x16,1x64:int64

  # the passes, their options and legality arguments
  python -m flashlight passes
  python -m flashlight passes fuse-reductions

Pipelines are comma-separated pass names with optional {key=value,...} options, e.g.
'inline,masks-to-domains,fuse-reductions{block_limit=64},tile{block_m=32,block_n=32}';
'default' stands for the compiler's default pipeline.
Logging: --log debug, or FLASHLIGHT_LOG=debug in the environment (see docs/passes.md).
Docs: docs/ir.md (the IR), docs/passes.md (the passes), docs/tutorial-*.md."""


class CLIError(Exception):
    """An error in the user's input, reported as ``[WHERE: ]error: MESSAGE`` with exit status 1."""

    def __init__(self, message: str, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where


# {{{ pipelines

_PASS_ITEM = r"\s*[\w-]+\s*(?:\{[^{}]*\})?\s*"
_PIPELINE_RE = re.compile(rf"(?:{_PASS_ITEM}(?:,{_PASS_ITEM})*)?")


def resolve_pipeline(spec: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse and check a pipeline: syntax, pass names, option names and types (the declarations).

    ``default`` stands for :data:`flashlight.passes.DEFAULT_PIPELINE`.
    """
    from flashlight import passes

    spec = spec.strip()
    if spec == "default":
        spec = passes.DEFAULT_PIPELINE
    if not _PIPELINE_RE.fullmatch(spec):
        raise CLIError(f"malformed pipeline {spec!r}; expected 'pass,pass{{option=value,...}},...'")
    try:
        return passes.parse_pipeline(spec)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def pass_options(name: str) -> dict[str, Any]:
    """Declared options of a registered pass with their defaults."""
    from flashlight.passes import lookup

    return {o.name: o.default for o in lookup(name).options()}


def format_step(name: str, options: dict[str, Any]) -> str:
    from flashlight.passes import format_pipeline

    return format_pipeline([(name, options)])


def pass_doc(name: str) -> str:
    """The docstring of the pass's module: what it does and its legality argument."""
    from flashlight.passes import lookup

    return lookup(name).legality() or "(undocumented)"


def pass_summary(name: str) -> str:
    """The pass's one-line summary (its declaration's docstring)."""
    from flashlight.passes import lookup

    return lookup(name).summary()

# }}}


# {{{ opt

def _read_source(path: str) -> tuple[str, str]:
    """``(display name, text)`` of FILE, or of stdin for ``-``."""
    if path == "-":
        return "<stdin>", sys.stdin.read()
    try:
        return path, Path(path).read_text()
    except OSError as exc:
        raise CLIError(exc.strerror or str(exc), where=path) from None


def format_parse_error(where: str, text: str, err: Any) -> str:
    """``FILE:LINE:COL: error: message``, then the offending line and a caret under the column."""
    out = [f"{where}:{err.line}:{err.column}: error: {err.message}"]
    lines = text.splitlines()
    if 1 <= err.line <= len(lines):
        src = lines[err.line - 1]
        pad = "".join(c if c == "\t" else " " for c in src[: max(err.column - 1, 0)])
        out += [src, pad + "^"]
    return "\n".join(out)


def cmd_opt(args: argparse.Namespace) -> int:
    from flashlight import ir, passes
    from flashlight.ir.parser import ParseError

    where, text = _read_source(args.file)
    steps = resolve_pipeline(args.passes)
    try:
        program = ir.parse(text)
    except ParseError as err:
        print(format_parse_error(where, text, err), file=sys.stderr)
        return 1
    if args.verify:
        try:
            ir.verify(program)
        except ir.VerificationError as exc:
            raise CLIError(str(exc), where=where) from None

    out = sys.stdout
    if args.print_after_all:
        print(f"-- input --\n{program}", file=out)
    done: list[str] = []

    def on_stage(name: str, prog: Any) -> None:
        label = format_step(*steps[len(done)])
        done.append(label)
        if args.print_after_all:
            print(f"\n-- after {label} --\n{prog}", file=out)

    try:
        result = passes.run_pipeline(program, steps, on_stage=on_stage)
    except BrokenPipeError:
        raise
    except Exception as exc:  # a pass refused the program or the verifier rejected its output
        out.flush()
        failed = format_step(*steps[len(done)]) if len(done) < len(steps) else "?"
        raise CLIError(f"pass {failed} failed: {type(exc).__name__}: {exc}", where=where) from None

    if args.output:
        Path(args.output).write_text(str(result) + "\n")
    elif not args.print_after_all:
        print(result, file=out)
    if args.proofs:
        print(f"\n-- legality decisions --\n{format_proofs(result.proofs)}", file=out)
    return 0

# }}}


# {{{ explain

_DTYPE_ALIASES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64",
                  "i64": "int64", "i32": "int32", "i16": "int16", "i8": "int8", "u8": "uint8", "b1": "bool",
                  "float": "float32", "half": "float16", "double": "float64", "long": "int64", "int": "int32"}


def torch_dtype(name: str) -> Any:
    """``float32`` / ``bf16`` / ``int64`` ... -> the torch dtype."""
    import torch

    key = _DTYPE_ALIASES.get(name.strip(), name.strip())
    dt = getattr(torch, key, None)
    if not isinstance(dt, torch.dtype):
        raise CLIError(f"unknown dtype {name!r}; e.g. float32, float16, bfloat16, int64, bool")
    return dt


def parse_shapes(spec: str, default_dtype: str = "float32") -> list[tuple[tuple[int, ...], Any]]:
    """``"2x3x77x16,77:int64,scalar"`` -> ``[((2, 3, 77, 16), float32), ((77,), int64), ((), float32)]``."""
    out = []
    for item in spec.split(","):
        shape_text, _, dtype_text = item.strip().partition(":")
        dtype = torch_dtype(dtype_text or default_dtype)
        if shape_text in ("scalar", "()"):
            out.append(((), dtype))
            continue
        if not re.fullmatch(r"\d+(x\d+)*", shape_text):
            raise CLIError(f"malformed shape {item.strip()!r}; expected sizes joined by 'x' (2x3x77x16), "
                           "optionally ':dtype', or 'scalar'")
        out.append((tuple(int(d) for d in shape_text.split("x")), dtype))
    return out


def random_inputs(shapes: Sequence[tuple[tuple[int, ...], Any]], device: str, seed: int = 0) -> list[Any]:
    """Standard normal floats, integers in ``[0, 4)``, random booleans; reproducible from ``seed``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for shape, dtype in shapes:
        if dtype.is_floating_point:
            t = torch.randn(shape, generator=g).to(dtype)
        elif dtype == torch.bool:
            t = torch.randint(0, 2, shape, generator=g).bool()
        else:
            t = torch.randint(0, 4, shape, generator=g).to(dtype)
        out.append(t.to(device))
    return out


def load_function(target: str) -> Callable:
    """Import ``FN`` from ``SCRIPT.py:FN`` (the script runs as a module, not as ``__main__``)."""
    path_text, sep, fn_name = target.rpartition(":")
    if not sep or not path_text or not fn_name:
        raise CLIError(f"expected SCRIPT.py:FUNCTION, got {target!r}")
    path = Path(path_text)
    if not path.is_file():
        raise CLIError("no such file", where=path_text)
    module_name = "_flashlight_script_" + re.sub(r"\W", "_", path.stem)
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CLIError("cannot import this file as a Python module", where=path_text)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    script_dir = str(path.resolve().parent)
    if script_dir not in sys.path:
        sys.path.insert(0, script_dir)  # as `python SCRIPT.py` would, for imports of its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        traceback.print_exc()
        raise CLIError(f"importing the script failed: {type(exc).__name__}: {exc}", where=path_text) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        names = sorted(n for n, v in vars(module).items()
                       if inspect.isfunction(v) and v.__module__ == module_name)
        raise CLIError(f"no function {fn_name!r}; the script defines: {', '.join(names) or 'none'}",
                       where=path_text)
    return fn


# explain's flags: flashlight.Options fields, which compile/explain give these pass options as overrides
_FLAG_OPTIONS = {"block_m": ("tile", "block_m"), "block_n": ("tile", "block_n"),
                 "block_limit": ("fuse-reductions", "block_limit")}


def explain_options(args: argparse.Namespace) -> Any:
    """:class:`flashlight.Options` from the flags. ``--block-m`` (etc.) set Options fields, which the
    passes get as overrides; an option written in ``--passes`` wins over them (the precedence of
    :mod:`flashlight.passes.declare`), so a flag that contradicts one is an error, not ignored."""
    import flashlight
    from flashlight.passes import format_pipeline

    fields: dict[str, Any] = {}
    steps: list[tuple[str, dict[str, Any]]] = []
    if args.passes is not None:
        steps = resolve_pipeline(args.passes)
        fields["pipeline"] = format_pipeline(steps)
    for flag, (pass_name, key) in _FLAG_OPTIONS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        for name, opts in steps:
            if name == pass_name and opts.get(key, value) != value:
                raise CLIError(f"--{flag.replace('_', '-')} {value} contradicts {format_step(name, opts)} in "
                               "--passes, whose options win over flags; give one of them")
        fields[flag] = value
    return flashlight.Options(**fields)


def cmd_explain(args: argparse.Namespace) -> int:
    import flashlight

    fn = load_function(args.target)
    shapes = parse_shapes(args.shapes, args.dtype)
    try:
        inspect.signature(fn).bind(*range(len(shapes)))
    except TypeError as exc:
        raise CLIError(f"{fn.__name__} cannot take {len(shapes)} inputs (--shapes gives {len(shapes)}): {exc}") \
            from None
    except ValueError:
        pass  # no signature (a builtin): let the call decide
    options = explain_options(args)
    inputs = random_inputs(shapes, args.device, args.seed)
    try:
        ex = flashlight.explain(fn, *inputs, options=options)
    except Exception as exc:
        traceback.print_exc()
        raise CLIError(f"explain failed: {type(exc).__name__}: {exc}") from None
    print(ex.full() if args.full else ex)
    return 0

# }}}


# {{{ passes

def cmd_passes(args: argparse.Namespace) -> int:
    from flashlight.passes import DEFAULT_PIPELINE, lookup, registered
    from flashlight.passes.declare import reference_markdown

    if args.markdown:
        print(reference_markdown())
        return 0
    if args.names:
        for k, name in enumerate(args.names):
            try:
                cls = lookup(name)
            except ValueError as exc:
                raise CLIError(str(exc)) from None
            module = cls.__module__.replace(".", "/") + ".py"
            print(("\n" if k else "") + f"{name}\n{'=' * len(name)}\n{cls.summary()}\n")
            print("options:" + ("\n" + describe_options(cls, 2) if cls.options() else " none"))
            legality = cls.legality().removeprefix(cls.summary()).strip("\n")
            print(f"\nlegality argument ({module}):\n{legality or '(undocumented)'}")
        return 0
    width = max(len(n) for n in registered()) + 2
    for name, cls in registered().items():
        print(f"{name:<{width}}{cls.summary()}")
        if cls.options():
            print(describe_options(cls, width))
    print(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
    return 0


def describe_options(cls: Any, indent: int) -> str:
    """Each option as ``name: type = default`` over its meaning, wrapped to 100 columns."""
    lines = []
    for o in cls.options():
        lines.append(" " * indent + o.describe())
        lines += textwrap.wrap(o.doc, width=100, initial_indent=" " * (indent + 4),
                               subsequent_indent=" " * (indent + 4))
    return "\n".join(lines)

# }}}


# {{{ argument parsing and main

class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def build_parser() -> argparse.ArgumentParser:
    import flashlight

    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"flashlight {flashlight.__version__}")
    parser.add_argument("--log", metavar="LEVEL", help="log flashlight's progress to stderr at LEVEL "
                        "(debug, info, warning, error); the same as FLASHLIGHT_LOG=LEVEL")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    opt = sub.add_parser(
        "opt", formatter_class=_Formatter, help="run passes on IR text and print the result",
        description="Parse IR text, verify it, run a pass pipeline and print the resulting IR.\n"
                    "Without --passes this is a round trip: the output is the input, canonically printed.",
        epilog="examples:\n"
               "  python -m flashlight opt examples/softmax_pv.fl --passes 'fuse-reductions{block_limit=4}' --proofs\n"
               "  python -m flashlight opt examples/softmax_pv.fl --passes default --print-after-all\n\n"
               "Syntax errors are reported as FILE:LINE:COL: error: MESSAGE (exit status 1).")
    opt.add_argument("file", nargs="?", default="-", metavar="FILE",
                     help="IR text to read; '-' (the default) reads stdin")
    opt.add_argument("-p", "--passes", default="", metavar="PIPELINE",
                     help="comma-separated passes with optional {key=value,...} options, or 'default' "
                          "(see `passes`); empty: no pass")
    opt.add_argument("--print-after-all", action="store_true",
                     help="print the input and the IR after every pass (the last stage is the result)")
    opt.add_argument("--proofs", action="store_true",
                     help="after the IR, print the legality decisions the passes recorded "
                          "(transformation, legal or refused, reason, lemma, isl witness and relation)")
    opt.add_argument("-o", "--output", metavar="OUT", help="write the resulting IR to OUT instead of stdout")
    opt.add_argument("--no-verify", dest="verify", action="store_false",
                     help="do not verify the input program (the passes' outputs are always verified)")
    opt.set_defaults(run=cmd_opt)

    ex = sub.add_parser(
        "explain", formatter_class=_Formatter, help="explain how a PyTorch function compiles",
        description="Import FUNCTION from SCRIPT.py (run as a module: its `if __name__ == '__main__'` "
                    "block does not run),\ncall it on random inputs of the given shapes and print "
                    "flashlight.explain: its kernels, buffers in\nglobal memory, fallbacks and legality decisions "
                    "(with --full: the IR after every pass and the\nkernels' source). No kernel is launched.",
        epilog="examples:\n"
               "  python -m flashlight explain examples/attention.py:attention --shapes 2x3x77x16,2x3x77x16,2x3x77x16\n"
               "  python -m flashlight explain examples/attention.py:attention --shapes 1x2x64x16,1x2x64x16,1x2x64x16 "
               "--dtype bfloat16 --device cuda\n"
               "  python -m flashlight explain examples/attention.py:doc_attention --shapes 1x2x64x16,1x2x64x16,1x2x64x16,1x64:int64\n\n"
               "Inputs: floats are standard normal, integers uniform in [0, 4), booleans uniform.")
    ex.add_argument("target", metavar="SCRIPT.py:FUNCTION", help="the function to explain")
    ex.add_argument("--full", action="store_true",
                    help="after the summary, the IR after every pass, the evidence of each decision and "
                         "the kernels' source")
    ex.add_argument("--shapes", required=True, metavar="SHAPES",
                    help="one shape per positional input, comma-separated; sizes joined by 'x' (2x3x77x16), "
                         "optionally with a dtype (77:int64), or 'scalar'")
    ex.add_argument("--dtype", default="float32", help="dtype of inputs without their own (default: float32)")
    ex.add_argument("--device", default="cpu",
                    help="device of the inputs (default: cpu; kernels for cpu target Triton's interpreter)")
    ex.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default: 0)")
    ex.add_argument("-p", "--passes", metavar="PIPELINE",
                    help="pass pipeline instead of the default one; options written in it win over the flags below")
    ex.add_argument("--block-m", type=int, metavar="N", help="tile of the tiled grid dimension (query rows)")
    ex.add_argument("--block-n", type=int, metavar="N", help="tile of serial loops (key columns)")
    ex.add_argument("--block-limit", type=int, metavar="N",
                    help="largest dimension kept whole inside a program "
                         f"(default: {flashlight.Options().block_limit})")
    ex.set_defaults(run=cmd_explain)

    ps = sub.add_parser(
        "passes", formatter_class=_Formatter, help="list the passes, or document the named ones",
        description="Without NAME: every registered pass with its summary, its options (type, default,\n"
                    "meaning) and the default pipeline. With NAMEs: each pass's summary, options and\n"
                    "legality argument (its module's docstring: what it does and why it is legal).")
    ps.add_argument("names", nargs="*", metavar="NAME", help="passes to document in full")
    ps.add_argument("--markdown", action="store_true",
                    help="print the reference section of docs/passes.md, generated from the declarations")
    ps.set_defaults(run=cmd_passes)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    from flashlight import log

    if args.log:
        try:
            log.configure(args.log)
        except ValueError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except CLIError as exc:
        sys.stdout.flush()
        print(f"{exc.where or PROG}: error: {exc.message}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`... | head`): silence the final flush too
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0

# }}}
