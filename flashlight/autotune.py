"""Choosing tile sizes, warps and stages per program and device, by measuring them.

For a program on the GPU, a handful of configurations (``block_m``, ``block_n``, ``num_stages``,
and ``num_warps`` where the rule by register tiles is not the best) are each run through the
tiling passes and code generation, timed, and the fastest is kept. The two fastest tilings are
also timed with the warps each of their kernels ran fastest with, one launch at a time
(:func:`kernel_warps`): a model's program holds attention kernels and matrix products with
prologues, which want different warps. A program whose inputs are all floating point is timed at
compile time on random inputs of its shapes. A program with integer or boolean inputs is timed on
the first call's real inputs (``data_steers``): those inputs decide how much work there is
(document ids, masks, key lengths let whole tiles be skipped), and no made-up data stands in for
them (document ids all zero make every tile full, and the configuration that wins there lost
1.9x on real documents on the H100). The choice is cached on disk, keyed by the program's text,
the device and the software versions, so a warm compile reads it back. The text is the program's
*size class*: every extent rounded up to a power of two, so that one choice serves every sequence
length of a bucket (a new length in a known bucket compiles without timing anything). Every
configuration is a legal one: tiling is proved by the passes whatever the sizes. :func:`build_tuned` applies this to
a program segment being compiled; :func:`tune` measures.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from flashlight.cache import code_version
from flashlight.codegen.launcher import cache_dir
from flashlight.frontend.torch_dtypes import IR_TO_TORCH
from flashlight.ir import expr as E
from flashlight.ir.expr import Const, Iter
from flashlight.ir.nodes import Guard, Node, Program, Stmt, dims_at
from flashlight.ir.printer import format_canonical
from flashlight.log import progress
from flashlight.options import Options
from flashlight.passes import DEFAULT_PIPELINE
from flashlight.report import SegmentReport
from flashlight.runtime import CompiledProgram, TunedOnFirstCall, TunedPerBucket

log = logging.getLogger("flashlight")

# (block_m, block_n, num_stages, num_warps); warps None: chosen by the kernel's register tiles
# (8 past 32k elements). 128x64 with 4 warps and 2 stages was the best of a sweep at head dim 128
# (1.10 ms against 1.13 for the next, vanilla B4 H16 S4096 on one H100), where the rule gives 8;
# on other machines 64x64 came within noise of it and was chosen.
CANDIDATES = [(128, 64, 3, None), (64, 64, 3, None), (128, 128, 3, None), (128, 64, 2, None), (64, 32, 3, None),
              (128, 64, 2, 4)]
ROUNDS = 2
# Warps each kernel of a tiling is also timed at, one launch at a time, for a candidate whose
# warps the rule chose: one program's kernels want different ones. The rule's 4 warps for a
# 128x128 tile left every kernel of a 4-layer Llama with a matrix product at 255 registers and
# 0.4-3.5 KB of spills a thread (ptxas for sm_90, run offline); with 8, 0-1.2 KB, while an
# attention kernel at head dim 128 ran fastest with 4.
WARPS = (4, 8)
LAUNCH_ITERS = 20
REFINED = 2  # tilings refined so, the fastest with the rule's warps (each costs a compile a kernel)


def _bucket(n: int) -> int:
    return n if n <= 1 else 1 << (n - 1).bit_length()


def size_class(program: Program, sizes: Mapping[str, int] | None = None) -> Program:
    """``program`` with every tensor dimension and loop extent rounded up to a power of two, a size
    parameter at the bucket of its value in ``sizes``: the programs that one tuning choice serves.
    Tiles are padded to powers of two, so the kernels of one class have the same tiles and differ
    only in their masks and trip counts."""
    sizes = sizes or {}

    def dim(d: int | str) -> int | str:
        return _bucket(d) if isinstance(d, int) else _bucket(sizes[d]) if d in sizes else d

    def resize(node: Node) -> Node:
        if isinstance(node, Stmt):
            return node
        body = tuple(resize(c) for c in node.body)
        if isinstance(node, Guard):
            return replace(node, body=body)
        upper = node.upper
        if isinstance(upper, Const) and isinstance(upper.value, int):
            upper = replace(upper, value=_bucket(upper.value))
        elif isinstance(upper, Iter) and upper.name in sizes:
            upper = E.index(_bucket(sizes[upper.name]))
        return replace(node, upper=upper, body=body)

    tensors = tuple(replace(t, shape=tuple(dim(d) for d in t.shape)) for t in program.tensors)
    return program.replace(tensors=tensors, body=tuple(resize(n) for n in program.body))


def _key(program: Program, device: str, pipeline: str, sizes: Mapping[str, int] | None = None) -> str:
    import triton

    text = "\n".join([format_canonical(size_class(program, sizes)), device, pipeline, torch.__version__,
                      triton.__version__, code_version()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _path(key: str) -> Path:
    return cache_dir() / "tuning" / f"{key}.json"


def lookup(program: Program, device: str, pipeline: str = DEFAULT_PIPELINE,
           sizes: Mapping[str, int] | None = None) -> dict | None:
    """The stored choice for ``program`` compiled through ``pipeline`` (another pipeline makes other
    kernels, which another choice may suit), or None."""
    path = _path(_key(program, device, pipeline, sizes))
    try:
        data = json.loads(path.read_text())
        return data if {"block_m", "block_n", "num_stages"} <= set(data) else None
    except (OSError, ValueError):
        return None


def store(program: Program, device: str, choice: dict, pipeline: str = DEFAULT_PIPELINE,
          sizes: Mapping[str, int] | None = None) -> None:
    path = _path(_key(program, device, pipeline, sizes))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump(choice, f)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("flashlight: cannot cache a tuning decision in %s: %s", path.parent, exc)


def data_steers(program: Program) -> bool:
    """Whether the program's non-float inputs may decide how much work its kernels do."""
    return any(not IR_TO_TORCH[d.dtype].is_floating_point for d in program.inputs)


