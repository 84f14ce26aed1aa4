"""Tests of the command line (:mod:`flashlight.cli`): ``opt``, ``explain``, ``passes`` and logging.

``main(argv)`` returns the exit status and writes to ``sys.stdout``/``sys.stderr``, so these tests
call it in-process and read the output with ``capsys``.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flashlight import ir, log, passes
from flashlight.cli import main, pass_summary

from test_passes import EXP_SUM, SOFTMAX_PV

SMALL = EXP_SUM + "\n"


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# {{{ opt

def test_opt_without_passes_is_a_round_trip(tmp_path, capsys):
    code, out, err = run(capsys, "opt", write(tmp_path, "small.fl", SMALL))
    assert (code, err) == (0, "")
    assert out == SMALL


def test_opt_reads_stdin_and_runs_a_pass(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(SMALL))
    code, out, _ = run(capsys, "opt", "-", "--passes", "inline")
    assert code == 0
    assert out == str(passes.inline_pointwise(ir.parse(SMALL))) + "\n"
    assert "e[" not in out


def test_opt_output_file(tmp_path, capsys):
    dest = tmp_path / "out.fl"
    code, out, _ = run(capsys, "opt", write(tmp_path, "small.fl", SMALL), "-p", "inline", "-o", str(dest))
    assert (code, out) == (0, "")
    assert str(ir.parse(dest.read_text())) == dest.read_text().rstrip("\n")


def test_print_after_all_prints_every_stage(tmp_path, capsys):
    path = write(tmp_path, "softmax_pv.fl", SOFTMAX_PV)
    code, out, _ = run(capsys, "opt", path, "--passes", "fuse-reductions{block_limit=4}, contract-buffers",
                       "--print-after-all")
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("-- ")]
    assert headers == ["-- input --", "-- after fuse-reductions{block_limit=4} --", "-- after contract-buffers --"]
    stages = [chunk.split("\n", 1)[1].strip("\n") for chunk in out.split("-- ")[1:]]
    assert stages[0] == str(ir.parse(SOFTMAX_PV))
    expected = passes.run_pipeline(ir.parse(SOFTMAX_PV), "fuse-reductions{block_limit=4},contract-buffers")
    assert stages[-1] == str(expected)
    for text in stages:  # every stage is IR text again
        assert str(ir.parse(text)) == text


def test_proofs_show_the_witness_and_the_lemma(tmp_path, capsys):
    path = write(tmp_path, "softmax_pv.fl", SOFTMAX_PV)
    code, out, _ = run(capsys, "opt", path, "--passes", "fuse-reductions{block_limit=4}", "--proofs")
    assert code == 0
    program, decisions = out.split("\n-- legality decisions --\n")
    expected = passes.fuse_reductions(ir.parse(SOFTMAX_PV), block_limit=4)
    assert program == str(expected) + "\n"
    assert "[refused] fuse L1 into the j loop of M1" in decisions
    assert "witness: M1[3, 5] -> L1[3, 4]" in decisions
    assert "relation: { M1[i, j = 5] -> L1[i' = i, j']" in decisions
    assert "[legal  ] online rewrite of L1 into the j loop" in decisions
    assert "lemma: F = exp(x0 - y0) separates over (+, *)" in decisions
    assert decisions.count("[") >= len(expected.proofs)


def test_parse_error_has_file_line_and_column(tmp_path, capsys):
    bad = SMALL.replace("for i in 0:4 parallel\n    for j in 0:5 reduce", "for i in 0:4 paralel\n    for j in 0:5 reduce")
    path = write(tmp_path, "bad.fl", bad)
    code, out, err = run(capsys, "opt", path, "--passes", "inline")
    assert code == 1 and out == ""
    first, src, caret = err.splitlines()
    assert first == (f"{path}:6:16: error: unknown loop kind 'paralel'; "
                     "expected one of parallel, reduce, seq")
    assert src == "  for i in 0:4 paralel"
    assert caret == " " * 15 + "^"


def test_parse_error_on_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("program p() -> ()\n  for i in 0:4 parallel\n    S: x[i] =\n"))
    code, _, err = run(capsys, "opt", "-")
    assert code == 1
    assert err.startswith("<stdin>:3:14: error: expected an expression, found end of line")


def test_invalid_program_is_reported(tmp_path, capsys):
    path = write(tmp_path, "undeclared.fl", SMALL.replace("s[i] + 1.0", "t[i] + 1.0"))
    code, _, err = run(capsys, "opt", path)
    assert code == 1
    assert err.startswith(f"{path}: error: program p is malformed")
    assert "undeclared tensor 't'" in err


def test_a_refusing_pass_names_itself(tmp_path, capsys):
    """A scan mapped by hand as a block (all points at once): tile's isl check refuses it."""
    scan = textwrap.dedent("""\
        program scan(a: f32[8]) -> (x: f32[8])
          for j in 0:8 seq @block
            S: x[j] = a[j] + where(j > 0, x[max(j - 1, 0)], 0.0)
        """)
    code, _, err = run(capsys, "opt", write(tmp_path, "scan.fl", scan), "--passes", "tile{block_n=4}")
    assert code == 1
    assert "error: pass tile{block_n=4} failed: TilingError:" in err
    assert "would violate S" in err


