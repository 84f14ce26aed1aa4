"""File-driven golden tests of the passes, in the manner of LLVM's lit and FileCheck: one test per file.

A test is an IR file (``tests/filecheck/PASS/CASE.fl``) whose comment lines (``//``, which the IR
parser skips) hold directives::

    // RUN: python -m flashlight opt %s --passes 'masks-to-domains' --proofs
    // CHECK: if j <= i
    // CHECK-NEXT: A: m[i] max= x[i,j]
    // CHECK-NOT: where(
    // CHECK: [legal  ] masks to domains

* ``RUN:`` the command, exactly one per file; ``%s`` is the file itself. It must be
  ``python -m flashlight ...`` (run in-process through :func:`flashlight.cli.main`, which is what
  that command calls, with stdout and stderr captured together) and must exit with status 0;
  ``RUN: not python -m flashlight ...`` expects a status other than 0 (a pass that raises).
* ``CHECK: TEXT``: a line of the output at or after the current position contains ``TEXT``; the
  position moves past the first such line. ``TEXT`` is a plain substring, with its leading and
  trailing blanks ignored (as FileCheck ignores them): no regular expressions.
* ``CHECK-NEXT: TEXT``: the line right after the previous match contains ``TEXT``.
* ``CHECK-NOT: TEXT``: no line between the previous match (or the start) and the next match (or
  the end of the output) contains ``TEXT``.

Directives are matched in file order; a file needs at least one ``CHECK`` or ``CHECK-NEXT``. The
pass a file tests is the last pass of its ``RUN`` pipeline, and its folder is named after it.
A file named ``refused-*.fl`` is a refusal: an input the pass must leave alone, whose checks show
the refusal (the proof printed as refused with its reason or isl witness) or the unchanged IR.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

FOLDER = Path(__file__).parent / "filecheck"
DIRECTIVE = re.compile(r"^\s*//\s*(RUN|CHECK|CHECK-NEXT|CHECK-NOT):(.*)$")


@dataclass(frozen=True)
class Directive:
    kind: str     # RUN, CHECK, CHECK-NEXT, CHECK-NOT
    text: str     # the command or the pattern, blanks stripped
    line: int     # 1-based line of the file


@dataclass(frozen=True)
class CheckFile:
    path: Path
    run: Directive
    checks: tuple[Directive, ...]

    @property
    def expect_failure(self) -> bool:
        return self.argv_words()[0] == "not"

    def argv_words(self) -> list[str]:
        return shlex.split(self.run.text.replace("%s", shlex.quote(str(self.path))))

    def argv(self) -> list[str]:
        """The arguments after ``python -m flashlight``."""
        words = self.argv_words()[1:] if self.expect_failure else self.argv_words()
        if words[:3] != ["python", "-m", "flashlight"]:
            raise ValueError(f"{self.path}:{self.run.line}: RUN must be 'python -m flashlight ...' "
                             f"(optionally after 'not'), got {self.run.text!r}")
        return words[3:]

    def pipeline(self) -> str:
        """The ``--passes`` argument of the RUN line."""
        words = self.argv()
        for k, w in enumerate(words):
            if w in ("--passes", "-p") and k + 1 < len(words):
                return words[k + 1]
            if w.startswith("--passes="):
                return w.split("=", 1)[1]
        return ""

    def tested_pass(self) -> str:
        """The last pass of the RUN line's pipeline: the one the file is about."""
        from flashlight.passes import parse_pipeline

        steps = parse_pipeline(self.pipeline())
        return steps[-1][0] if steps else ""

    @property
    def is_refusal(self) -> bool:
        return self.path.name.startswith("refused-")


def read(path: Path) -> CheckFile:
    """The directives of one file; a ValueError for a file without exactly one RUN or without checks."""
    runs, checks = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        m = DIRECTIVE.match(line)
        if m:
            d = Directive(m.group(1), m.group(2).strip(), number)
            (runs if d.kind == "RUN" else checks).append(d)
        elif re.match(r"^\s*//\s*CHECK", line):
            raise ValueError(f"{path}:{number}: unknown directive {line.strip()!r} "
                             "(CHECK:, CHECK-NEXT: and CHECK-NOT: are known)")
    if len(runs) != 1:
        raise ValueError(f"{path}: expected one RUN line, found {len(runs)}")
    if not any(d.kind in ("CHECK", "CHECK-NEXT") for d in checks):
        raise ValueError(f"{path}: no CHECK or CHECK-NEXT line: nothing would be tested")
    if any(not d.text for d in checks):
        raise ValueError(f"{path}: a check with an empty pattern matches anything")
    return CheckFile(path, runs[0], tuple(checks))