def random_inputs(program: Program, device: str, sizes: Mapping[str, int] | None = None) -> list[torch.Tensor]:
    """Inputs of the program's shapes (a size parameter at its value in ``sizes``)."""
    out = []
    for d in program.inputs:
        dt = IR_TO_TORCH[d.dtype]
        shape = dims_at(d.shape, sizes or {})
        if dt.is_floating_point:
            out.append(torch.randn(shape, dtype=dt, device=device))
        else:
            out.append(torch.zeros(shape, dtype=dt, device=device))
    return out


def _do_bench(fn: Callable[[], Any]) -> float:
    """Median over 100 ms of back-to-back launches: sustained, as in use. In 20 ms bursts the H100
    does not yet run at its power-limited clock, and ranks differently: ALiBi at 2x16x8192 timed
    64x64 at 1.38 ms and 128x128 at 1.45 in bursts, 1.49 and 1.41 sustained."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _launch_times(run: CompiledProgram, inputs: list[torch.Tensor]) -> list[float]:
    """Milliseconds of each of ``run``'s launches (median of ``LAUNCH_ITERS`` calls of the program,
    CUDA events around each launch), after one call that compiles them."""
    tensors, sizes = run.bind(inputs)
    for launch in run.launches:
        launch(tensors, sizes)
    events = [[(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in run.launches]
              for _ in range(LAUNCH_ITERS)]
    torch.cuda.synchronize()
    for row in events:
        for launch, (start, end) in zip(run.launches, row):
            start.record()
            launch(tensors, sizes)
            end.record()
    torch.cuda.synchronize()
    times = [sorted(row[k][0].elapsed_time(row[k][1]) for row in events) for k in range(len(run.launches))]
    return [t[len(t) // 2] for t in times]


def kernel_warps(run: CompiledProgram, inputs: list[torch.Tensor],
                 launch_timer: Callable[[CompiledProgram, list[torch.Tensor]], list[float]]) -> list[int]:
    """The warps (of ``WARPS``) each kernel of ``run`` ran fastest with, timed one launch at a time;
    the kernels of one tiling are the same whatever their warps, so each is chosen on its own."""
    times = {w: launch_timer(run.with_warps([w] * len(run.launches)), inputs) for w in WARPS}
    return [min(WARPS, key=lambda w: times[w][k]) for k in range(len(run.launches))]


def tune(program: Program, device: torch.device, build: Callable[[int, int, int, int | None], Any],
         timer: Callable[[Callable[[], Any]], float] = _do_bench,
         inputs: list[torch.Tensor] | None = None, pipeline: str = DEFAULT_PIPELINE,
         sizes: Mapping[str, int] | None = None,
         launch_timer: Callable[[CompiledProgram, list[torch.Tensor]], list[float]] | None = None,
         warps_per_kernel: bool = True) -> dict:
    """The fastest configuration; ``build(block_m, block_n, num_stages, num_warps)`` returns a callable
    taking the program's inputs (or raises if that configuration cannot be compiled). Timed on
    ``inputs`` if given, else on random inputs of the program's shapes (its size parameters at
    ``sizes``, whose buckets key the choice). A candidate built as a :class:`CompiledProgram` whose
    warps the rule chose is also tried with each kernel's fastest warps (``launch_timer``, CUDA
    events on the GPU; not with ``warps_per_kernel`` False); that choice is ``kernel_warps``."""
    cached = lookup(program, device_name(device), pipeline, sizes)
    if cached is not None:
        return cached
    if not warps_per_kernel:  # the user's warps stay
        launch_timer = None
    elif launch_timer is None and device.type == "cuda":
        launch_timer = _launch_times
    with _real_tensors():
        choice = _measure(program, device, build, timer, inputs, sizes, launch_timer)
    store(program, device_name(device), choice, pipeline, sizes)
    return choice


def _real_tensors():
    """Compilation runs inside AOT autograd's fake-tensor mode; measuring needs real tensors."""
    try:
        from torch._subclasses.fake_tensor import unset_fake_temporarily
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return unset_fake_temporarily()


