"""Passes as declared objects, the registry of them, and pipelines of them.

A pass is a frozen dataclass that subclasses :class:`Pass`, in the manner of xDSL's
``ModulePass``: its class attribute ``name`` is its name in pipelines, its docstring a one-line
summary, its fields its typed options (declared with :func:`option`: a default and what it
means), and its module's docstring the legality argument. Declaring the class registers it::

    @dataclass(frozen=True)
    class Tile(Pass):
        \"\"\"Tile every kernel: tile sizes for grid and serial loops, whole-extent tiles for block loops.\"\"\"

        name: ClassVar[str] = "tile"
        block_m: int = option(64, "tile of the grid iterators that are tiled")

        def apply(self, program: Program) -> Program:
            return tile(program, block_m=self.block_m)

The plain function (``tile(program, block_m=64)``) stays the public API; ``apply`` calls it.
Options are ``int``, ``float``, ``bool`` or ``str``; a pipeline's text is read by the declared
type, and an unknown option or a value of the wrong type raises a ``ValueError`` that lists the
pass's options.

Option precedence
-----------------
A pass in a pipeline gets each option from, the later winning:

1. the default declared on the pass;
2. ``overrides`` given to :func:`run_pipeline` (``{"tile": {"block_m": 128}}``), which
   :func:`flashlight.compile` builds from :class:`flashlight.Options` (``block_limit``,
   ``block_m``, ``block_n``): settings of the whole compilation;
3. options written in the pipeline text (``tile{block_m=32}``): a request about one step of one
   pipeline, the most specific there is.

:func:`configure` is the one place that applies this rule. A pass given as a :class:`Pass`
object rather than text is taken as written whole: overrides do not change it.

The registry lists passes in a defined order: those of :data:`DEFAULT_PIPELINE` in pipeline
order, then any other in the order of declaration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import re
import sys
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from flashlight.ir.nodes import Program
from flashlight.ir.verify import verify

__all__ = [
    "DEFAULT_PIPELINE", "OptionInfo", "Pass", "configure", "format_pipeline", "isolated_registry", "lookup",
    "option", "parse_pipeline", "reference_markdown", "registered", "remove_passes", "resolve_pipeline",
    "run_pipeline",
]

DEFAULT_PIPELINE = ("inline,exchange-sums,defer-normalization,inline,masks-to-domains,elide-roundings,restrict-to-demand,"
                    "merge-sums,stage-reductions,join-dims,split-reductions,fuse-reductions,split-wide-state,factor-scales,rebase-exponentials,contract-buffers,pack-groups,tile,"
                    "scale-after-fold,spread-conversions,tile-ranges,hoist-tile-bounds,bound-guard-tiles,order-launches,"
                    "supersede-stores")

OPTION_TYPES = (int, float, bool, str)
OptionValue = int | float | bool | str
Step = tuple[str, Mapping[str, Any]]


# {{{ declarations

def option(default: OptionValue, doc: str) -> Any:
    """A pass option: ``block_m: int = option(64, "tile of ...")``; ``doc`` says what it means."""
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class OptionInfo:
    """One declared option of a pass."""

    name: str
    type: type
    default: OptionValue
    doc: str

    def describe(self) -> str:
        return f"{self.name}: {self.type.__name__} = {format_value(self.default)}"


_REGISTRY: dict[str, type[Pass]] = {}


@dataclass(frozen=True)
class Pass:
    """A ``Program -> Program`` transformation with typed options (see the module docstring)."""

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            return  # an abstract base of passes
        if not (cls.__dict__.get("__doc__") or "").strip():
            raise TypeError(f"pass {cls.name!r} ({cls.__qualname__}): give it a one-line summary as its docstring")
        old = _REGISTRY.get(cls.name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"pass name {cls.name!r} of {cls.__module__}.{cls.__qualname__} is taken by "
                             f"{old.__module__}.{old.__qualname__}")
        _REGISTRY[cls.name] = cls  # a module run again (a reload) declares its pass again

    def apply(self, program: Program) -> Program:
        """The transformed program; ``program`` itself is never changed."""
        raise NotImplementedError(f"pass {self.name!r} declares no apply")

    @classmethod
    def options(cls) -> tuple[OptionInfo, ...]:
        """The declared options, in declaration order."""
        if "__dataclass_fields__" not in cls.__dict__:
            raise TypeError(f"pass {cls.name!r}: declare {cls.__qualname__} with @dataclass(frozen=True)")
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            kind = hints.get(f.name)
            if kind not in OPTION_TYPES:
                raise TypeError(f"option {f.name} of pass {cls.name!r} has type {kind!r}; "
                                f"options are {', '.join(t.__name__ for t in OPTION_TYPES)}")
            if f.default is dataclasses.MISSING or not f.metadata.get("doc"):
                raise TypeError(f"option {f.name} of pass {cls.name!r}: declare it with option(default, doc)")
            out.append(OptionInfo(f.name, kind, f.default, f.metadata["doc"]))
        return tuple(out)

    @classmethod
    def summary(cls) -> str:
        """The first line of the class docstring."""
        return inspect.cleandoc(cls.__doc__ or "").splitlines()[0]

    @classmethod
    def legality(cls) -> str:
        """The docstring of the pass's module: what it does and why that is legal."""
        module = sys.modules.get(cls.__module__)
        return inspect.cleandoc(getattr(module, "__doc__", None) or "")

    def changed_options(self) -> dict[str, OptionValue]:
        """The options whose values differ from the declared defaults."""
        return {o.name: getattr(self, o.name) for o in self.options() if getattr(self, o.name) != o.default}

    def __str__(self) -> str:
        """The pass as pipeline text: ``tile{block_m=32}`` (options at their defaults left out)."""
        return format_pipeline([(self.name, self.changed_options())])