def run(cf: CheckFile, argv: list[str] | None = None) -> tuple[int, str]:
    """``(exit status, stdout and stderr)`` of the RUN command (or of ``argv``), in this process."""
    import flashlight.passes
    from flashlight.cli import main

    flashlight.passes._applied.cache_clear()  # as in a fresh process
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        status = main(cf.argv() if argv is None else argv)
    return status, buf.getvalue()


def without_tested_pass(cf: CheckFile) -> list[str]:
    """The RUN command's arguments with the tested pass (the pipeline's last) left out."""
    from flashlight.passes import format_pipeline, parse_pipeline

    words = cf.argv()
    k = next(k for k, w in enumerate(words) if w in ("--passes", "-p"))
    rest = format_pipeline(parse_pipeline(words[k + 1])[:-1])
    return words[:k] + (["--passes", rest] if rest else []) + words[k + 2:]


def ir_part(output: str) -> str:
    """The printed program, without the legality decisions after it."""
    return output.split("\n-- legality decisions --", 1)[0]


def match(checks: tuple[Directive, ...], output: str, where: str = "") -> str | None:
    """None if ``output`` satisfies the checks, else what failed, with the output for context."""
    lines = output.splitlines()
    pos = 0            # the first line a CHECK may match
    last = -1          # the line of the previous match
    pending: list[Directive] = []  # CHECK-NOTs waiting for the next match

    def fail(d: Directive, why: str) -> str:
        shown = "\n".join(f"{k + 1:4} {'>' if k == last else ' '} {text}" for k, text in enumerate(lines))
        return f"{where}:{d.line}: {d.kind}: {d.text!r}: {why}\noutput ('>' marks the previous match):\n{shown}"

    def check_nots(upto: int) -> str | None:
        for d in pending:
            for k in range(pos, upto):
                if d.text in lines[k]:
                    return fail(d, f"found on output line {k + 1}: {lines[k]!r}")
        pending.clear()
        return None

    for d in checks:
        if d.kind == "CHECK-NOT":
            pending.append(d)
            continue
        if d.kind == "CHECK-NEXT":
            found = last + 1 if last + 1 < len(lines) and d.text in lines[last + 1] else None
            if last < 0 or found is None:
                return fail(d, "not on the line after the previous match")
        else:
            found = next((k for k in range(pos, len(lines)) if d.text in lines[k]), None)
            if found is None:
                return fail(d, f"not found at or after output line {pos + 1}")
        problem = check_nots(found)
        if problem:
            return problem
        last, pos = found, found + 1
    return check_nots(len(lines))


def check(path: Path) -> str | None:
    """None if the file's RUN command exits as expected and its output passes its checks."""
    return check_output(read(path))[0]


def check_output(cf: CheckFile) -> tuple[str | None, str]:
    """``(what failed or None, the output)`` of the file's RUN command against its checks."""
    status, output = run(cf)
    rel = os.path.relpath(cf.path)
    if (status != 0) != cf.expect_failure:
        want = "a status other than 0" if cf.expect_failure else "status 0"
        return f"{rel}:{cf.run.line}: RUN exited with status {status}, expected {want}\noutput:\n{output}", output
    return match(cf.checks, output, rel), output


# {{{ tests

def files() -> list[Path]:
    return sorted(FOLDER.rglob("*.fl"))


@pytest.mark.parametrize("path", files(), ids=lambda p: str(p.relative_to(FOLDER)))
def test_file(path: Path) -> None:
    """The checks pass, and they are about the tested pass: without it they fail, unless the file
    is a refusal whose program the pass left unchanged (which they then show)."""
    cf = read(path)
    problem, output = check_output(cf)
    assert problem is None, problem
    _, before = run(cf, without_tested_pass(cf))
    if match(cf.checks, before) is None:
        assert cf.is_refusal, f"{path.name}: the checks pass without {cf.tested_pass()}: they test nothing it does"
        assert ir_part(output) == ir_part(before), \
            f"{path.name}: the checks would pass without the pass, yet it changed the program"


def test_every_file_sits_in_the_folder_of_the_pass_it_tests() -> None:
    misplaced = [str(p.relative_to(FOLDER)) for p in files() if read(p).tested_pass() != p.parent.name]
    assert not misplaced, f"the last pass of the RUN pipeline names the folder: {misplaced}"


