"""Campaigns: many seeds, one :class:`Summary` (:func:`campaign`), or the same split over
processes (:func:`campaign_in_processes`, ``--jobs N``).

A campaign generates and runs each seed's program, counts outcomes, fallbacks and families,
minimizes failures into reproducers, and appends one JSON record per program to ``--jsonl``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .generator import GENERATOR_VERSION, generate
from .minimizer import minimize, reproducer
from .program import tags
from .run import run_program

# the checkout this fuzzer is in: the --jobs children import it (and its flashlight) from there
_CHECKOUT = Path(__file__).resolve().parent.parent


@dataclass
class Summary:
    """What a campaign found: outcomes, fallbacks and their reasons, families, failures."""
    counts: Counter = field(default_factory=Counter)
    fallback_programs: int = 0
    fallback_reasons: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    programs: int = 0
    families: Counter = field(default_factory=Counter)  # (tag, outcome): programs (see :func:`tags`)
    # ``--jobs`` children that did not exit cleanly: their share's later seeds never ran
    lost_jobs: list[str] = field(default_factory=list)

    def add(self, kind: str, fallbacks: list, program_tags: list[str]) -> None:
        self.programs += 1
        self.counts[kind] += 1
        if fallbacks:
            self.fallback_programs += 1
            for op, why in fallbacks:
                self.fallback_reasons[_fallback_reason(op, why)] += 1
        for t in program_tags:
            self.families[t, kind] += 1

    def text(self) -> str:
        """The summary that a campaign prints."""
        ran = self.programs - self.counts["eager_error"]
        lines = [f"programs: {self.programs} in {self.seconds:.1f} s (generator version {GENERATOR_VERSION})"]
        lines.append("outcomes: " + ", ".join(f"{k} {self.counts[k]}" for k in
                                                ("ok", "mismatch", "crash", "timeout", "eager_error")))
        rate = self.fallback_programs / ran if ran else 0.0
        fams = []
        for t in ("sdpa", "grad", "f64", "empty"):
            kinds = {k: n for (tag, k), n in self.families.items() if tag == t}
            if kinds:
                each = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
                fams.append(f"{t} {sum(kinds.values())} ({each})")
        if fams:
            lines.append("families: " + "; ".join(fams))
        lines.append(f"fallback to eager in {self.fallback_programs} of {ran} programs ({100 * rate:.1f}%)")
        for reason, n in self.fallback_reasons.most_common(12):
            lines.append(f"  {n:5d}  {reason}")
        for job in self.lost_jobs:
            lines.append(f"lost job: {job}")
        for f in self.failures:
            lines.append(f"{f['kind']}: seed {f['seed']} [{f['signature']}] {f['detail'][:150]!r}"
                         + (f" -> {f['reproducer']}" if f.get("reproducer") else ""))
        return "\n".join(lines)


def _fallback_reason(op: str, why: str) -> str:
    """A fallback's reason with its numbers and program names generalized, to count alike ones."""
    op = re.sub(r"program \S+ \(\d+ ops\)", "program (N ops)", op)
    why = re.sub(r"\d+", "N", why.splitlines()[0] if why else "")[:100]
    return f"{op}: {why}"