def _measure(program: Program, device: torch.device, build: Callable[[int, int, int, int | None], Any],
             timer: Callable[[Callable[[], Any]], float], inputs: list[torch.Tensor] | None,
             sizes: Mapping[str, int] | None = None,
             launch_timer: Callable[[CompiledProgram, list[torch.Tensor]], list[float]] | None = None) -> dict:
    inputs = random_inputs(program, device, sizes) if inputs is None else inputs
    t0 = time.time()
    runs: dict[tuple[int, int, int, int | tuple[int, ...] | None], Any] = {}
    for bm, bn, stages, warps in CANDIDATES:
        try:
            run = build(bm, bn, stages, warps)
            run(inputs)
        except Exception as exc:  # noqa: BLE001  (a configuration that does not compile is skipped)
            log.info("flashlight: tuning %s: %d/%d/%d/%s failed: %s", program.name, bm, bn, stages, warps, exc)
            continue
        runs[(bm, bn, stages, warps)] = run
    # every candidate is timed in ROUNDS interleaved rounds and keeps its best, so that one noisy
    # timing of a 0.1 ms kernel does not decide (sliding window at S512 was tuned to a configuration
    # that ran 0.149 ms, where the best candidate takes 0.091)
    times = _timed(runs, inputs, timer)
    if launch_timer is not None:  # the fastest tilings again, each kernel with its fastest warps
        mixed = {}
        ranked = sorted((c for c, run in runs.items() if c[3] is None and isinstance(run, CompiledProgram)
                         and run.launches), key=times.__getitem__)
        for bm, bn, stages, _ in ranked[:REFINED]:
            run = runs[(bm, bn, stages, None)]
            try:
                per_kernel = kernel_warps(run, inputs, launch_timer)
            except Exception as exc:  # noqa: BLE001  (the rule's warps stay the candidate)
                log.info("flashlight: tuning %s: warps per kernel of %d/%d/%d failed: %s", program.name, bm, bn,
                         stages, exc)
                continue
            if per_kernel != [ln.kernel.num_warps for ln in run.launches]:
                mixed[(bm, bn, stages, tuple(per_kernel))] = run.with_warps(per_kernel)
        times.update(_timed(mixed, inputs, timer))
    best: tuple[float, dict] | None = None
    for (bm, bn, stages, warps), ms in times.items():
        progress("tuning", program=program.name, block_m=bm, block_n=bn, stages=stages, warps=warps, ms=round(ms, 4))
        if best is None or ms < best[0]:
            each = list(warps) if isinstance(warps, tuple) else None
            best = (ms, {"block_m": bm, "block_n": bn, "num_stages": stages,
                         "num_warps": None if each else warps, "kernel_warps": each, "ms": ms})
    if best is None:
        raise RuntimeError(f"no configuration of {program.name} compiles")
    choice = best[1]
    choice["tuning_s"] = round(time.time() - t0, 2)
    return choice