OUTPUT = """\
program p(x: f32[4]) -> (o: f32[4])
  for i in 0:4 parallel
    if i >= 1
      S: o[i] = x[i]

-- legality decisions --
[refused] thing: because
"""


def checks(*lines: str) -> tuple[Directive, ...]:
    out = []
    for k, line in enumerate(lines, 1):
        m = DIRECTIVE.match(line)
        assert m, line
        out.append(Directive(m.group(1), m.group(2).strip(), k))
    return tuple(out)


@pytest.mark.parametrize("lines", [
    ("// CHECK: program p(", "// CHECK: S: o[i] = x[i]", "// CHECK: [refused] thing"),
    ("// CHECK: for i in 0:4", "// CHECK-NEXT: if i >= 1", "// CHECK-NEXT: S: o[i]"),
    ("// CHECK-NOT: buffer", "// CHECK: S: o[i]", "// CHECK-NOT: [legal"),
    ("// CHECK:     S: o[i] = x[i]    ",),  # blanks around the pattern are ignored
])
def test_matching_accepts(lines: tuple[str, ...]) -> None:
    assert match(checks(*lines), OUTPUT) is None


@pytest.mark.parametrize("lines, why", [
    (("// CHECK: S: o[i] = x[i] + 1",), "not found at or after output line 1"),
    (("// CHECK: S: o[i]", "// CHECK: if i >= 1"), "not found at or after output line 5"),   # in order
    (("// CHECK: program p(", "// CHECK-NEXT: if i >= 1"), "not on the line after the previous match"),
    (("// CHECK-NEXT: program",), "not on the line after the previous match"),
    (("// CHECK-NOT: if i", "// CHECK: S: o[i]"), "found on output line 3"),
    (("// CHECK: S: o[i]", "// CHECK-NOT: [refused]"), "found on output line 7"),
    (("// CHECK: x[i] * 2",), "not found"),  # a wrong CHECK line fails
])
def test_matching_rejects(lines: tuple[str, ...], why: str) -> None:
    problem = match(checks(*lines), OUTPUT, "t.fl")
    assert problem is not None and why in problem, problem


def test_a_wrong_check_in_a_real_file_fails(tmp_path: Path) -> None:
    """Each real file, with its last CHECK pattern replaced by a wrong one, fails."""
    source = FOLDER / "masks-to-domains" / "identity-fill.fl"
    text = source.read_text()
    last = [line for line in text.splitlines() if DIRECTIVE.match(line) and "CHECK:" in line][-1]
    wrong = tmp_path / "masks-to-domains" / "wrong.fl"
    wrong.parent.mkdir()
    wrong.write_text(text.replace(last, last + " and something it does not say"))
    assert check(source) is None
    assert "not found" in (check(wrong) or "")


def test_run_lines_and_exit_status(tmp_path: Path) -> None:
    program = "program p(x: f32[4]) -> (o: f32[4])\n  for i in 0:4 parallel\n    S: o[i] = x[i]\n"
    ok = tmp_path / "ok.fl"
    ok.write_text("// RUN: python -m flashlight opt %s --passes inline\n// CHECK: S: o[i] = x[i]\n" + program)
    assert check(ok) is None and read(ok).tested_pass() == "inline"
    bad = tmp_path / "bad.fl"
    bad.write_text("// RUN: python -m flashlight opt %s --passes 'tile{block_q=1}'\n// CHECK: block_q\n" + program)
    assert "RUN exited with status 1, expected status 0" in (check(bad) or "")
    bad.write_text("// RUN: not python -m flashlight opt %s --passes 'tile{block_q=1}'\n"
                   "// CHECK: error: pass 'tile' has no option 'block_q'\n" + program)
    assert check(bad) is None, "'not' expects the failure"
    for text, error in [("// CHECK: x\n", "expected one RUN line"),
                        ("// RUN: python -m flashlight opt %s\n// CHECK-NOT: x\n", "no CHECK or CHECK-NEXT line"),
                        ("// RUN: python -m flashlight opt %s\n// CHECKNEXT: x\n", "unknown directive"),
                        ("// RUN: python -m flashlight opt %s\n// CHECK:\n", "empty pattern")]:
        ok.write_text(text + program)
        with pytest.raises(ValueError, match=error):
            read(ok)

# }}}