def campaign(seeds: range, time_budget: float | None = None, out: Path | None = None, minimize_failures: bool = True,
             timeout: float | None = 120.0, max_minimize: int = 8, jsonl: Path | None = None,
             verbose: bool = False, reset_every: int = 25) -> Summary:
    """Generate and run the programs of ``seeds`` (until ``time_budget`` seconds have passed);
    minimize mismatches and crashes into reproducers in ``out``."""
    t0 = time.monotonic()
    s = Summary()
    minimized_sigs: set[str] = set()
    n_minimized = 0
    jf = open(jsonl, "a") if jsonl else None
    try:
        for n, seed in enumerate(seeds):
            if time_budget is not None and time.monotonic() - t0 >= time_budget:
                break
            if reset_every and n and n % reset_every == 0:
                torch._dynamo.reset()
            try:
                p = generate(seed)
            except Exception as exc:  # a generator bug: say so, go on
                print(f"seed {seed}: generator failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            o = run_program(p, timeout)
            program_tags = tags(p)
            s.add(o.kind, o.fallbacks, program_tags)
            if verbose:
                print(f"seed {seed}: {o.kind} ({o.seconds:.1f} s, {len(p.ops)} ops)"
                      f"{''.join(' ' + t for t in program_tags)}{' fallback' if o.fallbacks else ''}"
                      + (f" {o.signature}: {o.detail.splitlines()[0][:120]}" if o.kind in ("mismatch", "crash") else ""),
                      flush=True)
            rec = {"seed": seed, "generator": GENERATOR_VERSION, "kind": o.kind, "seconds": round(o.seconds, 2), "ops": len(p.ops),
                   "tags": program_tags, "signature": o.signature, "fallbacks": [list(x) for x in o.fallbacks],
                   "detail": o.detail.splitlines()[0][:300] if o.detail else ""}
            if o.kind in ("mismatch", "crash"):
                fail = {"seed": seed, "kind": o.kind, "signature": o.signature, "detail": rec["detail"]}
                if out is not None and minimize_failures and n_minimized < max_minimize and \
                        (o.kind == "mismatch" or o.signature not in minimized_sigs):
                    n_minimized += 1
                    minimized_sigs.add(o.signature)
                    small, so = minimize(p, o.kind, o.signature, timeout=timeout,
                                         log=(lambda m: print(m, flush=True)) if verbose else None)
                    out.mkdir(parents=True, exist_ok=True)
                    path = out / f"{o.kind}_{seed}.py"
                    path.write_text(reproducer(small, so, seed))
                    fail["reproducer"] = str(path)
                    rec["reproducer"] = str(path)
                s.failures.append(fail)
            if jf:
                jf.write(json.dumps(rec) + "\n")
                jf.flush()
    finally:
        if jf:
            jf.close()
    s.seconds = time.monotonic() - t0
    return s


def summarize(records: list[dict], seconds: float) -> Summary:
    """A campaign's summary from its ``--jsonl`` records."""
    s = Summary(seconds=seconds)
    for r in records:
        s.add(r["kind"], r["fallbacks"], r.get("tags", []))
        if r["kind"] in ("mismatch", "crash"):
            s.failures.append({k: r[k] for k in ("seed", "kind", "signature", "detail", "reproducer") if k in r})
    return s


def campaign_in_processes(seeds: range, jobs: int, argv: list[str], jsonl: Path | None) -> Summary:
    """``--jobs N``: N child processes on contiguous shares of ``seeds`` (each with the same
    options and time budget), then one summary of all their records."""
    import subprocess
    import tempfile

    t0 = time.monotonic()
    own = [a for k, a in enumerate(argv) if not (a.startswith(("--jobs", "--seeds", "--jsonl")) or
                                                 (k and argv[k - 1] in ("--jobs", "--seeds", "--jsonl")))]
    share = -(-len(seeds) // jobs)
    # the children import this fuzzer (and its checkout's flashlight) from any working directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_CHECKOUT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="flashlight-fuzz-") as tmp:
        # beside the merged file if there is one: a killed campaign leaves its records behind
        base = Path(f"{jsonl}.part") if jsonl is not None else Path(tmp) / "part"
        parts = [Path(f"{base}{k}") for k in range(jobs)]
        children = []
        for k, part in enumerate(parts):
            sub = seeds[k * share:(k + 1) * share]
            if len(sub):
                cmd = [sys.executable, "-m", "fuzz", "--seeds", f"{sub.start}:{sub.stop}", "--jsonl", str(part), *own]
                children.append((sub, part, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env)))
        lost = []
        for sub, part, c in children:
            # a child killed by a signal (the out-of-memory killer, a crash in native code) says
            # nothing itself; its share is cut short, and the summary must say so
            if c.wait() != 0:
                done = len(part.read_text().splitlines()) if part.exists() else 0
                lost.append(f"seeds {sub.start}:{sub.stop} exited with code {c.returncode} after {done} programs")
        lines = [line for part in parts if part.exists() for line in part.read_text().splitlines()]
        if jsonl is not None:
            with open(jsonl, "a") as f:
                f.writelines(line + "\n" for line in lines)
            for part in parts:
                part.unlink(missing_ok=True)
    summary = summarize([json.loads(line) for line in lines], time.monotonic() - t0)
    summary.lost_jobs = lost
    return summary
