"""A differential fuzzer: random small PyTorch programs, eager against ``flashlight.compile``.

The command line, ``python -m fuzz`` (from the repository root; ``--help`` lists the options):
``--show`` prints the programs of the seeds, anything else runs a campaign (``campaigns.py``)
and prints its summary; the exit status is 1 if a program mismatched or crashed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import run
from .campaigns import campaign, campaign_in_processes
from .generator import generate
from .program import render_core


def parse_seeds(text: str) -> range:
    """``START:STOP``, or one seed."""
    if ":" in text:
        a, b = text.split(":")
        return range(int(a), int(b))
    return range(int(text), int(text) + 1)


def main(argv: list[str] | None = None) -> int:
    """``python -m fuzz ARGS``; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0:200", help="a range START:STOP, or one seed")
    ap.add_argument("--time-budget", type=float, default=None, help="stop starting programs after this many seconds")
    ap.add_argument("--out", default="fuzz/corpus", help="where minimized reproducers are written")
    ap.add_argument("--no-minimize", action="store_true", help="record failures, do not minimize them")
    ap.add_argument("--max-minimize", type=int, default=8, help="minimize at most this many failures")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per program before it counts as a timeout")
    ap.add_argument("--jsonl", default=None, help="append one JSON record per program to this file")
    ap.add_argument("--show", action="store_true", help="print the programs of the seeds, run nothing")
    ap.add_argument("--fail-on-compile-error", action="store_true",
                    help="count a segment whose compilation raised (it runs eagerly) as a crash, and minimize it")
    ap.add_argument("-v", "--verbose", action="store_true", help="one line per program")
    ap.add_argument("--jobs", type=int, default=1,
                    help="run this many processes, each on a contiguous share of the seeds, and merge their results")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    run.STRICT_FALLBACKS = args.fail_on_compile_error  # what run_program reads
    if args.show:
        for seed in seeds:
            print(f"# seed {seed}\n{render_core(generate(seed))}")
        return 0
    if args.jobs > 1:
        s = campaign_in_processes(seeds, args.jobs, argv if argv is not None else sys.argv[1:],
                                  Path(args.jsonl) if args.jsonl else None)
    else:
        s = campaign(seeds, args.time_budget, Path(args.out), not args.no_minimize, args.timeout, args.max_minimize,
                     Path(args.jsonl) if args.jsonl else None, args.verbose)
    print(s.text())
    return 1 if s.counts["mismatch"] or s.counts["crash"] or s.lost_jobs else 0
