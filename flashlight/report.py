"""What flashlight did with a function, for people: ``explain``'s report, proofs.

``print(flashlight.explain(fn, *args))`` is a summary that fits a screen: each kernel with its
grid, loops and what it computes, the buffers in global memory, what the forward saves for the
backward, the fallbacks to eager PyTorch with their reasons, and every legality decision on one
line. ``ex.full()`` adds the IR after every pass, the evidence of each decision (lemma, isl witness
and relation) and the generated kernels. The same records, written as files, are the debug dumps
(:mod:`flashlight.debug_dump`).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field

from flashlight.codegen.triton import KernelSource
from flashlight.handoff import Decision
from flashlight.ir import dtypes
from flashlight.ir import expr as E
from flashlight.ir.nodes import Guard, LibraryCall, Loop, Node, Program, Proof, grid_chain, walk_stmts

# {{{ proofs


def format_proof(p: Proof, evidence: bool = True) -> str:
    """``[legal  ] what: why``, and with ``evidence`` the lemma, isl witness and relation, indented."""
    lines = [f"[{'legal  ' if p.legal else 'refused'}] {p.transformation}: {p.reason}"]
    if evidence:
        for label, value in (("lemma", p.lemma), ("witness", p.witness), ("relation", p.relation)):
            if value and value != "∅":
                lines.append(textwrap.indent(f"{label}: {value}", " " * 10))
    return "\n".join(lines)


def format_proofs(proofs: list[Proof] | tuple[Proof, ...], evidence: bool = True) -> str:
    return "\n".join(format_proof(p, evidence) for p in proofs) if proofs else "(none)"

# }}}


# {{{ kernels


def describe_kernel(program: Program, nest: Node) -> str:
    """What one kernel (a top-level nest of the final program) does, in a line: its programs, the
    loops inside a program, what it reduces and what it writes to global memory."""
    grid = grid_chain(nest)
    dims = [f"{l.iterator}:{_extent(l)}" + (f"/{l.tile}" if (l.tile or 1) > 1 else "") for l in grid]
    inner = [l for l in _loops(grid[-1].body if grid else (nest,))]
    serial = sorted({f"{l.iterator}:{_extent(l)}/{l.tile}" for l in inner if l.mapping == "serial"})
    reduced: dict[str, str] = {}
    written: list[str] = []
    for s, _, _ in walk_stmts((nest,)):
        t = program.tensor(s.target.tensor)
        if s.is_reduction:
            reduced.setdefault(t.name, s.op[:-1] + (" online" if s.scale is not None else ""))
        if t.storage == "global" and t.name not in written:
            written.append(t.name)
    library = [s for s, _, _ in walk_stmts((nest,)) if isinstance(s.tag, LibraryCall)]
    if library:  # call-library: no generated kernel, one call
        return (f"library {library[0].tag.op} (torch.matmul: cuBLAS on the GPU) of {library[0].target.tensor} over "
                f"({', '.join(dims)}); writes {', '.join(written) or 'nothing'}")
    parts = [f"grid ({', '.join(dims) or '1'})"]
    if serial:
        parts.append(f"loops over tiles of {', '.join(serial)}")
    if reduced:
        parts.append("reduces " + ", ".join(f"{t} ({op})" for t, op in reduced.items()))
    parts.append("writes " + (", ".join(written) or "nothing"))
    return "; ".join(parts)


def _extent(l: Loop) -> str:
    return str(l.upper) if isinstance(l.lower, E.Const) and l.lower.value == 0 else f"{l.lower}:{l.upper}"


def _loops(body: tuple[Node, ...]) -> list[Loop]:
    out: list[Loop] = []
    for n in body:
        if isinstance(n, Loop):
            out.append(n)
        if isinstance(n, (Loop, Guard)):
            out += _loops(n.body)
    return out

# }}}


@dataclass
class SegmentReport:
    """What happened to one program segment of a graph: the IR after every stage, the final
    program and its kernels, or the error that sent it to eager PyTorch."""

    program: Program | None
    stages: list[tuple[str, str]] = field(default_factory=list)
    kernels: list[KernelSource] = field(default_factory=list)
    error: str | None = None
    decision: Decision | None = None  # who compiles it, flashlight or Inductor, and why


@dataclass
class KernelInfo:
    name: str
    source: str
    grid: int | str  # a number, or a formula of the size parameters (ceil(S/64))
    computes: str = ""  # a line: grid, loops, reductions, what it writes


@dataclass
class BufferInfo:
    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @property
    def nbytes(self) -> int | None:
        """Bytes, or None where a dimension is a size parameter (the size varies between calls)."""
        if any(isinstance(d, str) for d in self.shape):
            return None
        return math.prod(self.shape) * dtypes.BYTES[self.dtype]  # type: ignore[arg-type]


@dataclass
class SavedInfo:
    """A tensor the forward keeps for the backward."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    why: str