@pytest.mark.parametrize("pipeline,message", [
    ("inline,no-such-pass", "unknown pass 'no-such-pass'; known passes: " + ", ".join(passes.PASSES)),
    ("inline;tile", "malformed pipeline 'inline;tile'"),
    ("tile{block_q=4}", "pass 'tile' has no option 'block_q'; its options: block_m: int = 64, block_n: int = 64, "
                        "block_pointwise: int = 1024"),
    ("tile{block_m=big}", "option block_m of pass 'tile' is an int, got 'big'; its options: block_m: int = 64"),
    ("inline{max_size=}", "malformed option 'max_size=' of pass 'inline'; write key=value"),
])
def test_bad_pipelines_exit_1(tmp_path, capsys, pipeline, message):
    code, out, err = run(capsys, "opt", write(tmp_path, "small.fl", SMALL), "--passes", pipeline)
    assert code == 1 and out == ""
    assert message in err


def test_default_pipeline_keyword(tmp_path, capsys):
    code, out, _ = run(capsys, "opt", write(tmp_path, "softmax_pv.fl", SOFTMAX_PV), "--passes", "default")
    assert code == 0
    assert out == str(passes.run_pipeline(ir.parse(SOFTMAX_PV), passes.DEFAULT_PIPELINE)) + "\n"

# }}}


# {{{ passes and help

def test_passes_lists_every_pass_with_its_summary_and_options(capsys):
    code, out, _ = run(capsys, "passes")
    assert code == 0
    lines = out.splitlines()
    for name, cls in passes.registered().items():
        at = next(k for k, line in enumerate(lines) if line.startswith(name + " "))
        assert lines[at].endswith(pass_summary(name)) and pass_summary(name) == cls.summary()
        for k, opt in enumerate(cls.options()):  # name: type = default, then the meaning's first words
            assert opt.describe() in lines[at + 1:][k * 3], (name, opt)
            assert opt.doc.split()[0] in lines[at + 1:][k * 3 + 1]
    assert "block_limit: int = 256" in out and "largest extent of an iterator" in out
    assert f"default pipeline: {passes.DEFAULT_PIPELINE}" in out


def test_passes_documents_a_named_pass(capsys):
    code, out, _ = run(capsys, "passes", "fuse-reductions")
    assert code == 0
    assert out.startswith("fuse-reductions\n===============\nFuse nests into kernels")
    assert "options:\n  block_limit: int = 256\n      largest extent" in out
    assert "legality argument (flashlight/passes/fuse_reductions.py):" in out and "online rewrite" in out
    code, out, _ = run(capsys, "passes", "contract-buffers")
    assert code == 0 and "options: none" in out
    code, _, err = run(capsys, "passes", "fuse")
    assert code == 1 and "unknown pass 'fuse'" in err


def test_passes_markdown_is_the_generated_reference(capsys):
    from flashlight.passes.declare import reference_markdown

    code, out, _ = run(capsys, "passes", "--markdown")
    assert code == 0 and out == reference_markdown() + "\n"


def test_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for word in ("opt", "explain", "passes", "examples:", "FLASHLIGHT_LOG"):
        assert word in out
    code, out, _ = run(capsys, "opt", "--help")
    assert code == 0 and "--print-after-all" in out and "--proofs" in out
    assert run(capsys, "opt", "--no-such-flag")[0] == 2

# }}}


# {{{ explain

SCRIPT = """\
import torch


def row_softmax(x):
    return torch.softmax(x * 0.5, dim=-1)


if __name__ == "__main__":
    raise SystemExit("the script's main block must not run")
"""