def registered() -> dict[str, type[Pass]]:
    """Every declared pass by name: the default pipeline's in its order, then the others as declared."""
    order = list(dict.fromkeys(DEFAULT_PIPELINE.split(",")))
    known = [n for n in order if n in _REGISTRY] + [n for n in _REGISTRY if n not in order]
    return {n: _REGISTRY[n] for n in known}


def lookup(name: str) -> type[Pass]:
    """The pass declared as ``name``; a ValueError that lists the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown pass {name!r}; known passes: {', '.join(registered())}") from None


@contextlib.contextmanager
def isolated_registry() -> Iterator[None]:
    """Passes declared inside the block are forgotten after it (tests and docs that declare passes)."""
    saved = dict(_REGISTRY)
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(saved)


class FunctionView(Mapping[str, Callable[..., Program]]):
    """``name -> function(program, **options)`` over the registry: the old ``PASSES`` dict, read-only."""

    def __getitem__(self, name: str) -> Callable[..., Program]:
        cls = _REGISTRY[name]

        def run(program: Program, **options: Any) -> Program:
            return configure(cls.name, options).apply(program)

        run.__name__ = run.__qualname__ = cls.name.replace("-", "_")
        run.__doc__, run.__module__ = cls.__doc__, cls.__module__
        return run

    def __iter__(self) -> Iterator[str]:
        return iter(registered())

    def __len__(self) -> int:
        return len(_REGISTRY)

# }}}


# {{{ options and pipelines

def format_value(value: OptionValue) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _options_listing(cls: type[Pass]) -> str:
    opts = cls.options()
    return "its options: " + ", ".join(o.describe() for o in opts) if opts else "it has no options"


def _option_info(cls: type[Pass], key: str) -> OptionInfo:
    for o in cls.options():
        if o.name == key:
            return o
    raise ValueError(f"pass {cls.name!r} has no option {key!r}; {_options_listing(cls)}")


def _read_text(cls: type[Pass], opt: OptionInfo, text: str) -> OptionValue:
    """An option value written in a pipeline, read by the option's declared type."""
    try:
        if opt.type is bool:
            return {"true": True, "false": False, "1": True, "0": False}[text.lower()]
        return opt.type(text)
    except (KeyError, ValueError):
        raise ValueError(f"option {opt.name} of pass {cls.name!r} is {_a(opt.type)}, got {text!r}; "
                         f"{_options_listing(cls)}") from None


