"""Docs that run: every command and code block of README.md and docs/*.md is executed here.

How a document runs
-------------------
Each document (README.md, then every docs/*.md) is one test. Its fenced blocks run in order, in
a fresh temporary directory that holds a copy of the repository's ``examples/`` and of
``tests/conftest.py`` (so ``examples/...`` paths read as they do from the repository root, and
nothing is ever written into the checkout):

* ```` ```python ````: executed in one namespace per document (the blocks share it, in order),
  in-process, with the working directory and the repository root on ``sys.path``; its stdout is
  captured. An exception fails the test.
* ```` ```bash ````: each line is a shell command (a line ending in ``\\`` continues; blank lines
  and ``#`` comment lines are skipped), run with ``bash -c`` in the working directory, with the
  virtual environment's ``bin`` first on ``PATH`` (``python``, ``python -m flashlight`` are the
  venv's), ``PYTHONHASHSEED=0``, ``COLUMNS=80`` and no ``CI``; stdout and stderr are captured together.
  Each command must exit with status 0. To keep CI fast (each new interpreter spends seconds
  importing torch), a plain ``python -m flashlight ARGS`` command (words, single quotes and a
  trailing comment only: no pipe, redirection, variable or glob) runs in-process instead,
  through :func:`flashlight.cli.main`, the function ``python -m flashlight`` calls, in the same
  working directory, with the pass cache emptied as in a fresh process, stdout and stderr
  captured together and its return value as the exit status;
  :func:`test_cli_in_process_is_the_command` checks that both ways give the same.
* ```` ```console ````: a shell transcript. A line ``$ COMMAND`` is run as above; the lines up to
  the next ``$`` line are its expected output, compared by the rules below.
* ```` ```text ````: directly after a python or bash block (only blank lines or markers between),
  the expected output of that block, compared by the rules below. A text block anywhere else
  must be a file (``<!-- file: ... -->``): a text block that is neither fails the test, so an
  output can never silently go unchecked.
* A fence with no language, or any other language, is display only (syntax templates,
  diagrams) and is not run.

Comparison rules (expected text in the doc, actual output of the run)
---------------------------------------------------------------------
Exact, line by line, after removing trailing whitespace from every line and leading and
trailing blank lines from both texts, with two elisions, so that docs can trim long output:

* a line that is exactly ``...`` matches any number of lines (zero or more);
* a line that ends in `` ...`` (a space and three dots) matches any line that starts with the
  text before the space and the dots (a truncated long line: ``[legal  ] inline div ...``).

Nothing else is fuzzy: a changed number, name or line fails.

Markers (an HTML comment on its own line, right before a fenced block; blank lines between the
marker and the block are allowed, nothing else)
-------------------------------------------------------------------------------------------
* ``<!-- file: PATH -->``: write the block to ``PATH`` (relative to the working directory,
  directories created) instead of running it: a program the doc's commands read, a module its
  code imports. Any language.
* ``<!-- exit: N -->``: the commands of the next bash or console block must exit with status
  ``N`` (an example of an error message).
* ``<!-- not run: REASON -->``: the next block is not run (nor is its output compared). The reason
  is required; keep these rare: README's two setup commands (they create a virtual environment
  and install packages, which CI's own ``.ci/run`` does; the demo they end with is run by
  :func:`test_readme_demo`, the test suite by CI itself).

Other checks
------------
* :func:`test_opt_default`: ``python -m flashlight opt FILE --passes default`` succeeds on every
  ``.fl`` file under docs/ and examples/ and on every block a doc writes to a ``.fl`` file (run
  in-process through :func:`flashlight.cli.main`, which is what ``python -m flashlight`` calls).
  A program that fails there because of a compiler bug is listed in ``OPT_DEFAULT_XFAIL``
  (strict: the test fails once the bug is fixed, so that the entry is removed).
* :func:`test_readme_demo`: ``python examples/demo.py``, the last step of README's first command.

Debugging a document: ``python tests/test_docs.py docs/passes.md`` runs it and prints every
block's actual output next to the verdict. ``FLASHLIGHT_UPDATE_DOCS=1 python -m pytest
tests/test_docs.py`` rewrites the expected outputs that differ (keeping their elisions where
they had some) and fails; review the diff before checking it in.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENV_BIN = Path(sys.executable).parent
COMMAND_TIMEOUT = 300  # seconds, per shell command

MARKERS = ("file", "exit", "not run")
_MARKER = re.compile(r"^<!--\s*(file|exit|not run):\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)\s*$")

# .fl programs on which `opt --passes default` fails because of a compiler bug (not the program's
# fault): id -> reason. Strict xfails: remove the entry when the bug is fixed.
OPT_DEFAULT_XFAIL: dict[str, str] = {}


# {{{ parsing

@dataclass
class Block:
    doc: str        # path relative to the repository root
    line: int       # 1-based line of the opening fence
    lang: str
    text: str
    markers: dict[str, str] = field(default_factory=dict)
    after: Block | None = None  # the code block this one directly follows (only blanks/markers between)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def parse(path: Path) -> list[Block]:
    """The fenced blocks of a markdown file, with their markers."""
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    markers: dict[str, str] = {}
    marker_line = 0
    adjacent: Block | None = None  # the last block, while nothing but blanks/markers followed it
    n = 0
    while n < len(lines):
        line = lines[n]
        m = _FENCE.match(line)
        if m:
            fence, lang = m.group(1), m.group(2).lower()
            end = n + 1
            while end < len(lines) and lines[end].strip() != fence:
                end += 1
            if end == len(lines):
                raise ValueError(f"{rel}:{n + 1}: unclosed fence")
            block = Block(rel, n + 1, lang, "\n".join(lines[n + 1:end]), markers, adjacent)
            blocks.append(block)
            markers, adjacent = {}, block
            n = end + 1
            continue
        mk = _MARKER.match(line.strip())
        if mk:
            key, value = mk.group(1), mk.group(2)
            if not value:
                raise ValueError(f"{rel}:{n + 1}: marker '{key}' needs a value")
            markers[key], marker_line = value, n + 1
        elif line.strip().startswith("<!--") and any(k in line for k in MARKERS):
            raise ValueError(f"{rel}:{n + 1}: malformed marker {line.strip()!r}")
        elif line.strip():
            if markers:
                raise ValueError(f"{rel}:{marker_line}: marker {markers} is not followed by a fenced block")
            adjacent = None
        n += 1
    if markers:
        raise ValueError(f"{rel}:{marker_line}: marker {markers} at the end of the file")
    return blocks

# }}}


# {{{ comparison

def _lines(text: str) -> list[str]:
    out = [l.rstrip() for l in text.splitlines()]
    while out and not out[0]:
        out.pop(0)
    while out and not out[-1]:
        out.pop()
    return out


def matches(expected: str, actual: str) -> bool:
    """``actual`` against ``expected`` with the elisions of the module docstring."""
    exp, act = _lines(expected), _lines(actual)
    memo: dict[tuple[int, int], bool] = {}

    def line_ok(e: str, a: str) -> bool:
        if e == a:
            return True
        return e.endswith(" ...") and a.startswith(e[:-4])

    def go(i: int, j: int) -> bool:
        key = (i, j)
        if key in memo:
            return memo[key]
        if i == len(exp):
            ok = j == len(act)
        elif exp[i] == "...":
            ok = go(i + 1, j) or (j < len(act) and go(i, j + 1))
        else:
            ok = j < len(act) and line_ok(exp[i], act[j]) and go(i + 1, j + 1)
        memo[key] = ok
        return ok

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 4 * (len(exp) + len(act)) + 1000))
    return go(0, 0)

# }}}


# {{{ running

@dataclass
class Result:
    block: Block
    what: str           # "python", "$ command", "file PATH", "not run: ..."
    expected: str | None
    actual: str
    ok: bool
    problem: str = ""


def make_workdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "examples", path / "examples",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    (path / "tests").mkdir(exist_ok=True)
    shutil.copy(ROOT / "tests" / "conftest.py", path / "tests" / "conftest.py")
    return path


def shell_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV_BIN.parent)
    # CI and BUILD_NUMBER make pytest stop truncating its summary lines; docs show a terminal's.
    for var in ("FLASHLIGHT_LOG", "FLASHLIGHT_DEBUG_DIR", "PYTHONPATH", "CI", "BUILD_NUMBER"):
        env.pop(var, None)
    env["PYTHONHASHSEED"] = "0"
    env["COLUMNS"] = "80"  # pytest's and other tools' line widths
    return env


def run_command(command: str, cwd: Path, in_process: bool = True) -> tuple[int, str]:
    """``(exit status, stdout and stderr)`` of a shell command run in ``cwd``."""
    argv = flashlight_argv(command) if in_process else None
    if argv is not None:
        return run_cli(argv, cwd)
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=shell_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT)
    return proc.returncode, proc.stdout


def flashlight_argv(command: str) -> list[str] | None:
    """The arguments of a plain ``python -m flashlight ARGS`` command, None for anything else: a
    command with shell syntax beyond words, single quotes and a trailing comment (pipes,
    redirections, variables, globs, double quotes, escapes) goes to bash."""
    bare = re.sub(r"'[^']*'", "''", command)
    bare = re.split(r"(^|\s)#", bare, maxsplit=1)[0]
    if re.search(r"""[|&;<>()$`*?\[\]{}~"\\]""", bare):
        return None
    words = shlex.split(command, comments=True)
    return words[3:] if words[:3] == ["python", "-m", "flashlight"] else None


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``python -m flashlight ARGV`` in this process: ``flashlight.cli.main``, which is what
    ``python -m flashlight`` calls, with stdout and stderr captured together."""
    import flashlight.passes
    from flashlight.cli import main

    # a fresh process starts with an empty pass cache; this one may hold an equal program whose
    # result carries other proofs (Program equality ignores proofs)
    flashlight.passes._applied.cache_clear()
    buf = io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                status = main(argv)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
            except Exception:
                traceback.print_exc()
                status = 1
    finally:
        os.chdir(old)
    return status, buf.getvalue()


def shell_lines(text: str) -> list[str]:
    """The commands of a bash block: one a line, ``\\`` continues, comments and blanks skipped."""
    out, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    if current:
        out.append(current)
    return out


def transcript(text: str) -> list[tuple[str, str]]:
    """``[(command, expected output)]`` of a console block."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif not out:
            raise ValueError(f"a console block must start with a '$ ' line, not {line!r}")
        else:
            out[-1][1].append(line)
    return [(c, "\n".join(lines)) for c, lines in out]


class _Isolated:
    """Working directory, sys.path, modules, the pass registry and logging restored after a document."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def __enter__(self) -> _Isolated:
        import flashlight.passes

        self.cwd = os.getcwd()
        self.path = list(sys.path)
        self.modules = set(sys.modules)
        self.registry = flashlight.passes.declare.isolated_registry()  # passes a document declares
        self.registry.__enter__()
        self.loggers = {name: (lg, lg.level, list(lg.handlers), lg.propagate)
                        for name, lg in (("", logging.getLogger()), ("flashlight", logging.getLogger("flashlight")))}
        os.chdir(self.workdir)
        sys.path[:0] = [str(self.workdir), str(ROOT)]
        return self

    def __exit__(self, *exc: object) -> None:
        import flashlight.passes

        os.chdir(self.cwd)
        sys.path[:] = self.path
        self.registry.__exit__(None, None, None)
        for lg, level, handlers, propagate in self.loggers.values():
            lg.setLevel(level)
            lg.handlers[:] = handlers
            lg.propagate = propagate
        for name in set(sys.modules) - self.modules:
            f = getattr(sys.modules[name], "__file__", None) or ""
            if f.startswith(str(self.workdir)) or name == "examples" or name.startswith("examples."):
                del sys.modules[name]


def run_document(path: Path, workdir: Path) -> list[Result]:
    """Run every block of one document in order; one Result per check."""
    blocks = parse(path)
    results: list[Result] = []
    namespace: dict = {"__name__": "__main__"}
    outputs: dict[int, tuple[str, str]] = {}  # id(block) -> (what, output) of blocks that print
    skipped: set[int] = set()
    with _Isolated(workdir):
        for block in blocks:
            m = block.markers
            if "not run" in m:
                skipped.add(id(block))
                results.append(Result(block, f"not run: {m['not run']}", None, "", True))
                continue
            if "file" in m:
                target = workdir / m["file"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(block.text + "\n")
                results.append(Result(block, f"file {m['file']}", None, "", True))
                continue
            exit_code = int(m.get("exit", "0"))
            if block.lang == "python":
                buf = io.StringIO()
                problem = ""
                try:
                    code = compile(block.text, block.where, "exec")
                    with contextlib.redirect_stdout(buf):
                        exec(code, namespace)
                except Exception:
                    problem = "raised:\n" + traceback.format_exc()
                outputs[id(block)] = ("python", buf.getvalue())
                results.append(Result(block, "python", None, buf.getvalue() + problem, not problem, problem))
            elif block.lang == "bash":
                text = ""
                for command in shell_lines(block.text):
                    code, out = run_command(command, workdir)
                    text += out
                    ok = code == exit_code
                    results.append(Result(block, f"$ {command}", None, out, ok,
                                          "" if ok else f"exit status {code}, expected {exit_code}"))
                outputs[id(block)] = ("bash", text)
            elif block.lang == "console":
                for command, expected in transcript(block.text):
                    code, out = run_command(command, workdir)
                    problems = []
                    if code != exit_code:
                        problems.append(f"exit status {code}, expected {exit_code}")
                    if not matches(expected, out):
                        problems.append("output differs")
                    results.append(Result(block, f"$ {command}", expected, out, not problems, "; ".join(problems)))
            elif block.lang == "text":
                before = block.after
                if before is not None and id(before) in skipped:
                    results.append(Result(block, "output of a block not run", block.text, "", True))
                elif before is not None and id(before) in outputs:
                    what, out = outputs.pop(id(before))
                    ok = matches(block.text, out)
                    results.append(Result(block, f"output of the {what} block at line {before.line}",
                                          block.text, out, ok, "" if ok else "output differs"))
                else:
                    results.append(Result(block, "text", block.text, "", False,
                                          "a text block that is neither the output of the python or bash "
                                          "block right before it nor a file (<!-- file: PATH -->)"))
            elif "exit" in m:
                results.append(Result(block, block.lang, None, "", False, "'exit' marker on a block that is not run"))
    return results


def report(results: list[Result], only_failures: bool = True) -> str:
    out = []
    for r in results:
        if only_failures and r.ok:
            continue
        out.append(f"--- {r.block.where} ({r.block.lang}) {r.what}: {'ok' if r.ok else r.problem}")
        if not r.ok or not only_failures:
            if r.expected is not None:
                out.append("expected:\n" + r.expected)
            out.append("actual:\n" + r.actual)
    return "\n".join(out)

# }}}


# {{{ tests

@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_document(path: Path, tmp_path: Path) -> None:
    results = run_document(path, make_workdir(tmp_path / "work"))
    failed = [r for r in results if not r.ok]
    if failed and os.environ.get("FLASHLIGHT_UPDATE_DOCS"):
        update_document(path, failed)
        pytest.fail(f"{len(failed)} outputs of {path.name} rewritten; review the diff and check it in")
    assert not failed, f"{len(failed)} of {len(results)} checks failed\n" + report(results)


def reelide(expected: str, actual: str) -> str:
    """``actual`` written the way ``expected`` was: as many lines before its first ``...`` and
    after its last as there were, and lines cut (`` ...``) at the width where it cut them."""
    exp, act = _lines(expected), _lines(actual)
    cut_lines = [e for e in exp if e.endswith(" ...")]
    if cut_lines:  # lines were cut at a width: cut the new ones there too, at a word
        width = max(len(e) for e in cut_lines) - 4
        act = [a if len(a) <= width + 4 or a in exp else a[:width].rsplit(" ", 1)[0] + " ..." for a in act]
    if "..." not in exp:
        return "\n".join(act)
    first = exp.index("...")
    last = len(exp) - 1 - exp[::-1].index("...")
    head, tail = exp[:first], exp[last + 1:]
    if len(head) + len(tail) >= len(act):
        return "\n".join(act)

    return "\n".join(act[:len(head)] + ["..."] + act[len(act) - len(tail):])


def update_document(path: Path, failed: list[Result]) -> None:
    """FLASHLIGHT_UPDATE_DOCS=1: rewrite the expected outputs that differ (text blocks and console
    transcripts), keeping their elisions where they had some."""
    lines = path.read_text().splitlines()
    by_block: dict[int, list[Result]] = {}
    for r in failed:
        if r.problem == "output differs":
            by_block.setdefault(r.block.line, []).append(r)
    for line in sorted(by_block, reverse=True):
        block = by_block[line][0].block
        if block.lang == "text":
            text = reelide(block.text, by_block[line][0].actual)
        else:  # a console transcript: each differing command's output
            new = {r.what[2:]: reelide(r.expected or "", r.actual) for r in by_block[line]}
            text = "\n".join(f"$ {c}" + (f"\n{new.get(c, e)}" if new.get(c, e) else "")
                             for c, e in transcript(block.text))
        count = len(block.text.splitlines())
        lines[line:line + count] = text.splitlines()
    path.write_text("\n".join(lines) + "\n")


def fl_programs() -> list:
    """Every .fl file under docs/ and examples/, and every block a doc writes to a .fl file."""
    params = []
    for base in ("docs", "examples"):
        for f in sorted((ROOT / base).rglob("*.fl")):
            params.append((str(f.relative_to(ROOT)), f.read_text()))
    for doc in DOCS:
        for block in parse(doc):
            name = block.markers.get("file", "")
            if name.endswith(".fl"):
                params.append((f"{block.doc}:{name}", block.text + "\n"))
    return [pytest.param(text, id=ident, marks=[pytest.mark.xfail(strict=True, reason=OPT_DEFAULT_XFAIL[ident])]
                         if ident in OPT_DEFAULT_XFAIL else []) for ident, text in params]


def test_opt_default_has_programs() -> None:
    assert len(fl_programs()) >= 5
    stale = set(OPT_DEFAULT_XFAIL) - {p.id for p in fl_programs()}
    assert not stale, f"OPT_DEFAULT_XFAIL names programs that no longer exist: {stale}"


@pytest.mark.parametrize("text", fl_programs())
def test_opt_default(text: str, tmp_path: Path) -> None:
    from flashlight.cli import main

    path = tmp_path / "program.fl"
    path.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["opt", str(path), "--passes", "default"])
    assert status == 0, err.getvalue()
    assert "program " in out.getvalue()


def test_cli_in_process_is_the_command(tmp_path: Path) -> None:
    """The in-process shortcut for ``python -m flashlight`` commands gives what the command gives."""
    work = make_workdir(tmp_path / "work")
    (work / "bad.txt").write_text("program p() -> (o: f32[])\n  S: o[] =\n")
    assert flashlight_argv("python -m flashlight opt x.fl --passes 'a{b=1}'  # note") == \
        ["opt", "x.fl", "--passes", "a{b=1}"]
    assert flashlight_argv("python -m flashlight opt x.fl | grep S") is None
    assert flashlight_argv("python -m flashlight opt x.fl > out.fl") is None
    assert flashlight_argv("python -m pytest") is None
    for command in ["python -m flashlight opt examples/softmax_pv.fl --passes 'fuse-reductions{block_limit=4}' --proofs",
                    "python -m flashlight opt bad.txt"]:  # a success and an error (exit status 1, stderr)
        assert flashlight_argv(command) is not None
        assert run_command(command, work, in_process=True) == run_command(command, work, in_process=False), command


def test_readme_demo() -> None:
    """README's first command ends with the demo; the setup before it is CI's own (.ci/run)."""
    assert "python examples/demo.py" in (ROOT / "README.md").read_text()
    code, out = run_command("python examples/demo.py", ROOT)
    assert code == 0, out[-5000:]


def test_markers_are_rare_and_explained() -> None:
    skips = [b for doc in DOCS for b in parse(doc) if "not run" in b.markers]
    assert all(len(b.markers["not run"]) >= 20 for b in skips), "every skip gives its reason"
    assert len(skips) <= 3, [b.where for b in skips]


def test_harness_catches_stale_and_unchecked_output(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(textwrap.dedent("""\
        <!-- file: greet.py -->
        ```python
        def greet(name):
            return f"hello {name}"
        ```
        ```python
        from greet import greet
        print(greet("docs"))
        print(1 + 1)
        ```
        ```text
        hello docs
        3
        ```
        Prose, then a text block that nothing prints:
        ```text
        42
        ```
        <!-- exit: 1 -->
        ```console
        $ python -c "import sys; print('no'); sys.exit(2)"
        no
        ```
        <!-- not run: a reason long enough to say why -->
        ```bash
        false
        ```
        ```bash
        echo ok
        ```
        ```text
        ok
        ```
        """))
    results = run_document(doc, make_workdir(tmp_path / "work"))
    verdicts = [(r.what.split(" at ")[0], r.ok, r.problem) for r in results]
    assert verdicts == [
        ("file greet.py", True, ""),
        ("python", True, ""),
        ("output of the python block", False, "output differs"),   # 2 printed, 3 shown: stale
        ("text", False, "a text block that is neither the output of the python or bash block right before "
                        "it nor a file (<!-- file: PATH -->)"),
        ("$ python -c \"import sys; print('no'); sys.exit(2)\"", False, "exit status 2, expected 1"),
        ("not run: a reason long enough to say why", True, ""),
        ("$ echo ok", True, ""),
        ("output of the bash block", True, ""),
    ], verdicts
    assert "greet" not in sys.modules, "modules a document imports are forgotten after it"


def test_matching_rules() -> None:
    assert matches("a\nb\n", "a\nb")
    assert not matches("a\nb", "a\nc")
    assert matches("a\n...\nd", "a\nb\nc\nd")
    assert matches("a\n...\nb", "a\nb")
    assert not matches("a\n...\nd", "a\nb\nc")
    assert matches("[legal  ] inline x ...", "[legal  ] inline x, y: because")
    assert not matches("[legal  ] inline z ...", "[legal  ] inline x, y: because")
    assert matches("x   \n\n", "\nx")

# }}}


if __name__ == "__main__":  # python tests/test_docs.py DOC...: run documents, show every output
    import tempfile

    for arg in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            res = run_document(Path(arg).resolve(), make_workdir(Path(tmp) / "work"))
            print(report(res, only_failures=False))
            print(f"=== {arg}: {sum(not r.ok for r in res)} of {len(res)} checks failed")