def test_explain_a_function_in_a_script(tmp_path, capsys):
    target = write(tmp_path, "script.py", SCRIPT) + ":row_softmax"
    code, out, err = run(capsys, "explain", target, "--shapes", "3x8", "--dtype", "float32", "--device", "cpu")
    assert code == 0, err
    assert out.startswith("== flashlight explain: row_softmax ==")
    for section in ("-- legality decisions --", "-- kernels --", "-- fallbacks to eager PyTorch --"):
        assert section in out
    assert "-- lifted --" not in out and "@triton.jit" not in out, "the summary, without IR or source"
    assert len(out.splitlines()) < 40
    code, full, err = run(capsys, "explain", target, "--shapes", "3x8", "--full")
    assert code == 0 and full.startswith(out.rstrip("\n")), "--full starts with the summary"
    assert "-- lifted --" in full and "program row_softmax(x: f32[3,8])" in full and "@triton.jit" in full


def test_explain_errors(tmp_path, capsys):
    script = write(tmp_path, "script.py", SCRIPT)
    code, _, err = run(capsys, "explain", script + ":nope", "--shapes", "3x8")
    assert code == 1 and "no function 'nope'; the script defines: row_softmax" in err
    code, _, err = run(capsys, "explain", script + ":row_softmax", "--shapes", "3x8,3x8")
    assert code == 1 and "cannot take 2 inputs" in err
    code, _, err = run(capsys, "explain", script + ":row_softmax", "--shapes", "3by8")
    assert code == 1 and "malformed shape '3by8'" in err
    code, _, err = run(capsys, "explain", script, "--shapes", "3x8")
    assert code == 1 and "expected SCRIPT.py:FUNCTION" in err


def test_explain_options_from_the_pipeline_and_flags():
    """Flags set Options fields (overrides of the passes); what --passes writes stays in the pipeline,
    where it wins; a flag that contradicts it is an error, since it would be ignored."""
    from flashlight.cli import CLIError, build_parser, explain_options

    def options(*argv):
        return explain_options(build_parser().parse_args(["explain", "s.py:f", "--shapes", "2", *argv]))

    opts = options("--block-n", "32", "--passes", "inline,fuse-reductions{block_limit=4},tile{block_m=16}")
    assert (opts.block_m, opts.block_n, opts.block_limit) == (None, 32, 256)
    assert opts.pipeline == "inline,fuse-reductions{block_limit=4},tile{block_m=16}"
    assert options("--block-m", "16", "--passes", "tile{block_m=16}").block_m == 16, "agreeing is fine"
    with pytest.raises(CLIError, match=r"--block-n 32 contradicts tile\{block_m=16,block_n=8\} in --passes"):
        options("--block-n", "32", "--passes", "tile{block_m=16,block_n=8}")
    with pytest.raises(CLIError, match="option block_m of pass 'tile' is an int, got '1.5'"):
        options("--passes", "tile{block_m=1.5}")


def test_parse_shapes():
    import torch

    from flashlight.cli import CLIError, parse_shapes

    assert parse_shapes("2x3,7:int64,scalar:bf16") == [
        ((2, 3), torch.float32), ((7,), torch.int64), ((), torch.bfloat16)]
    with pytest.raises(CLIError, match="unknown dtype 'float5'"):
        parse_shapes("2:float5")

# }}}


# {{{ logging

@pytest.fixture
def restore_logger():
    logger = logging.getLogger("flashlight")
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


def test_progress_and_configure(restore_logger):
    assert log.get_logger() is restore_logger
    assert log.get_logger("passes").name == "flashlight.passes"
    stream = io.StringIO()
    log.configure("info", stream=stream)
    log.configure("debug", stream=stream)  # reconfigures, does not add a second handler
    log.progress("fused", kernel=0, stmts="M1 L1")
    assert stream.getvalue() == "[flashlight INFO] fused kernel=0 stmts='M1 L1'\n"
    assert restore_logger.level == logging.DEBUG
    with pytest.raises(ValueError, match="unknown log level"):
        log.configure("loud")


def test_env_var_enables_logging():
    env = dict(os.environ, FLASHLIGHT_LOG="debug")
    code = "import flashlight.log as l; l.get_logger('x').debug('hi'); l.progress('step', n=1)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["[flashlight.x DEBUG] hi", "[flashlight INFO] step n=1"]

# }}}
