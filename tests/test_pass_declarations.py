"""Tests of the pass declarations (:mod:`flashlight.passes.declare`): what every registered pass
must have, typed pipeline options, the one precedence rule, and the docs generated from them."""

from __future__ import annotations

import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

from flashlight import ir, passes
from flashlight.passes import declare
from flashlight.passes.declare import Pass, option

from test_filecheck import files, read

ROOT = Path(__file__).resolve().parent.parent
SOFTMAX_PV = (ROOT / "examples" / "softmax_pv.fl").read_text()
ROW_MAX = """\
program row_max(S: f32[64,128]) -> (m: f32[64])
  for i in 0:64 parallel
    for j in 0:128 reduce
      M: m[i] max= S[i,j]
"""
BUILT_IN = ["inline", "exchange-sums", "defer-normalization", "masks-to-domains", "elide-roundings", "restrict-to-demand",
            "merge-sums", "stage-reductions", "join-dims", "split-reductions", "fuse-reductions", "split-wide-state", "factor-scales", "rebase-exponentials", "contract-buffers", "pack-groups", "tile",
            "scale-after-fold", "spread-conversions", "tile-ranges", "hoist-tile-bounds", "bound-guard-tiles",
            "order-launches", "supersede-stores", "call-library"]
OPT_IN = ["call-library"]  # registered, not in the default pipeline (named in a pipeline to run)


# {{{ what every registered pass has

def test_the_registry_holds_the_built_in_passes_in_pipeline_order() -> None:
    assert list(passes.registered()) == BUILT_IN
    assert set(passes.DEFAULT_PIPELINE.split(",")) == set(BUILT_IN) - set(OPT_IN)
    assert list(passes.PASSES) == BUILT_IN, "the compatibility view follows the registry"


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_pass_states_its_legality_argument(name: str) -> None:
    """The module docstring says what the pass does and, in a paragraph of its own, why it is legal."""
    doc = passes.lookup(name).legality()
    assert len(doc) >= 600, f"{name}: a legality argument of {len(doc)} characters is too thin"
    legality = re.search(r"^(?:\*\*)?Legality\b(.*?)(?:\n\n|\Z)", doc, re.M | re.S)
    assert legality, f"{name}: no paragraph starting 'Legality' in {passes.lookup(name).__module__}'s docstring"
    assert len(legality.group(1)) >= 80, f"{name}: the Legality paragraph does not argue anything"


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_pass_has_a_summary_and_documented_typed_options(name: str) -> None:
    cls = passes.lookup(name)
    summary = cls.summary()
    assert "\n" not in inspect.cleandoc(cls.__doc__ or "") and summary.endswith(".") and 20 <= len(summary) <= 110
    for opt in cls.options():  # options() raises for an undocumented option or an unsupported type
        assert opt.type in declare.OPTION_TYPES and len(opt.doc) >= 30, (name, opt)


@pytest.mark.parametrize("name", BUILT_IN)
def test_declared_defaults_are_the_functions_defaults(name: str) -> None:
    """The plain function (the public API) and its declaration agree on names and defaults."""
    cls = passes.lookup(name)
    module = sys.modules[cls.__module__]
    function = getattr(module, module.__name__.rsplit(".", 1)[1])
    params = list(inspect.signature(function).parameters.values())[1:]
    assert {p.name: p.default for p in params} == {o.name: o.default for o in cls.options()}


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_pass_has_a_golden_file_and_a_refusal_file(name: str) -> None:
    mine = [read(p) for p in files() if read(p).tested_pass() == name]
    assert any(not f.is_refusal for f in mine), f"no file in tests/filecheck/{name}/ shows what {name} does"
    assert any(f.is_refusal for f in mine), f"no tests/filecheck/{name}/refused-*.fl shows where {name} must not apply"

# }}}


# {{{ typed options in pipelines

@pytest.mark.parametrize("spec, expected", [
    ("inline,tile{block_m=32,block-n=16}", [("inline", {}), ("tile", {"block_m": 32, "block_n": 16})]),
    (" fuse-reductions { block_limit = 8 } ", [("fuse-reductions", {"block_limit": 8})]),
    ("", []),
])
def test_pipelines_are_read_by_the_declared_types(spec: str, expected: list) -> None:
    steps = passes.parse_pipeline(spec)
    assert steps == expected and all(type(v) is int for _, o in steps for v in o.values())
    assert passes.parse_pipeline(passes.format_pipeline(steps)) == steps


