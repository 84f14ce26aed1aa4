"""The public API: ``compile``, ``trace``, ``explain``. This module only wires the layers together.

capture (Dynamo/AOT) -> lift (frontend) -> passes -> Triton source (codegen) -> runtime, with
the options (:mod:`.options`), the disk cache (:mod:`.cache`), tuning (:mod:`.autotune`) and
debug dumps (:mod:`.debug_dump`) each in a module of their own.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from dataclasses import replace
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch._dynamo.exc import FailOnRecompileLimitHit

from flashlight import autotune, cache, handoff, inductor_graph, passes
from flashlight.counting import count_eager_call, counters
from flashlight.codegen import launcher
from flashlight.codegen.triton import CodegenError, KernelSource, generate
from flashlight.debug_dump import debug_dir, dump_segment
from flashlight.frontend.capture import capture_graphs, fresh_copy, make_backend, raised_while_tracing, saved_for_backward
from flashlight.frontend.lift import lift_graph
from flashlight.frontend.segments import LiftedGraph, ProgramSegment, is_empty
from flashlight.frontend.symbolic import captured_sizes, hint, shape_symbols, size_inputs, symbols_read, value_at
from flashlight.frontend.torch_dtypes import ir_dtype
from flashlight.ir import expr as E
from flashlight.ir.nodes import Program
from flashlight.log import progress
from flashlight.options import Options, make_options, pass_overrides
from flashlight.report import BufferInfo, Explanation, KernelInfo, SavedInfo, SegmentReport, describe_kernel
from flashlight.runtime import (CompiledGraph, CompiledPerSize, CompiledProgram, TunedOnFirstCall, TunedPerBucket,
                                program_label, symbolic_strides)

log = logging.getLogger("flashlight")


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
    final = passes.run_pipeline(seg.program, options.pipeline, on_stage=record, overrides=pass_overrides(options))
    strides = input_layout(final, seg)
    for decl in final.tensors:
        if decl.role != "input":
            strides[decl.name] = symbolic_strides(decl.shape)
    kernels = generate(final, strides, target, num_warps=options.num_warps, num_stages=options.num_stages)
    if report is not None:
        report.program, report.kernels = final, kernels
    return final, kernels


def input_layout(program: Program, seg: ProgramSegment) -> dict[str, tuple[int | E.Expr, ...]]:
    """The strides kernels read each input with: as traced for a program of static sizes; for one
    with size parameters, contiguous at each call's sizes (inputs laid out otherwise are copied)."""
    if program.params:
        return {d.name: symbolic_strides(d.shape) for d in program.inputs}
    # a program lifted at one call's sizes: its traced strides at those sizes, evaluated without
    # int() on a SymInt, which would specialise Dynamo's symbol to this size for every later
    # compilation of the graph (the program for the next size was lifted at this one's)
    return {d.name: tuple(_number_at(s, seg.bound) for s in n.meta["val"].stride())
            for d, n in zip(program.inputs, seg.inputs)}


def _number_at(s: Any, sizes: Mapping[str, int]) -> int:
    n = value_at(s, sizes)
    return n if n is not None else hint(s)