def _checked(cls: type[Pass], key: str, value: Any) -> OptionValue:
    """``value`` for option ``key`` of ``cls``, or a ValueError: unknown option, wrong type."""
    opt = _option_info(cls, key.replace("-", "_"))
    if isinstance(value, str) and opt.type is not str:
        return _read_text(cls, opt, value)
    if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not opt.type:
        raise ValueError(f"option {opt.name} of pass {cls.name!r} is {_a(opt.type)}, got {value!r}; "
                         f"{_options_listing(cls)}")
    return value


def _a(kind: type) -> str:
    return {int: "an int", float: "a float", bool: "a bool (true or false)", str: "a string"}[kind]


def configure(name: str, written: Mapping[str, Any] | None = None,
              overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Pass:
    """The pass ``name`` with its options: declared defaults, then ``overrides[name]``, then
    ``written`` (the options written in the pipeline), the later winning. The one place of
    the precedence rule (see the module docstring); every value is checked against its type."""
    cls = lookup(name)
    chosen = {}
    for source in ((overrides or {}).get(name, {}), written or {}):
        for key, value in source.items():
            chosen[key.replace("-", "_")] = _checked(cls, key, value)
    return cls(**chosen)


_ITEM = re.compile(r"\s*([\w-]+)\s*(?:\{([^}]*)\})?\s*(,|$)")


def parse_pipeline(spec: str) -> list[tuple[str, dict[str, OptionValue]]]:
    """``"a,b{x=1,y=2}"`` -> ``[("a", {}), ("b", {"x": 1, "y": 2})]``, values read by their declared
    types; malformed text, an unknown pass or option and a value of the wrong type raise ValueError."""
    out = []
    pos = 0
    while pos < len(spec):
        m = _ITEM.match(spec, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"malformed pipeline at character {pos}: {spec[pos:]!r}")
        name, args = m.group(1), {}
        cls = lookup(name)
        for part in filter(None, (x.strip() for x in (m.group(2) or "").split(","))):
            key, eq, val = part.partition("=")
            if not eq or not key.strip() or not val.strip() or " " in val.strip():
                raise ValueError(f"malformed option {part!r} of pass {name!r}; write key=value")
            key = key.strip().replace("-", "_")
            args[key] = _checked(cls, key, val.strip())
        out.append((name, args))
        pos = m.end()
        if m.group(3) == "" and pos < len(spec):
            raise ValueError(f"malformed pipeline at character {pos}: {spec[pos:]!r}")
    return out


def format_pipeline(steps: Sequence[Step]) -> str:
    """The inverse of :func:`parse_pipeline`."""
    return ",".join(name + ("{" + ",".join(f"{k}={format_value(v)}" for k, v in opts.items()) + "}" if opts else "")
                    for name, opts in steps)


def remove_passes(spec: str, names: set[str] | frozenset[str]) -> str:
    """``spec`` without the steps of the named passes (``Options(exact_roundings=True)`` drops
    ``elide-roundings``)."""
    return format_pipeline([(n, o) for n, o in parse_pipeline(spec) if n not in names])


def resolve_pipeline(spec: str | Sequence[Step | Pass],
                     overrides: Mapping[str, Mapping[str, Any]] | None = None) -> list[Pass]:
    """Every step of ``spec`` as a configured :class:`Pass` (see :func:`configure`). Overrides name
    registered passes and declared options (a typo raises), but need not be in the pipeline."""
    for name, opts in (overrides or {}).items():
        cls = lookup(name)
        for key, value in opts.items():
            _checked(cls, key, value)
    steps = parse_pipeline(spec) if isinstance(spec, str) else spec
    return [step if isinstance(step, Pass) else configure(step[0], step[1], overrides) for step in steps]


def run_pipeline(program: Program, spec: str | Sequence[Step | Pass] = DEFAULT_PIPELINE,
                 on_stage: Callable[[str, Program], None] | None = None,
                 overrides: Mapping[str, Mapping[str, Any]] | None = None) -> Program:
    """Run passes in order, verifying after each; ``on_stage(name, program)`` sees every stage.

    ``spec`` is pipeline text, ``(name, options)`` pairs or :class:`Pass` objects; ``overrides``
    maps pass names to options, which options written in the pipeline beat (see :func:`configure`).
    Every step is checked before the first one runs."""
    for step in resolve_pipeline(spec, overrides):
        program = _apply(step, program, program.proofs)
        if on_stage is not None:
            on_stage(step.name, program)
    return program


def _apply(step: Pass, program: Program, proofs: tuple) -> Program:
    """``verify(step.apply(program))``, looked up where it ran before on an equal program: a pass
    is a function of the (immutable) program and its options, and the autotuner compiles one
    program for several tile sizes; every pass before ``tile`` (fuse-reductions' isl proofs:
    seconds for a prefix-LM mask, 12 s for a four-layer Llama) would rerun unchanged. A program's
    proofs are not part of its equality, and no pass reads them: an equal program reached through
    other decisions (split-reductions' refusal counts programs with the candidate's tile) gets the
    same result with its own proofs and what the step added."""
    out, seen, added = _applied(step, program)
    if seen == proofs:
        return out
    if added is None:  # the step rewrote the decisions before it: no result to share
        return verify(step.apply(program))
    return out.replace(proofs=proofs + added)


@functools.lru_cache(maxsize=64)
def _applied(step: Pass, program: Program) -> tuple[Program, tuple, tuple | None]:
    """The result, the proofs of the program it was computed from, and the proofs the step added."""
    out = verify(step.apply(program))
    n = len(program.proofs)
    return out, program.proofs, (out.proofs[n:] if out.proofs[:n] == program.proofs else None)

# }}}


# {{{ documentation

REFERENCE_BEGIN = "<!-- BEGIN reference generated by flashlight.passes.declare.reference_markdown() -->"
REFERENCE_END = "<!-- END reference -->"
REGENERATE = ("python -c 'from flashlight.passes.declare import update_reference; "
              "update_reference(\"docs/passes.md\")'")


def reference_markdown() -> str:
    """The per-pass reference of docs/passes.md, from the declarations: name, summary, module,
    options with type, default and meaning."""
    out = [REFERENCE_BEGIN, "", "| pass | what it does | declared in |", "|---|---|---|"]
    for name, cls in registered().items():
        path = cls.__module__.replace(".", "/") + ".py"
        out.append(f"| `{name}` | {_cell(cls.summary())} | [`{path}`](../{path}) (`{cls.__qualname__}`) |")
    out += ["", "| pass | option | type | default | meaning |", "|---|---|---|---|---|"]
    for name, cls in registered().items():
        for o in cls.options():
            out.append(f"| `{name}` | `{o.name}` | {o.type.__name__} | {format_value(o.default)} | {_cell(o.doc)} |")
    out += ["", REFERENCE_END]
    return "\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def replace_reference(doc: str) -> str:
    """``doc`` with the text between the reference markers (markers included) generated anew."""
    begin, end = doc.find(REFERENCE_BEGIN), doc.find(REFERENCE_END)
    if begin < 0 or end < begin:
        raise ValueError(f"no generated reference ({REFERENCE_BEGIN} ... {REFERENCE_END}) in the document")
    return doc[:begin] + reference_markdown() + doc[end + len(REFERENCE_END):]


def update_reference(path: str) -> None:
    """Regenerate the reference section of the markdown file at ``path`` in place."""
    with open(path) as f:
        doc = f.read()
    with open(path, "w") as f:
        f.write(replace_reference(doc))

# }}}