@dataclass
class Explanation:
    """What flashlight does with a function: every stage, decision, kernel, buffer and fallback.

    ``str(ex)`` is the summary; :meth:`full` has the IR after every pass, the evidence of every
    decision and the kernels' source."""

    name: str
    stages: list[tuple[str, str]]
    proofs: list[Proof]
    kernels: list[KernelInfo]
    buffers: list[BufferInfo]
    fallbacks: list[tuple[str, str]]
    programs: list[Program]
    saved: list[SavedInfo] = field(default_factory=list)
    backward: Explanation | None = None  # for inputs that require grad: the backward's report
    compilers: list[Decision] = field(default_factory=list)  # per program: flashlight or Inductor, and why

    def summary(self) -> str:
        out = [f"== flashlight explain: {self.name} ==",
               f"{len(self.kernels)} kernel{'s' * (len(self.kernels) != 1)}, {len(self.buffers)} buffer"
               f"{'s' * (len(self.buffers) != 1)} in global memory, {len(self.fallbacks)} fallback"
               f"{'s' * (len(self.fallbacks) != 1)} to eager PyTorch", "", "-- kernels --"]
        out += [f"{k.name}: {k.grid} program{'s' * (k.grid != 1)}; {k.computes}" for k in self.kernels] or ["(none)"]
        out += ["", "-- buffers in global memory --"]
        out += [f"{b.name}: {b.dtype}[{', '.join(map(str, b.shape))}] "
                f"({'size varies' if b.nbytes is None else _bytes(b.nbytes)})" for b in self.buffers] or ["(none)"]
        if self.saved:
            out += ["", "-- saved for the backward --"]
            out += [f"{s.name}: {s.dtype}{list(s.shape)}: {s.why}" for s in self.saved]
        out += ["", "-- fallbacks to eager PyTorch --"]
        out += [f"{op}: {why}" for op, why in self.fallbacks] or ["(none)"]
        out += ["", "-- legality decisions --", format_proofs(self.proofs, evidence=False)]
        out += ["", "-- who compiles each program --"]
        out += [f"{d.program}: {d.compiler}: {d.reason}" for d in self.compilers] or ["(none)"]
        if any(d.compiler == "Inductor" for d in self.compilers):
            out += ["(when it runs, Inductor compiles the graph whole: each program of flashlight's is one call of "
                    "the operator flashlight::program inside it; flashlight.inductor_graph)"]
        if self.backward is not None:
            b = self.backward
            out += ["", "-- backward (ex.backward) --", f"{len(b.kernels)} kernels, {len(b.buffers)} buffers in "
                    f"global memory ({', '.join(x.name + str(list(x.shape)) for x in b.buffers) or 'none'}), "
                    f"{len(b.fallbacks)} fallbacks to eager PyTorch"]
        out += ["", "(ex.full(): the IR after every pass, the evidence of each decision, the kernels' source)"]
        return "\n".join(out)

    def full(self) -> str:
        out = [self.summary()]
        for name, text in self.stages:
            out += ["", f"-- {name} --", text]
        out += ["", "-- legality decisions, with their evidence --", format_proofs(self.proofs)]
        out += ["", "-- kernels --"]
        for k in self.kernels:
            out += [f"# {k.name}: {k.grid} programs", k.source]
        if self.backward is not None:
            out += ["", "== the backward ==", self.backward.full()]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary()


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