def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], names: list[str], options: Options,
                  name: str = "program", reports: list[SegmentReport] | None = None,
                  arg_order: Sequence[str] = (), sizes: Mapping[str, int] | None = None,
                  lifted: LiftedGraph | None = None) -> CompiledGraph | CompiledPerSize:
    """Lift ``gm`` (unless ``lifted`` is its lift) and compile each of its program segments; with
    ``reports`` (explain), record every stage and load no kernel. A graph with varying sizes
    compiles once, with size parameters, where every program of it can; else at each call's
    sizes (``sizes``: bound)."""
    positions = size_inputs([n for n in gm.graph.nodes if n.op == "placeholder"])
    if positions and sizes is None and lifted is None and reports is None:
        return _compile_varying(gm, example_inputs, names, options, name, arg_order, positions)
    target = target_of(example_inputs)
    # where Inductor may take programs, each is cut into what flashlight's kernels gain on and the rest
    apart = _region_of(options, target) if handoff.cuts(options.inductor, target) else None
    lifted = lifted or lift_graph(gm, names, name, arg_order, sizes, apart)
    fallbacks = [(_op(s.node), s.reason) for s in lifted.fallbacks]
    if fallbacks and reports is None:
        log.warning("flashlight: %d op%s of %s run%s in eager PyTorch: %s", len(fallbacks),
                    "s" if len(fallbacks) > 1 else "", name, "" if len(fallbacks) > 1 else "s",
                    "; ".join(why for _, why in fallbacks))
    device = next((t.device for t in example_inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
    device = torch.device(device.type)
    hints = captured_sizes(example_inputs, positions)
    compiled: dict[int, CompiledProgram | TunedOnFirstCall | TunedPerBucket | handoff.InductorSegment | None] = {}
    for k, seg in enumerate(lifted.segments):
        if isinstance(seg, ProgramSegment):
            compiled[k] = _compile_program(seg, options, target, device, reports, fallbacks, hints)
    graph = CompiledGraph(lifted, compiled, fallbacks, saved_for_backward(gm))
    if reports is None and any(isinstance(c, handoff.InductorSegment) for c in compiled.values()):
        return _compile_handed(graph, example_inputs, options, target, device, hints)
    return graph


def _compile_handed(graph: CompiledGraph, example_inputs: Sequence[Any], options: Options, target: str,
                    device: torch.device, hints: Mapping[str, int]) -> CompiledGraph:
    """A graph with segments handed to Inductor: compiled by Inductor whole, our programs inside it
    (flashlight.inductor_graph: one wrapper's host time a call, not one per segment); where that
    cannot be, each handed segment alone, and one Inductor cannot compile is ours."""
    handed = [k for k, c in graph.compiled.items() if isinstance(c, handoff.InductorSegment)]
    ours = {k for k, c in graph.compiled.items() if c is not None and k not in handed}
    if inductor_graph.can_join(graph):
        try:
            joined = inductor_graph.join(graph, example_inputs, ours)
            counters["inductor_segments"] += len(handed)
            return joined
        except Exception as exc:  # noqa: BLE001  (then each segment is compiled alone)
            log.warning("flashlight: Inductor could not compile the whole graph (%s); it compiles each segment "
                        "handed to it alone", f"{type(exc).__name__}: {exc}".splitlines()[0])
    for k in handed:
        seg = graph.lifted.segments[k]
        try:
            graph.compiled[k].compile()  # type: ignore[union-attr]
            counters["inductor_segments"] += 1
        except Exception as exc:  # noqa: BLE001  (then flashlight compiles it, and says why)
            log.warning("flashlight: Inductor could not compile %s, flashlight does: %s", seg.program.name, exc)
            graph.compiled[k] = _compile_program(seg, replace(options, inductor=False), target, device,  # type: ignore[arg-type]
                                                 None, graph.fallbacks, hints)
    return graph


def _size_name(gm: fx.GraphModule, names: list[str], sym: str) -> str:
    """``q.shape[3]`` for Dynamo's symbol of that size: the first input whose shape has it."""
    phs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    labels = names if len(names) == len(phs) else [n.name for n in phs]
    for n, label in zip(phs, labels):
        val = n.meta.get("val")
        for d, size in enumerate(getattr(val, "shape", ())):
            if isinstance(size, torch.SymInt) and str(size.node.expr) == sym:
                return f"{label}.shape[{d}]"
    return f"the size argument {sym}"  # no input's shape has it


def _compile_varying(gm: fx.GraphModule, example_inputs: Sequence[Any], names: list[str], options: Options,
                     name: str, arg_order: Sequence[str], positions: dict[str, int]) -> CompiledGraph | CompiledPerSize:
    """One compilation for every size, if each program of the graph compiles with size parameters
    and lifting with them cuts out no more ops than lifting at the captured sizes does; else, if
    pinning the sizes that the ops cut out compute with lets the others vary, one compilation per
    value of those; else one compilation per size. Either of the last two is said once."""
    at_capture = captured_sizes(example_inputs, positions)
    fixed = {s.node for s in lift_graph(gm, names, name, arg_order, at_capture).fallbacks}
    varying = lift_graph(gm, names, name, arg_order)
    extra = [s for s in varying.fallbacks if s.node not in fixed]
    pinned: dict[str, int] = {}
    shaped = shape_symbols(gm.graph)
    while extra:
        # the sizes the first such op computes with (a head dimension under ``1 / sqrt(D)``, the
        # heads of a GQA group) are pinned, compiled per value; the others stay parameters (a cache
        # length, a batch), unless every size ends up pinned
        read = symbols_read(extra[0].node)
        read = (read - shaped) or read  # a size no input's shape has cannot be a parameter: that one
        more = {sym: at_capture[sym] for sym in read if sym in at_capture}
        if not more.keys() - pinned.keys() or len(pinned | more) == len(positions):
            pinned = {}
            break
        pinned |= more
        varying = lift_graph(gm, names, name, arg_order, pinned)
        extra = [s for s in varying.fallbacks if s.node not in fixed]
    if extra:
        reason = f"{len(extra)} more op{'s' if len(extra) > 1 else ''} would run eagerly ({extra[0].reason})"
    else:
        graph = compile_graph(gm, example_inputs, names, options, name, None, arg_order, lifted=varying,
                              sizes=pinned or None)
        failed = [why for (what, why) in graph.fallbacks if what.startswith("program ")]
        if not failed and not pinned:
            return graph
        if not failed:
            said = ", ".join(f"{_size_name(gm, names, sym)} (now {v})" for sym, v in sorted(pinned.items()))
            log.warning("flashlight: %s is compiled anew for each value of %s, sizes its ops compute with; one "
                        "program serves every value of the other sizes", name, said)
            by_size = CompiledPerSize({sym: positions[sym] for sym in pinned}, "ops compute with these sizes",
                                      lambda at: compile_graph(  # type: ignore[arg-type,return-value]
                                          gm, example_inputs, names, options, name, None, arg_order, sizes=at))
            by_size.graphs[tuple(sorted(pinned.items()))] = graph
            return by_size
        reason = failed[0]
    log.warning("flashlight: %s is compiled anew for each new size of its inputs: one program for every "
                "size cannot be made: %s", name, reason)
    return CompiledPerSize(positions, reason, lambda at: compile_graph(  # type: ignore[arg-type,return-value]
        gm, example_inputs, names, options, name, None, arg_order, sizes=at))


def _compile_program(seg: ProgramSegment, options: Options, target: str, device: torch.device,
                     reports: list[SegmentReport] | None, fallbacks: list[tuple[str, str]],
                     hints: Mapping[str, int] | None = None
                     ) -> CompiledProgram | TunedOnFirstCall | TunedPerBucket | handoff.InductorSegment | None:
    """One program segment compiled (through the cache, tuned where the options say so; by
    Inductor where flashlight.handoff's model says so), or None if it cannot be: then it runs
    eagerly, and ``fallbacks`` says why."""
    opts = options.for_target(target)
    report = SegmentReport(seg.program)
    strides = input_layout(seg.program, seg)
    may_hand_off = reports is None and handoff.cuts(options.inductor, target)
    if may_hand_off and seg.kept is False:
        # the program's schedule keeps no product of these nodes: Inductor's, without our passes
        handed = _hand_off(seg, None, target, opts)
        if handed is not None:
            return handed
        may_hand_off = False  # Inductor could not take it: flashlight's, said once

    counted = [reports is not None]  # explain compiles nothing to run: it counts nothing

    def build(o: Options, rep: SegmentReport | None = None) -> CompiledProgram:
        use_cache = rep is None  # a report (explain, debug dumps) needs every stage
        cached = cache.load_segment(seg, o, target) if use_cache else None
        if cached is None and not counted[0]:  # once per program, however many candidates it tunes
            counted[0] = True
            counters["programs_compiled"] += 1
        final, kernels = cached if cached is not None else compile_segment(seg, o, target, rep)
        if use_cache and cached is None:
            cache.store_segment(seg, o, target, final, kernels)
        launches = [launcher.Launch(ks, launcher.load(ks, interpret=(target == "interpreter")))
                    for ks in kernels] if reports is None else []
        return CompiledProgram(final, launches, strides, device)

    started = time.time()
    compiled: CompiledProgram | TunedOnFirstCall | TunedPerBucket | None = None
    try:
        keep = reports is not None or debug_dir(options)  # explain and debug dumps need every stage
        if reports is None and options.tunes(target):
            sizes = {p: hints[sym] for sym, p in seg.params.items() if sym in (hints or {})}
            for name, definition in seg.program.defs:  # a derived size at the captured ones
                if E.free_iters(definition) <= sizes.keys():
                    sizes[name] = E.evaluate(definition, sizes)
            if seg.program.params and sizes.keys() == set(seg.program.params):
                compiled = autotune.build_tuned_per_bucket(seg.program, device, opts, build, sizes)
            else:
                compiled = autotune.build_tuned(seg.program, device, opts, build, report if keep else None, sizes)
        else:
            compiled = build(opts, report if keep else None)
        progress("compiled", program=seg.program.name, kernels=len(compiled.launches),
                 seconds=round(time.time() - started, 2))
        if may_hand_off:  # by the final program: no matrix product kept
            handed = _hand_off(seg, compiled.program, target, opts)
            if handed is not None:
                return handed
    except Exception as exc:  # a segment we cannot compile runs eagerly, and says why
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("flashlight: program %s runs in eager PyTorch: %s", seg.program.name, reason)
        report.error = reason
        compiled = None
        fallbacks.append((program_label(seg), reason))
    if reports is not None:
        if report.program is not None:
            report.decision = _who_compiles(seg, report.program, target, options)
        reports.append(report)
    if debug_dir(options) and reports is None:
        dump_segment(debug_dir(options), seg.program.name, report, fallbacks)  # type: ignore[arg-type]
    return compiled


def _who_compiles(seg: ProgramSegment, final: Program | None, target: str, options: Options) -> handoff.Decision:
    """flashlight or Inductor for this segment (flashlight.handoff's model, under the option)."""
    if seg.params:  # Inductor's code is specialised to sizes: one program for every size stays ours
        return handoff.Decision(seg.program.name, "flashlight", "its sizes vary: one program serves every size")
    inside = set(seg.inputs) | set(seg.nodes)
    if any(a not in inside and not is_empty(a) for n in seg.nodes for a in n.all_input_nodes):
        return handoff.Decision(seg.program.name, "flashlight", "it reads a value its inputs do not carry")
    if seg.kept is False and options.inductor is not False:
        return handoff.Decision(seg.program.name, "Inductor", "the schedule of the program it was cut from keeps "
                                "no matrix product of it in registers (flashlight.handoff.kept_products)")
    return handoff.decide(seg.program, final, target, options.inductor)


def _region_of(options: Options, target: str) -> Callable[[Program], set[str]]:
    """What the lift keeps together in a program of ours (flashlight.handoff.kept_region): found by
    the program's passes, run once with the target's default options."""
    opts = options.for_target(target)

    def region(lifted: Program) -> set[str]:
        try:
            final = passes.run_pipeline(lifted, opts.pipeline, overrides=pass_overrides(opts))
        except Exception:  # noqa: BLE001  (not cut: compiling it says what fails)
            return {t.name for t in lifted.tensors}
        products = handoff.kept_products(lifted, final)
        return handoff.kept_region(lifted, products, handoff.kept_with(lifted, final, products))
    return region


def _hand_off(seg: ProgramSegment, final: Program | None, target: str,
              options: Options) -> handoff.InductorSegment | None:
    """The segment as Inductor's, where the model says flashlight gains nothing on it (``final``:
    the program after the passes, or None if the lifted one already shows it); else None."""
    decision = _who_compiles(seg, final, target, options)
    if decision.compiler != "Inductor" or not handoff.can_hand_off():
        return None
    progress("handed to Inductor", program=seg.program.name, reason=decision.reason)
    return handoff.InductorSegment(seg.program, seg.nodes, seg.inputs, seg.outputs)  # compiled with its graph


def _op(n: fx.Node) -> str:
    return str(getattr(n.target, "__name__", n.target))


# {{{ compile

def boxed_runner(graph: Callable[[list], Any]) -> Callable:
    """A runner AOT autograd calls with its list of arguments."""
    def run(args: list) -> Any:
        return graph(args)

    run._boxed_call = True  # type: ignore[attr-defined]
    return run


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
        self.backward_graphs: list[CompiledGraph | CompiledPerSize] = []
        self._compiled = torch.compile(fresh_copy(fn), backend=make_backend(
            self._compile_graph, self._compile_backward if options.compile_backward else None),
                                       dynamic=options.dynamic)
        functools.update_wrapper(self, fn)

    def _compile_graph(self, gm: fx.GraphModule, example_inputs: Sequence[Any], names: list[str]) -> Callable:
        graph = compile_graph(gm, example_inputs, names, self.options, self._name, arg_order=_params(self.fn))
        self.graphs.append(graph)
        return boxed_runner(graph)

    def _compile_backward(self, gm: fx.GraphModule, example_inputs: Sequence[Any], names: list[str]) -> Callable:
        graph = compile_graph(gm, example_inputs, names, self.options, f"{self._name}_backward")
        self.backward_graphs.append(graph)
        return boxed_runner(graph)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        target_of([a for a in args if isinstance(a, torch.Tensor)])
        if self.eager_reason is not None:
            count_eager_call(self._name, self.eager_reason)
            return self.fn(*args, **kwargs)
        config = torch._dynamo.config
        was = config.fail_on_recompile_limit_hit  # set and reset by hand: config.patch costs 20 us a call
        try:
            config.fail_on_recompile_limit_hit = True
            try:
                return self._compiled(*args, **kwargs)
            finally:
                config.fail_on_recompile_limit_hit = was
        except FailOnRecompileLimitHit:
            # Dynamo would otherwise run this and every later new shape eagerly, silently
            if not self._warned_recompile_limit:
                self._warned_recompile_limit = True
                log.warning("flashlight: %s was compiled for %d input signatures, Dynamo's recompile limit "
                            "(torch._dynamo.config.recompile_limit): calls with new shapes, dtypes or strides "
                            "run in eager PyTorch", self._name, torch._dynamo.config.recompile_limit)
            count_eager_call(self._name, "Dynamo's recompile limit: a new input signature after "
                             f"{torch._dynamo.config.recompile_limit}")
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
            count_eager_call(self._name, self.eager_reason)
            return result


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
    graphs, _ = capture_graphs(fn, args, kwargs, backward=opts.compile_backward)
    ex = _explain_graphs(name, [g for g in graphs if not g.backward], opts, _params(fn))
    if any(g.backward for g in graphs):
        ex.backward = _explain_graphs(f"{name}_backward", [g for g in graphs if g.backward], opts, ())
    return ex


def _explain_graphs(name: str, graphs: list, opts: Options, arg_order: Sequence[str]) -> Explanation:
    ex = Explanation(name, [], [], [], [], [], [])
    for g in graphs:
        reports: list[SegmentReport] = []
        cg = compile_graph(g.graph_module, g.example_inputs, g.input_names, opts, name, reports, arg_order)
        ex.fallbacks += cg.fallbacks
        why = g.graph_module.meta.get("flashlight_saved_reasons", {})
        ex.saved += [SavedInfo(n.name, tuple(n.meta["val"].shape), ir_dtype(n.meta["val"].dtype),
                               why.get(n.name, "read by the backward (AOT autograd's partition)"))
                     for n in cg.saved]
        for r in reports:
            ex.stages += r.stages
            if r.program is None:
                continue
            ex.programs.append(r.program)
            if r.decision is not None:
                ex.compilers.append(r.decision)
            ex.proofs += list(r.program.proofs)
            ex.kernels += [KernelInfo(k.name, k.source, k.grid if not k.grid_factors else k.grid_text,
                                      describe_kernel(r.program, nest))
                           for k, nest in zip(r.kernels, r.program.body)]
            ex.buffers += [BufferInfo(t.name, t.shape, t.dtype) for t in r.program.temps if t.storage == "global"]
    return ex

# }}}

