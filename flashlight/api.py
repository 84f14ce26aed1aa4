"""The public API: ``compile``, ``trace``, ``explain``. This module only wires the layers together.

capture (Dynamo/AOT) -> lift (frontend) -> passes -> Triton source (codegen) -> runtime.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx as fx
from torch._dynamo.exc import FailOnRecompileLimitHit

from flashlight import autotune, passes
from flashlight.codegen import launcher
from flashlight.codegen.triton import CodegenError, KernelSource, generate
from flashlight.passes.fuse_reductions import BLOCK_LIMIT
from flashlight.frontend.capture import capture_graphs, fresh_copy, make_backend, raised_while_tracing, saved_for_backward
from flashlight.frontend.lift import lift_graph
from flashlight.frontend.segments import ProgramSegment
from flashlight.frontend.torch_dtypes import ir_dtype
from flashlight.ir.nodes import Program
from flashlight.log import progress
from flashlight.report import BufferInfo, Explanation, KernelInfo, SavedInfo, describe_kernel, dump_report
from flashlight.runtime import CompiledGraph, CompiledProgram, TunedOnFirstCall, contiguous_strides

log = logging.getLogger("flashlight")


# {{{ options

@dataclass(frozen=True)
class Options:
    """Compilation options. ``None`` picks a default for the device."""

    block_m: int | None = None       # tile of the tiled grid dimension (query rows)
    block_n: int | None = None       # tile of serial loops (key columns)
    block_limit: int = BLOCK_LIMIT   # largest dimension kept whole inside a program
    pipeline: str = passes.DEFAULT_PIPELINE
    exact_roundings: bool = False    # True: round fused intermediates to their dtype, as eager does
    debug_dir: str | None = None     # dump every stage, decision and kernel here ($FLASHLIGHT_DEBUG_DIR)
    num_warps: int | None = None     # Triton launch parameters (None: chosen per kernel)
    num_stages: int | None = None
    autotune: bool | None = None     # measure configurations on the GPU (None: unless sizes are given)

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "num_warps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1
                                      or value & (value - 1)):
                raise ValueError(f"flashlight: {name}={value!r} is not a positive power of two "
                                 f"(valid: None for the default, or 1, 2, 4, ..., e.g. 16, 32, 64, 128)")
        for name in ("block_limit", "num_stages"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"flashlight: {name}={value!r} is not a positive integer")
        if self.autotune not in (None, True, False):
            raise ValueError(f"flashlight: autotune={self.autotune!r} is not None, True or False")
        try:
            passes.parse_pipeline(self.pipeline)
        except ValueError as exc:
            raise ValueError(f"flashlight: pipeline={self.pipeline!r}: {exc}") from None

    def tunes(self, target: str) -> bool:
        pinned = any(x is not None for x in (self.block_m, self.block_n, self.num_stages))
        return target == "cuda" and self.autotune is not False and (self.autotune or not pinned)

    def for_target(self, target: str) -> Options:
        bm = self.block_m or (64 if target == "interpreter" else 128)
        bn = self.block_n or 64
        pipeline = self.pipeline
        if self.exact_roundings:
            pipeline = ",".join(p for p in pipeline.split(",") if p.strip() != "elide-roundings")
        return replace(self, block_m=bm, block_n=bn, pipeline=pipeline)


def _overrides(o: Options) -> dict[str, dict]:
    return {"fuse-reductions": {"block_limit": o.block_limit},
            "tile": {"block_m": o.block_m, "block_n": o.block_n}}

# }}}


def target_of(tensors: Sequence[Any]) -> str:
    devices = {t.device.type for t in tensors if isinstance(t, torch.Tensor)}
    if len(devices) > 1:
        raise ValueError(f"flashlight: inputs are on different devices ({', '.join(sorted(devices))}); "
                         "move them to one device before calling the compiled function")
    device = devices.pop() if devices else "cpu"
    if device == "cuda":
        return "cuda"
    if device == "cpu":
        return "interpreter"
    raise ValueError(f"flashlight: unsupported device type {device!r}")


@dataclass
class SegmentReport:
    """What happened to one program segment of a graph."""

    program: Program | None
    stages: list[tuple[str, str]] = field(default_factory=list)
    kernels: list[KernelSource] = field(default_factory=list)
    error: str | None = None


def compile_segment(seg: ProgramSegment, options: Options, target: str,
                    report: SegmentReport | None = None) -> tuple[Program, list[KernelSource]]:
    """Passes and code generation for one lifted program."""
    if target == "interpreter" and any(t.dtype == "bf16" for t in seg.program.tensors) and \
            not launcher.interpreter_runs_bf16():
        import triton
        raise CodegenError(f"Triton {triton.__version__}'s interpreter cannot compute in bfloat16 "
                           "(the segment runs eagerly on the CPU; on the GPU it compiles)")
    def record(name: str, prog: Program) -> None:
        if report is not None:
            report.stages.append((name, str(prog)))

    record("lifted", seg.program)
    final = passes.run_pipeline(seg.program, options.pipeline, on_stage=record, overrides=_overrides(options))
    strides = {}
    for decl, node in zip(final.inputs, seg.inputs):
        strides[decl.name] = tuple(int(s) for s in node.meta["val"].stride())
    for decl in final.tensors:
        if decl.role != "input":
            strides[decl.name] = contiguous_strides(decl.shape)
    kernels = generate(final, strides, target, num_warps=options.num_warps, num_stages=options.num_stages)
    if report is not None:
        report.program, report.kernels = final, kernels
    return final, kernels


def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], names: list[str], options: Options,
                  name: str = "program", reports: list[SegmentReport] | None = None,
                  arg_order: Sequence[str] = ()) -> CompiledGraph:
    target = target_of(example_inputs)
    opts = options.for_target(target)
    lifted = lift_graph(gm, names, name, arg_order)
    compiled: dict[int, CompiledProgram | TunedOnFirstCall | None] = {}
    fallbacks = [(_op(s.node), s.reason) for s in lifted.fallbacks]
    if fallbacks and reports is None:
        log.warning("flashlight: %d op%s of %s run%s in eager PyTorch: %s", len(fallbacks),
                    "s" if len(fallbacks) > 1 else "", name, "" if len(fallbacks) > 1 else "s",
                    "; ".join(why for _, why in fallbacks))
    device = next((t.device for t in example_inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
    device = torch.device(device.type)
    for k, seg in enumerate(lifted.segments):
        if not isinstance(seg, ProgramSegment):
            continue
        report = SegmentReport(seg.program)
        strides = {d.name: tuple(int(s) for s in n.meta["val"].stride())
                   for d, n in zip(seg.program.inputs, seg.inputs)}

        def build(o: Options, rep: SegmentReport | None = None, seg: ProgramSegment = seg,
                  strides: dict = strides) -> CompiledProgram:
            use_cache = rep is None  # a report (explain, debug dumps) needs every stage
            cached = _cached_segment(seg, o, target) if use_cache else None
            final, kernels = cached if cached is not None else compile_segment(seg, o, target, rep)
            if use_cache and cached is None:
                _store_segment(seg, o, target, final, kernels)
            launches = [launcher.Launch(ks, launcher.load(ks, interpret=(target == "interpreter")))
                        for ks in kernels] if reports is None else []
            return CompiledProgram(final, launches, strides, device)

        started = time.time()
        try:
            keep = reports is not None or debug_dir(options)  # explain and debug dumps need every stage
            if reports is None and options.tunes(target):
                def tuned(inputs: list[torch.Tensor] | None = None, seg: ProgramSegment = seg,
                          build: Callable[..., CompiledProgram] = build,
                          rep: SegmentReport | None = report if keep else None) -> CompiledProgram:
                    def config(bm: int, bn: int, st: int, w: int | None) -> Options:
                        return replace(opts, block_m=bm, block_n=bn, num_stages=st,
                                       num_warps=opts.num_warps or w)  # warps the user set stay

                    choice = autotune.tune(seg.program, device, lambda *c: build(config(*c)), inputs=inputs,
                                           pipeline=opts.pipeline)
                    chosen = config(choice["block_m"], choice["block_n"], choice["num_stages"],
                                    choice.get("num_warps"))
                    return build(chosen, rep)

                if autotune.data_steers(seg.program) and \
                        autotune.lookup(seg.program, autotune.device_name(device), opts.pipeline) is None:
                    # its inputs' data decide the work: the candidates are timed on the first call's inputs
                    compiled[k] = TunedOnFirstCall(build(opts, report if keep else None),
                                                   functools.partial(tuned, rep=None))
                else:
                    compiled[k] = tuned()
            else:
                compiled[k] = build(opts, report if keep else None)
            progress("compiled", program=seg.program.name, kernels=len(compiled[k].launches),
                     seconds=round(time.time() - started, 2))
        except Exception as exc:  # a segment we cannot compile runs eagerly, and says why
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("flashlight: program %s runs in eager PyTorch: %s", seg.program.name, reason)
            report.error = reason
            compiled[k] = None
            fallbacks.append((f"program {seg.program.name} ({len(seg.nodes)} ops)", reason))
        if reports is not None:
            reports.append(report)
        if debug_dir(options) and reports is None:
            _dump(debug_dir(options), seg.program.name, report, fallbacks)  # type: ignore[arg-type]
    return CompiledGraph(lifted, compiled, fallbacks, saved_for_backward(gm))


def debug_dir(options: Options) -> str | None:
    return options.debug_dir or os.environ.get("FLASHLIGHT_DEBUG_DIR") or None


def _dump(root: str, name: str, report: SegmentReport, fallbacks: list[tuple[str, str]]) -> None:
    out = dump_report(root, name, report.stages, report.program, report.kernels, fallbacks, report.error)
    if out is None:
        log.warning("flashlight: cannot write debug output to %s", root)
    else:
        log.info("flashlight: wrote the compilation of %s to %s", name, out)


# {{{ the compiled-segment cache: final IR and kernel sources, on disk

def _segment_key(seg: ProgramSegment, o: Options, target: str) -> str:
    import hashlib

    import triton

    strides = [tuple(int(x) for x in n.meta["val"].stride()) for n in seg.inputs]
    text = "\n".join([str(seg.program), repr(o), target, repr(strides), torch.__version__, triton.__version__,
                      _code_version()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=1)
def _code_version() -> str:
    """A digest of flashlight's own source: a cached compilation is valid only for the same code."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    root = Path(__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _cached_segment(seg: ProgramSegment, o: Options, target: str) -> tuple[Program, list[KernelSource]] | None:
    import json

    from flashlight.ir import parse

    path = launcher.cache_dir() / "programs" / f"{_segment_key(seg, o, target)}.json"
    try:
        data = json.loads(path.read_text())
        return parse(data["program"]), [KernelSource(**k) for k in data["kernels"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, or corrupt: compile again (and overwrite it)


def _store_segment(seg: ProgramSegment, o: Options, target: str, final: Program,
                   kernels: list[KernelSource]) -> None:
    import dataclasses
    import json

    path = launcher.cache_dir() / "programs" / f"{_segment_key(seg, o, target)}.json"
    data = {"program": str(final), "kernels": [dataclasses.asdict(k) for k in kernels]}
    try:
        launcher.write_atomic(path, json.dumps(data))
    except OSError as exc:
        log.warning("flashlight: cannot cache compiled programs in %s (%s); compiling without a cache",
                    path.parent, exc)

# }}}


def _op(n: fx.Node) -> str:
    return str(getattr(n.target, "__name__", n.target))


# {{{ compile

class CompiledFunction:
    """``fn`` compiled by flashlight; call it like ``fn``. Recompiles for new shapes, dtypes,
    devices or strides (Dynamo's guards)."""

    def __init__(self, fn: Callable, options: Options) -> None:
        self.fn = fn
        self.options = options
        self.graphs: list[CompiledGraph] = []
        self.eager_reason: str | None = None  # set if capture failed: every call runs fn eagerly
        self._warned_recompile_limit = False
        self._name = _program_name(fn)
        self._compiled = torch.compile(fresh_copy(fn), backend=make_backend(self._compile_graph), dynamic=False)
        functools.update_wrapper(self, fn)

    def _compile_graph(self, gm: fx.GraphModule, example_inputs: Sequence[Any], names: list[str]) -> Callable:
        graph = compile_graph(gm, example_inputs, names, self.options, self._name, arg_order=_params(self.fn))
        self.graphs.append(graph)

        def run(args: list) -> Any:
            return graph(args)

        run._boxed_call = True  # type: ignore[attr-defined]
        return run

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        target_of([a for a in args if isinstance(a, torch.Tensor)])
        if self.eager_reason is not None:
            return self.fn(*args, **kwargs)
        try:
            with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
                return self._compiled(*args, **kwargs)
        except FailOnRecompileLimitHit:
            # Dynamo would otherwise run this and every later new shape eagerly, silently
            if not self._warned_recompile_limit:
                self._warned_recompile_limit = True
                log.warning("flashlight: %s was compiled for %d input signatures, Dynamo's recompile limit "
                            "(torch._dynamo.config.recompile_limit): calls with new shapes, dtypes or strides "
                            "run in eager PyTorch", self._name, torch._dynamo.config.recompile_limit)
            return self.fn(*args, **kwargs)
        except Exception as exc:
            if not raised_while_tracing(exc):
                raise
            # fn's own error (mismatched shapes, wrong dtypes) reaches us as Dynamo's fake-tensor
            # error: eager raises it as the user knows it. If eager succeeds, capture or compilation
            # failed: run fn as written, from now on
            result = self.fn(*args, **kwargs)
            self.eager_reason = f"capture failed inside Dynamo: {type(exc).__name__}: {exc}".splitlines()[0]
            log.warning("flashlight: %s runs eagerly: %s", self._name, self.eager_reason)
            return result


def make_options(options: dict[str, Any]) -> Options:
    """``Options(**options)``, with a ValueError naming the valid options for an unknown one."""
    fields = [f.name for f in dataclasses.fields(Options)]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ValueError(f"flashlight: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"valid options: {', '.join(fields)}")
    return Options(**options)


def compile(fn: Callable | None = None, **options: Any) -> Any:
    """Compile ``fn`` (also usable as ``@flashlight.compile`` or ``@flashlight.compile(block_m=64)``)."""
    opts = make_options(options)
    if fn is None:
        return lambda f: CompiledFunction(f, opts)
    return CompiledFunction(fn, opts)


def _params(fn: Callable) -> list[str]:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _program_name(fn: Callable) -> str:
    raw = getattr(fn, "__name__", "program")
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in raw).strip("_") or "program"
    return name if name[0].isalpha() else "p_" + name

# }}}


# {{{ trace and explain

def trace(fn: Callable, *args: Any, **kwargs: Any) -> Program:
    """The lifted program of ``fn`` on these inputs (runs ``fn`` once, eagerly, to capture it)."""
    graphs, _ = capture_graphs(fn, args, kwargs)
    programs = [p for g in graphs
                for p in lift_graph(g.graph_module, g.input_names, _program_name(fn), _params(fn)).programs]
    if len(programs) != 1:
        raise ValueError(f"{_program_name(fn)} lifts to {len(programs)} programs (graph breaks or eager "
                         "fallbacks split it); flashlight.explain shows each of them")
    return programs[0]


def explain(fn: Callable, *args: Any, options: Options | None = None, **kwargs: Any) -> Explanation:
    """Explain how ``fn`` compiles on these inputs. Runs ``fn`` once eagerly to capture it;
    no kernel is launched and nothing is timed."""
    opts = options or Options()
    name = _program_name(fn)
    graphs, _ = capture_graphs(fn, args, kwargs)
    ex = Explanation(name, [], [], [], [], [], [])
    for g in graphs:
        reports: list[SegmentReport] = []
        cg = compile_graph(g.graph_module, g.example_inputs, g.input_names, opts, name, reports, _params(fn))
        ex.fallbacks += cg.fallbacks
        ex.saved += [SavedInfo(n.name, tuple(n.meta["val"].shape), ir_dtype(n.meta["val"].dtype),
                               "read by the backward (AOT autograd's partition)") for n in cg.saved]
        for r in reports:
            ex.stages += r.stages
            if r.program is None:
                continue
            ex.programs.append(r.program)
            ex.proofs += list(r.program.proofs)
            ex.kernels += [KernelInfo(k.name, k.source, k.grid, describe_kernel(r.program, nest))
                           for k, nest in zip(r.kernels, r.program.body)]
            ex.buffers += [BufferInfo(t.name, t.shape, t.dtype) for t in r.program.temps if t.storage == "global"]
    return ex

# }}}