@pytest.mark.parametrize("spec, message", [
    ("tile{block_q=4}", "pass 'tile' has no option 'block_q'; its options: block_m: int = 64, block_n: int = 64, "
                        "block_pointwise: int = 1024"),
    ("tile{block_m=4.5}", "option block_m of pass 'tile' is an int, got '4.5'"),
    ("tile{block_m=big}", "option block_m of pass 'tile' is an int, got 'big'"),
    ("contract-buffers{x=1}", "pass 'contract-buffers' has no option 'x'; it has no options"),
    ("tiles", "unknown pass 'tiles'; known passes: inline, exchange-sums, defer-normalization"),
    ("tile{block_m}", "malformed option 'block_m' of pass 'tile'; write key=value"),
    ("inline,tile;x", "malformed pipeline at character 7: 'tile;x'"),
])
def test_bad_pipelines_say_what_the_pass_takes(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        passes.parse_pipeline(spec)


@pytest.fixture
def knobs():
    """A pass with one option of each type, declared for one test."""
    with declare.isolated_registry():
        @dataclass(frozen=True)
        class Knobs(Pass):
            """A pass with one option of each type, for these tests."""

            name: ClassVar[str] = "test-knobs"
            count: int = option(1, "an integer option of the test pass")
            ratio: float = option(0.5, "a float option of the test pass")
            strict: bool = option(False, "a boolean option of the test pass")
            label: str = option("a", "a string option of the test pass")

            def apply(self, program: ir.Program) -> ir.Program:
                proof = ir.Proof(f"knobs {self.count} {self.ratio} {self.strict} {self.label}", True, "-")
                return program.with_proofs(proof)

        yield Knobs


def test_every_option_type_reads_from_text(knobs) -> None:
    assert passes.parse_pipeline("test-knobs{count=3,ratio=2,strict=true,label=x1}") == \
        [("test-knobs", {"count": 3, "ratio": 2.0, "strict": True, "label": "x1"})]
    assert passes.configure("test-knobs", {"strict": "0", "ratio": 1}) == knobs(strict=False, ratio=1.0)
    for bad in ("strict=yes", "ratio=half", "count=True"):
        with pytest.raises(ValueError, match="of pass 'test-knobs' is a"):
            passes.parse_pipeline(f"test-knobs{{{bad}}}")
    with pytest.raises(ValueError, match="option count of pass 'test-knobs' is an int, got True"):
        passes.configure("test-knobs", {"count": True})
    assert str(knobs(count=2, strict=True)) == "test-knobs{count=2,strict=true}", "defaults are left out"
    out = passes.run_pipeline(ir.parse(SOFTMAX_PV), [knobs(count=5)])
    assert out.proofs[-1].transformation == "knobs 5 0.5 False a"

# }}}


# {{{ precedence: defaults < overrides < options written in the pipeline

def test_written_options_beat_overrides_which_beat_defaults() -> None:
    overrides = {"tile": {"block_m": 128, "block_n": 16}}
    assert passes.configure("tile", {}, None) == passes.lookup("tile")()
    assert passes.configure("tile", {}, overrides) == passes.lookup("tile")(block_m=128, block_n=16)
    assert passes.configure("tile", {"block_m": 32}, overrides) == passes.lookup("tile")(block_m=32, block_n=16)
    assert passes.resolve_pipeline("inline,tile{block_m=32}", overrides)[1] == passes.lookup("tile")(32, 16)


def test_precedence_in_a_real_pipeline() -> None:
    prog = ir.parse(ROW_MAX)
    out = passes.run_pipeline(prog, "fuse-reductions{block_limit=4},tile{block_m=16}",
                              overrides={"tile": {"block_m": 32, "block_n": 32}, "fuse-reductions": {"block_limit": 256}})
    text = str(out)
    assert "for i in 0:64 parallel tile 16 @grid" in text, "block_m written in the pipeline wins"
    assert "for j in 0:128 reduce tile 32 @serial" in text, "block_n from the overrides beats the default 64"
    spelled = passes.run_pipeline(prog, [passes.lookup("fuse-reductions")(block_limit=4), passes.lookup("tile")()],
                                  overrides={"tile": {"block_m": 16}})
    assert "tile 64 @grid" in str(spelled) and "tile 64 @serial" in str(spelled), \
        "a declared pass object is taken as written whole"


def test_overrides_are_checked_even_for_passes_not_in_the_pipeline() -> None:
    prog = ir.parse(SOFTMAX_PV)
    assert passes.run_pipeline(prog, "inline", overrides={"tile": {"block_m": 8}}) == passes.inline_pointwise(prog)
    with pytest.raises(ValueError, match="pass 'tile' has no option 'block_q'"):
        passes.run_pipeline(prog, "inline", overrides={"tile": {"block_q": 8}})
    with pytest.raises(ValueError, match="unknown pass 'tiles'"):
        passes.run_pipeline(prog, "inline", overrides={"tiles": {}})
    with pytest.raises(ValueError, match="option block_m of pass 'tile' is an int, got 8.0"):
        passes.run_pipeline(prog, "inline", overrides={"tile": {"block_m": 8.0}})


def test_compile_options_follow_the_rule() -> None:
    """flashlight.Options gives block_m as an override: a pipeline that writes block_m keeps its own."""
    from flashlight.options import Options, pass_overrides

    opts = Options(pipeline="fuse-reductions{block_limit=4},tile{block_m=16}", block_m=64, block_n=32)
    target = opts.for_target("interpreter")
    out = str(passes.run_pipeline(ir.parse(ROW_MAX), target.pipeline, overrides=pass_overrides(target)))
    assert "tile 16 @grid" in out and "tile 32 @serial" in out
    exact = Options(exact_roundings=True).for_target("interpreter").pipeline
    assert "elide-roundings" not in exact and exact == passes.remove_passes(passes.DEFAULT_PIPELINE, {"elide-roundings"})
    with pytest.raises(ValueError, match="pass 'tile' has no option 'block_q'"):
        Options(pipeline="tile{block_q=1}")

# }}}


# {{{ declaring passes

def test_declaring_a_pass_registers_it_and_checks_it() -> None:
    with declare.isolated_registry():
        @dataclass(frozen=True)
        class Twice(Pass):
            """Apply inline twice."""

            name: ClassVar[str] = "test-twice"
            max_size: int = option(9, "largest definition inlined, in expression nodes")

            def apply(self, program: ir.Program) -> ir.Program:
                return passes.inline_pointwise(passes.inline_pointwise(program, self.max_size), self.max_size)

        assert passes.lookup("test-twice") is Twice and list(passes.registered())[-1] == "test-twice"
        assert passes.parse_pipeline("test-twice{max_size=3}") == [("test-twice", {"max_size": 3})]
        prog = ir.parse(SOFTMAX_PV)
        assert passes.PASSES["test-twice"](prog, max_size=3) == Twice(3).apply(prog)

        with pytest.raises(ValueError, match="pass name 'test-twice' of .* is taken by"):
            class Again(Pass):
                """Another pass of that name."""

                name: ClassVar[str] = "test-twice"
        with pytest.raises(TypeError, match="give it a one-line summary as its docstring"):
            class Bare(Pass):
                name: ClassVar[str] = "test-bare"

        class NotADataclass(Pass):
            """Options declared, but no @dataclass."""

            name: ClassVar[str] = "test-plain"
            size: int = option(1, "an option nobody can set")
        with pytest.raises(TypeError, match=r"declare .*NotADataclass with @dataclass"):
            passes.parse_pipeline("test-plain{size=2}")

        @dataclass(frozen=True)
        class Listy(Pass):
            """An option of a type pipelines cannot write."""

            name: ClassVar[str] = "test-listy"
            sizes: tuple = option((), "not an option type")
        with pytest.raises(TypeError, match="option sizes of pass 'test-listy' has type"):
            Listy.options()

        @dataclass(frozen=True)
        class Undocumented(Pass):
            """An option declared without option()."""

            name: ClassVar[str] = "test-undocumented"
            size: int = 3
        with pytest.raises(TypeError, match=r"declare it with option\(default, doc\)"):
            Undocumented.options()
    assert "test-twice" not in passes.registered(), "isolated_registry forgets what was declared inside"


def test_the_passes_view_is_read_only_and_calls_the_declarations() -> None:
    prog = ir.parse(SOFTMAX_PV)
    assert passes.PASSES["fuse-reductions"](prog, block_limit=4) == passes.fuse_reductions(prog, block_limit=4)
    with pytest.raises(TypeError):
        passes.PASSES["mine"] = passes.inline_pointwise  # type: ignore[index]
    with pytest.raises(ValueError, match="has no option 'block_q'"):
        passes.PASSES["tile"](prog, block_q=4)
    assert "tile" in passes.PASSES and "tiles" not in passes.PASSES and len(passes.PASSES) == len(BUILT_IN)

# }}}


# {{{ generated docs

REFERENCE_DOC = ROOT / "docs" / "passes.md"


def test_the_reference_in_the_docs_is_generated_from_the_declarations() -> None:
    doc = REFERENCE_DOC.read_text()
    assert declare.replace_reference(doc) == doc, (
        "docs/passes.md's reference section is not what the declarations generate; regenerate it with\n  "
        + declare.REGENERATE)


def test_the_reference_lists_every_pass_and_option() -> None:
    text = declare.reference_markdown()
    for name, cls in passes.registered().items():
        assert f"| `{name}` | {cls.summary()} |" in text
        for o in cls.options():
            assert f"| `{name}` | `{o.name}` | {o.type.__name__} | {o.default} |" in text
    with pytest.raises(ValueError, match="no generated reference"):
        declare.replace_reference("# a document without one\n")

# }}}