def _timed(runs: Mapping[Any, Any], inputs: list[torch.Tensor], timer: Callable[[Callable[[], Any]], float]
           ) -> dict[Any, float]:
    """The best of ``ROUNDS`` interleaved timings of each run."""
    times: dict[Any, float] = {}
    for _ in range(ROUNDS):
        for config, run in runs.items():
            ms = timer(lambda run=run: run(inputs))
            times[config] = min(ms, times.get(config, ms))
    return times


def size_bucket(sizes: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """The power-of-two bucket of each size: the sizes one tuning choice serves."""
    return tuple(sorted((p, _bucket(n)) for p, n in sizes.items()))


def build_tuned_per_bucket(program: Program, device: torch.device, opts: Options,
                           build: Callable[..., CompiledProgram], sizes: Mapping[str, int]) -> TunedPerBucket:
    """A program with size parameters tuned per power-of-two bucket of its sizes: for the bucket of
    ``sizes`` now, for a call's bucket when it was not tuned before (a choice on disk is read back,
    not timed). A bucket is tuned at its largest sizes (the powers of two), not at the sizes that
    happened to come first: one choice serves the bucket, whichever length opened it (in run 19
    the bucket (2048, 4096] was tuned at S=3000, and its vanilla kernel took 1.24x the static
    kernel's time at 4096)."""
    def at(s: Mapping[str, int]) -> CompiledProgram | TunedOnFirstCall:
        return build_tuned(program, device, opts, build, None, {p: _bucket(n) for p, n in s.items()})

    return TunedPerBucket(at(sizes), size_bucket(sizes), at, size_bucket)


def build_tuned(program: Program, device: torch.device, opts: Options,
                build: Callable[..., CompiledProgram],
                report: SegmentReport | None,
                sizes: Mapping[str, int] | None = None) -> CompiledProgram | TunedOnFirstCall:
    """``build(options, report)`` with the configuration that :func:`tune` picks for ``program``:
    now, or, where the inputs' data steer the work and no choice is stored, on the first call's
    inputs (until then it runs built with ``opts``). Warps the user set stay. A program with size
    parameters is tuned at ``sizes`` (the sizes it was captured at)."""
    def tuned(inputs: list[torch.Tensor] | None = None, rep: SegmentReport | None = report) -> CompiledProgram:
        def config(bm: int, bn: int, st: int, w: int | None) -> Options:
            return replace(opts, block_m=bm, block_n=bn, num_stages=st, num_warps=opts.num_warps or w)

        choice = tune(program, device, lambda *c: build(config(*c)), inputs=inputs, pipeline=opts.pipeline,
                      sizes=sizes, warps_per_kernel=opts.num_warps is None)
        chosen = config(choice["block_m"], choice["block_n"], choice["num_stages"], choice.get("num_warps"))
        run = build(chosen, rep)
        each = choice.get("kernel_warps")
        if each and opts.num_warps is None and len(each) == len(run.launches):
            run = run.with_warps(each)
            if rep is not None and rep.kernels:
                rep.kernels = [replace(k, num_warps=w) for k, w in zip(rep.kernels, each)]
        return run

    if data_steers(program) and lookup(program, device_name(device), opts.pipeline, sizes) is None:
        # its inputs' data decide the work: the candidates are timed on the first call's inputs
        return TunedOnFirstCall(build(opts, report), functools.partial(tuned, rep=None))
    return tuned()
