"""A differential fuzzer: random small PyTorch programs, eager against ``flashlight.compile``.

``python -m fuzz --seeds 0:200 [--time-budget 60] [--out fuzz/corpus]`` (from the repository root: the fuzzer
is a tool of the checkout, not part of the installed ``flashlight`` package)

A seed makes one program (``random.Random(seed)``, deterministic): a few (2–8) ops drawn from
pointwise chains with broadcasting (scalar, row, column, general), unary and binary ops,
comparisons and ``where``, reductions over random axes with and without ``keepdim``,
``softmax``/``log_softmax`` on any axis, matmuls (2-D and batched, with transposes), layout changes
(transpose, permute, flatten, unflatten, unsqueeze, slices, ``cat``), ``arange``-built affine and
modular masks applied with ``masked_fill`` before a softmax, fills and casts, over odd sizes (1, 2,
3, 5, 7, 13, 17, 31, sometimes 64 or 97), float32 mostly, some float16/bfloat16 and int/bool
inputs. Attention-shaped programs (``softmax(q @ k^T * c + mask) @ v``, with their variants) are
drawn often, since that is where the fusing passes do the most.

Since generator version 4, also (shares of all programs, roughly):

* ``F.scaled_dot_product_attention`` (~15%, :meth:`Gen.sdpa`): rank 2, 3 or 4; ``attn_mask`` None,
  boolean or float (an input, an ``arange`` band, a bias or zeros with ``-inf`` where a boolean
  says no) in shapes that broadcast over some batch dimensions ([S_q, S_k], [1, S_k], [S_q, 1],
  [B, 1, 1, S_k], [H, S_q, S_k], [B, H, S_q, S_k], ...); ``is_causal`` (only without a mask);
  ``scale``; ``enable_gqa=True`` with H_q a multiple of H_kv; S_q != S_k, D_v != D; masks that
  leave rows without any key (eager gives 0 there); self-attention on one input, projections of
  one input split into heads. ``dropout_p`` stays 0.
* a dimension of size 0 (~4%): after drawing, one dimension that eager accepts at 0 (S, D, B, ...)
  becomes 0; eager returns empty results (or, for K = 0, a matmul's zeros) and so must we.
* float64 (~5%): inputs and ops in float64 (a cast may bring float32 in); float64 outputs get a
  tolerance of 1e-7.
* gradients (~20%): every floating-point input ``requires_grad``; :func:`with_grads` runs the
  program and one backward of a fixed, generic cotangent (:func:`cotangent`:
  ``sin(0.7 k + 0.3)``, not ``sum(out**2)``, whose gradient through a normalization is
  identically 0) through every floating-point output that requires grad, eagerly and compiled,
  and each input's ``.grad`` is compared like an output (``gradient of input k``); a gradient
  that one side has and the other has not (``None``) is a mismatch.

A program is Python source (:func:`render`): dimension constants, ``make_inputs()`` (inputs from a
seeded ``torch.Generator``), ``def prog(x0, x1, ...)`` and the compile options. It is run eagerly
and compiled; :func:`compare` checks outputs: same structure, shapes and dtypes; integers and
booleans exactly; floats with ``torch.testing.assert_close`` (NaN positions equal) at rtol and
atol (relative to the output's scale) of 1e-4 for float32 and 2e-2 for 16-bit floats. Values
outside that tolerance are excused only where our error against a float64 evaluation of the same
program (and its gradients) is within 4x eager's own rounding noise (an ill-conditioned output: then neither result is
better than the other). That noise is the larger of eager's largest error against float64 and,
elementwise, the spread of eager re-run 16 times with each op's rounding perturbed by up to an ulp
(:func:`eager_noise`, Monte-Carlo arithmetic; only run for what would otherwise be a mismatch):
eager's error alone can be lucky. Equal rows minus their mean come out exactly 0 in eager, which
rounds them all alike, and 6e-3 in ours, whose matmul rounds one row an ulp differently before an
exp of values up to 12000 (seed 53511); a layer_norm's outputs summed over the normalized axis come
out 2e-7 in eager, whose per-row sums are 1e-5 off but cancel, and 7e-6 in ours (seed 420676).
Likewise an integer cast from a float that lies within eager's rounding error of an integer may
truncate either way (:func:`reference64`).

Outcomes: ``ok``, ``mismatch``, ``crash`` (flashlight raised), ``timeout`` (slower than the limit
per program), ``eager_error`` (the program is invalid: skipped). A segment that flashlight ran in
eager PyTorch (a fallback) is a statistic, not a failure; the summary lists the reasons.

A mismatch or crash is minimized (:func:`minimize`: delete ops, replace values by fresh inputs,
drop outputs, options and ``requires_grad``, shrink dimensions, while the failure persists) and written to
``<out>/<kind>_<seed>.py``: a runnable script whose ``check()`` raises ``AssertionError`` while
flashlight differs from eager.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import re
import signal
import sys
import time
import traceback
import types
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

# Bumped whenever the programs a seed makes change: a seed names a program only together with it.
GENERATOR_VERSION = 4
MAX_NUMEL = 4096
SIZES = [1, 2, 3, 5, 7, 13, 17, 31]
SIZE_WEIGHTS = [1, 2, 3, 3, 3, 3, 2, 2]
BIG_SIZES = [64, 97]
DIM_NAMES = ["A", "B", "C", "D", "E", "F", "G", "H"]  # ordinary programs name at most 5 dimensions
SDPA = "torch.nn.functional.scaled_dot_product_attention"
FLOAT_CONSTS = ["0.5", "2.0", "-1.5", "0.125", "3.0", "-0.25", "10.0", "1e-3"]

TOLERANCES = {  # dtype: (rtol, atol relative to the output's scale)
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-7, 1e-7),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (3e-2, 3e-2),
}


# {{{ programs

@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple[str, ...]  # dimension expressions: "1", "A", "A*B"
    dtype: str              # torch dtype name: float32, float16, bfloat16, int32, int64, bool
    kind: str               # randn | pos | randint | bool | index:N | negindex:N | doc:K (N, K: dim expressions)
    grad: bool = False      # requires_grad: the check compares its gradient too (floating-point inputs only)


@dataclass(frozen=True)
class Op:
    var: str
    lines: tuple[str, ...]  # assign `var` (helper names are `var_...`)


@dataclass(frozen=True)
class Program:
    seed: int
    dims: dict[str, int]
    inputs: tuple[Input, ...]
    ops: tuple[Op, ...]
    outputs: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    tuple_out: bool = False  # return a tuple even for one output


def _shape_src(shape: tuple[str, ...]) -> str:
    if not shape:
        return "()"
    return "(" + ", ".join(shape) + ("," if len(shape) == 1 else "") + ")"


def input_line(x: Input) -> str:
    shape = _shape_src(x.shape)
    if x.kind == "randint":
        return f"{x.name} = torch.randint(-9, 10, {shape}, generator=g, dtype=torch.{x.dtype})"
    if x.kind.startswith("index:"):  # indices into a dimension of size N
        n = x.kind.split(":")[1]
        return f"{x.name} = torch.randint(0, {n}, {shape}, generator=g, dtype=torch.{x.dtype})"
    if x.kind.startswith("negindex:"):  # negative indices too
        n = x.kind.split(":")[1]
        return f"{x.name} = torch.randint(-{n}, {n}, {shape}, generator=g, dtype=torch.{x.dtype})"
    if x.kind.startswith("doc:"):  # sorted document ids
        k = x.kind.split(":")[1]
        return f"{x.name} = torch.sort(torch.randint(0, {k}, {shape}, generator=g)).values.to(torch.{x.dtype})"
    if x.kind == "bool":
        return f"{x.name} = torch.rand({shape}, generator=g) < 0.5"
    base = f"torch.randn({shape}, generator=g)" if x.kind == "randn" else f"(torch.rand({shape}, generator=g) + 0.5)"
    return (f"{x.name} = {base}" + ("" if x.dtype == "float32" else f".to(torch.{x.dtype})")
            + (".requires_grad_()" if x.grad else ""))


def render_core(p: Program) -> str:
    """Dimension constants, ``make_inputs``, ``prog`` and ``OPTIONS``: the program as source."""
    out = []
    if p.dims:
        out.append(", ".join(p.dims) + " = " + ", ".join(str(v) for v in p.dims.values()))
        out.append("")
    out += ["", "def make_inputs():", f"    g = torch.Generator().manual_seed({p.seed})"]
    out += [f"    {input_line(x)}" for x in p.inputs]
    names = ", ".join(x.name for x in p.inputs)
    out.append(f"    return ({names}{',' if len(p.inputs) == 1 else ''})")
    out += ["", "", f"def prog({names}):"]
    for op in p.ops:
        out += [f"    {line}" for line in op.lines]
    if len(p.outputs) == 1 and not p.tuple_out:
        out.append(f"    return {p.outputs[0]}")
    else:
        out.append(f"    return {', '.join(p.outputs)}" + ("," if len(p.outputs) == 1 else ""))
    out += ["", "", f"OPTIONS = {p.options!r}"]
    return "\n".join(out) + "\n"


def materialize(p: Program) -> dict[str, Any]:
    # a registered module: some versions of Dynamo import the module a traced function's globals name
    module = types.ModuleType(f"flashlight_fuzz_seed_{p.seed}")  # one per seed: guards look names up in it
    module.torch = torch  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    exec(compile(render_core(p), f"<fuzz seed {p.seed}>", "exec"), module.__dict__)
    return module.__dict__


def eval_vars(p: Program) -> dict[str, torch.Tensor] | None:
    """Every input and op variable's eager value, or ``None`` if eager fails."""
    ns: dict[str, Any] = {"torch": torch, **p.dims, "g": torch.Generator().manual_seed(p.seed)}
    try:
        with _quiet():
            for x in p.inputs:
                exec(input_line(x), ns)
            for op in p.ops:
                for line in op.lines:
                    exec(line, ns)
    except Exception:
        return None
    names = [x.name for x in p.inputs] + [op.var for op in p.ops]
    return {n: ns[n] for n in names}

# }}}


# {{{ the generator

class Reject(Exception):
    """This draw of an op does not fit: try another."""


class Gen:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.dims: dict[str, int] = {}
        self.inputs: list[Input] = []
        self.ops: list[Op] = []
        self.g = torch.Generator().manual_seed(seed)
        self.ns: dict[str, Any] = {"torch": torch, "g": self.g}
        self.pool: list[str] = []  # inputs and op results, in creation order
        self.ntemp = 0
        self.prefer: list[str] = []  # op families to draw next (a mask asks for a softmax)
        r = self.rng.random()
        self.flavor = ("f32" if r < 0.70 else "f64" if r < 0.75 else "f16" if r < 0.82 else "bf16" if r < 0.89
                       else "int")
        self.float_dtype = {"f16": "float16", "bf16": "bfloat16", "f64": "float64"}.get(self.flavor, "float32")
        self.max_dims = 5  # an SDPA program names up to len(DIM_NAMES)
        self.keep: str | None = None  # an output, unless a later op reads it (the SDPA call)

    # {{{ dimensions, inputs, operands

    def new_dim(self, size: int | None = None, big: bool = False) -> str:
        if size is None:
            size = self.rng.choice(BIG_SIZES) if big else self.rng.choices(SIZES, SIZE_WEIGHTS)[0]
        for name, v in self.dims.items():
            if v == size and self.rng.random() < 0.7:
                return name
        if len(self.dims) >= self.max_dims:
            return min(self.dims, key=lambda n: abs(self.dims[n] - size))
        name = DIM_NAMES[len(self.dims)]
        self.dims[name] = size
        self.ns[name] = size
        return name

    def any_dim(self) -> str:
        if self.dims and self.rng.random() < 0.5:
            return self.rng.choice(list(self.dims))
        return self.new_dim(big=self.rng.random() < 0.06)  # sometimes more than one tile

    def sym(self, size: int) -> str:
        """A dimension expression of this size (new dimensions are named sizes)."""
        if size == 1:
            return "1"
        for name, v in self.dims.items():
            if v == size:
                return name
        names = list(self.dims)
        for a in names:
            for b in names:
                if self.dims[a] * self.dims[b] == size:
                    return f"{a}*{b}"
        raise Reject(f"size {size} is no dimension expression")

    def sym_shape(self, shape: torch.Size) -> tuple[str, ...]:
        return tuple(self.sym(int(s)) for s in shape)

    def new_input(self, shape: tuple[str, ...], dtype: str | None = None, kind: str | None = None) -> str:
        dtype = dtype or self.float_dtype
        if kind is None:
            kind = ("bool" if dtype == "bool" else "randint" if dtype.startswith("int")
                    else "pos" if self.rng.random() < 0.1 else "randn")
        x = Input(f"x{len(self.inputs)}", shape, dtype, kind)
        numel = math.prod(eval(s, {}, dict(self.dims)) for s in shape)
        if ":" in kind and eval(kind.split(":")[1], {}, dict(self.dims)) < 1:
            raise Reject("no index fits")
        if numel > MAX_NUMEL:
            raise Reject("input too large")
        exec(input_line(x), self.ns)
        self.inputs.append(x)
        self.pool.append(x.name)
        return x.name

    def random_shape(self, ndim: int) -> tuple[str, ...]:
        return tuple("1" if self.rng.random() < 0.08 else self.any_dim() for _ in range(ndim))

    def val(self, name: str) -> torch.Tensor:
        return self.ns[name]

    def pick(self, pred: Callable[[torch.Tensor], bool], recent: float = 0.7) -> str:
        cands = [n for n in self.pool if pred(self.val(n))]
        if not cands:
            raise Reject("no operand")
        if self.rng.random() < recent:
            return cands[-1]
        return self.rng.choice(cands)

    def const(self) -> str:
        return self.rng.choice(FLOAT_CONSTS)

    def partner(self, a: str, allow_const: bool = True) -> str:
        """Something to combine with ``a`` elementwise: a constant, an input broadcast as a
        scalar, row, column or with some axes of size one, or an earlier value."""
        t = self.val(a)
        dtype = str(t.dtype).removeprefix("torch.")
        shape = t.shape
        modes = ["full", "row", "col", "bcast", "scalar_in", "var", "grow"] + (["const"] * 2 if allow_const else [])
        mode = self.rng.choice(modes)
        if mode == "const":
            if dtype.startswith("int"):
                return str(self.rng.randint(-3, 5))
            return self.const()
        if mode == "scalar_in":
            return self.new_input((), dtype)
        if mode == "var":
            def fits(u: torch.Tensor) -> bool:
                try:
                    return (u.dtype == t.dtype and u.dim() > 0
                            and math.prod(torch.broadcast_shapes(u.shape, shape)) <= MAX_NUMEL)
                except RuntimeError:
                    return False
            cands = [n for n in self.pool if n != a and fits(self.val(n))]
            if cands:
                return self.rng.choice(cands)
            mode = "full"
        if t.dim() == 0:
            mode = "grow" if mode in ("grow", "row") else "scalar_in"
            if mode == "scalar_in":
                return self.new_input((), dtype)
        if mode == "full":
            return self.new_input(self.sym_shape(shape), dtype)
        if mode == "row":
            return self.new_input((self.sym(shape[-1]),), dtype)
        if mode == "col":
            if t.dim() < 2:
                return self.new_input((self.sym(shape[-1]), "1"), dtype)
            return self.new_input((self.sym(shape[-2]), "1"), dtype)
        if mode == "bcast":
            s = list(self.sym_shape(shape))
            for k in range(len(s)):
                if self.rng.random() < 0.5:
                    s[k] = "1"
            if self.rng.random() < 0.3 and len(s) > 1:
                s = s[1:]
            return self.new_input(tuple(s), dtype)
        # grow: the partner has a leading dimension that `a` lacks
        return self.new_input((self.any_dim(),) + self.sym_shape(shape), dtype)

    def axis(self, t: torch.Tensor) -> int:
        d = self.rng.randrange(t.dim())
        return d - t.dim() if self.rng.random() < 0.4 else d

    # }}}

    # {{{ op families

    def fam_unary(self) -> str:
        a = self.pick(lambda t: t.is_floating_point())
        t = self.val(a)
        fin = t[torch.isfinite(t)]
        small = fin.numel() == 0 or float(fin.abs().max()) < 10
        forms = ["torch.tanh({a})", "torch.sigmoid({a})", "torch.relu({a})", "{a}.abs()", "-{a}",
                 "{a}.clamp({lo}, {hi})", "{a}.clamp(min={lo})", "{a}.clamp(max={hi})", "{a} * {c}", "{a} + {c}",
                 "{a} / {c}", "torch.log({a}.abs() + 1)", "torch.sqrt({a}.abs() + 0.25)",
                 "torch.nn.functional.gelu({a})", "torch.nn.functional.silu({a})", "{a} * {a}"]
        if small:
            forms += ["torch.exp({a})"] * 3 + ["torch.exp(-{a})", "{a}.exp() - 1"]
        lo = self.rng.choice(["-1.0", "-0.5", "0.0", "-2.0"])
        hi = self.rng.choice(["1.0", "0.5", "2.0", "0.25"])
        c = self.rng.choice([x for x in FLOAT_CONSTS if x != "0.0"])
        return self.rng.choice(forms).format(a=a, lo=lo, hi=hi, c=c)

    def fam_binary(self) -> str:
        a = self.pick(lambda t: t.is_floating_point())
        b = self.partner(a)
        is_const = not b.startswith(("x", "t"))
        forms = ["{a} + {b}", "{a} - {b}", "{a} * {b}", "{b} - {a}", "{a} / {c}" if is_const else "{a} / ({b}.abs() + 0.5)"]
        if is_const:
            forms += ["{a}.clamp(min={b})", "{a}.clamp(max={b})"]
        else:
            forms += ["torch.maximum({a}, {b})", "torch.minimum({a}, {b})", "{b} / ({a}.abs() + 1)",
                      "torch.add({a}, {b}, alpha=2)"]
        c = self.rng.choice(["2.0", "3.0", "-0.5", "7.0"])
        return self.rng.choice(forms).format(a=a, b=b, c=c)

    def fam_where(self) -> str:
        a = self.pick(lambda t: t.is_floating_point())
        t = self.val(a)
        r = self.rng.random()
        if r < 0.35:
            b = self.partner(a, allow_const=False)
            return self.rng.choice(["torch.where({a} > {b}, {a}, {b})", "torch.where({a} < {b}, {b} * 2, {a})",
                                    "torch.where({a} >= {b}, {a} - {b}, 0.0)"]).format(a=a, b=b)
        if r < 0.7:
            c, v = self.const(), self.const()
            return self.rng.choice(["torch.where({a} > {c}, {a}, {v})", "torch.where({a} <= {c}, {v}, {a})",
                                    "torch.where({a}.abs() < {c}, 0.0, {a})",
                                    "torch.where({a} != {a}, 0.0, {a})"]).format(a=a, c=c, v=v)
        # a boolean mask from an input or an earlier value
        bools = [n for n in self.pool if self.val(n).dtype == torch.bool and self._bcast(n, t)]
        m = self.rng.choice(bools) if bools and self.rng.random() < 0.5 else None
        if m is None:
            s = list(self.sym_shape(t.shape)) if t.dim() else []
            for k in range(len(s)):
                if self.rng.random() < 0.4:
                    s[k] = "1"
            m = self.new_input(tuple(s), "bool")
        b = self.partner(a)
        return self.rng.choice(["torch.where({m}, {a}, {b})", "{a}.masked_fill({m}, {c})",
                                "torch.where(~{m}, {b}, {a})"]).format(a=a, b=b, m=m, c=self.const())

    def _bcast(self, n: str, t: torch.Tensor) -> bool:
        try:
            return torch.broadcast_shapes(self.val(n).shape, t.shape) == t.shape
        except RuntimeError:
            return False

    def fam_compare(self) -> str:
        a = self.pick(lambda t: t.is_floating_point())
        b = self.partner(a)
        cmp = self.rng.choice([">", "<", ">=", "<=", "==", "!="])
        return self.rng.choice(["({a} {cmp} {b}).float()", "({a} {cmp} {b}).to({a}.dtype) * {a}",
                                "({a} {cmp} {b})"]).format(a=a, b=b, cmp=cmp)

    def _dims_arg(self, t: torch.Tensor) -> str:
        n = self.rng.choice([1, 1, 1, 2, 2, 3]) if t.dim() > 1 else 1
        n = min(n, t.dim())
        axes = self.rng.sample(range(t.dim()), n)
        axes = [d - t.dim() if self.rng.random() < 0.3 else d for d in axes]
        if n == 1 and self.rng.random() < 0.7:
            return str(axes[0])
        return "(" + ", ".join(map(str, axes)) + ("," if n == 1 else "") + ")"

    def fam_reduce(self) -> str:
        a = self.pick(lambda t: t.dim() > 0)
        t = self.val(a)
        keep = self.rng.choice(["True", "False"])
        if t.dtype == torch.bool:
            d = self.axis(t)
            return self.rng.choice([f"{a}.sum({d})", f"{a}.any({d})", f"{a}.all(dim={d})",
                                    f"{a}.sum(dim={d}, keepdim={keep})"])
        if not t.is_floating_point():
            d = self._dims_arg(t)
            return self.rng.choice([f"{a}.sum({d})", f"{a}.amax({d}, keepdim={keep})", f"{a}.amin({d})",
                                    f"torch.sum({a}, dim={d}, keepdim={keep})"])
        if self.rng.random() < 0.1:
            return self.rng.choice([f"{a}.sum()", f"{a}.mean()", f"{a}.amax()", f"torch.logsumexp({a}.flatten(), 0)"])
        d = self._dims_arg(t)
        forms = [f"{a}.sum({d}, keepdim={keep})", f"{a}.sum(dim={d})", f"{a}.mean({d}, keepdim={keep})",
                 f"torch.mean({a}, dim={d})", f"{a}.amax({d}, keepdim={keep})", f"{a}.amax(dim={d})",
                 f"{a}.amin({d}, keepdim={keep})", f"torch.logsumexp({a}, {d}, keepdim={keep})",
                 f"torch.logsumexp({a}, dim={d})", f"{a}.var({d}, keepdim={keep})",
                 f"{a}.var(dim={d}, correction=0)", f"torch.var({a}, {d}, unbiased=False, keepdim={keep})"]
        if self.rng.random() < 0.05:  # ops that fall back to eager, for the mix
            dd = self.axis(t)
            forms += [f"{a}.max(dim={dd}).values", f"torch.cumsum({a}, {dd})"]
        return self.rng.choice(forms)

    def fam_softmax(self) -> str:
        a = self.pick(lambda t: t.is_floating_point() and t.dim() > 0, recent=0.8)
        t = self.val(a)
        d = -1 if self.rng.random() < 0.5 else self.axis(t)
        forms = [f"torch.softmax({a}, dim={d})", f"{a}.softmax({d})", f"torch.log_softmax({a}, dim={d})",
                 f"torch.nn.functional.softmax({a}, {d})", f"torch.nn.functional.log_softmax({a}, dim={d})"]
        if t.dtype != torch.float32:
            forms += [f"torch.softmax({a}, {d}, dtype=torch.float32)"]
        return self.rng.choice(forms)

    def fam_matmul(self) -> str:
        a = self.pick(lambda t: t.is_floating_point() and 2 <= t.dim() <= 4)
        t = self.val(a)
        dtype = str(t.dtype).removeprefix("torch.")
        k = self.sym(t.shape[-1])
        batch = self.sym_shape(t.shape[:-2])
        r = self.rng.random()
        if r < 0.15 and t.dim() >= 2:
            return self.rng.choice([f"{a} @ {a}.transpose(-2, -1)", f"{a}.mT @ {a}", f"torch.matmul({a}, {a}.mT)"])
        n = self.any_dim() if self.rng.random() < 0.8 else "1"
        if self.rng.random() < 0.3 and batch:
            bshape = tuple("1" if self.rng.random() < 0.3 else s for s in batch)
            if self.rng.random() < 0.3:
                bshape = bshape[1:]
        else:
            bshape = batch if self.rng.random() < 0.5 else ()
        if r < 0.55:
            b = self.new_input(bshape + (k, n), dtype)
            form = self.rng.choice([f"{a} @ {b}", f"torch.matmul({a}, {b})"])
            if t.dim() == 3 and len(bshape) == 1 and bshape[0] == batch[0] and self.rng.random() < 0.5:
                form = f"torch.bmm({a}, {b})"
            return form
        if r < 0.8:
            b = self.new_input(bshape + (n, k), dtype)
            return self.rng.choice([f"{a} @ {b}.transpose(-2, -1)", f"{a} @ {b}.mT", f"torch.matmul({a}, {b}.transpose(-1, -2))"])
        m = self.sym(t.shape[-2])
        b = self.new_input(bshape + (m, n), dtype)
        return self.rng.choice([f"{a}.transpose(-2, -1) @ {b}", f"{a}.mT @ {b}"])

    def fam_layout(self) -> str:
        a = self.pick(lambda t: t.dim() > 0)
        t = self.val(a)
        nd = t.dim()
        forms = [f"{a}.unsqueeze({self.rng.randint(-nd - 1, nd)})", f"{a}.reshape(-1)"]
        if nd >= 2:
            i, j = self.rng.sample(range(nd), 2)
            perm = list(range(nd))
            self.rng.shuffle(perm)
            f = self.rng.randrange(nd - 1)
            forms += [f"{a}.transpose({i}, {j})", f"{a}.permute({', '.join(map(str, perm))})", f"{a}.mT",
                      f"{a}.flatten({f}, {f + 1})", f"{a}.reshape(-1, {a}.shape[-1])",
                      f"{a}.transpose({i}, {j}).contiguous()"]
            if nd == 2:
                forms.append(f"{a}.t()")
        ones = [k for k in range(nd) if t.shape[k] == 1]
        if ones:
            forms.append(f"{a}.squeeze({self.rng.choice(ones)})")
        for k in range(nd):
            s = self.sym(int(t.shape[k])) if t.shape[k] > 1 else "1"
            if "*" in s:
                x, y = s.split("*")
                forms.append(f"{a}.unflatten({k}, ({x}, {y}))")
        if t.shape[-1] > 1:
            forms += [f"{a}[..., 1:]", f"{a}[..., :-1] * 2", f"{a}.flip(-1)"]
        if nd >= 2 and t.shape[0] > 2:
            forms.append(f"{a}[::2]")
        if self.rng.random() < 0.3:
            d = self.axis(t)
            b = self.partner(a, allow_const=False) if self.rng.random() < 0.5 else a
            if self.val(b).shape == t.shape:
                forms.append(f"torch.cat([{a}, {b}], dim={d})")
        return self.rng.choice(forms)

    def fam_mask(self) -> tuple[str, ...]:
        a = self.pick(lambda t: t.is_floating_point() and t.dim() >= 2, recent=0.8)
        v = "{v}"
        ii, jj = f"{v}_i", f"{v}_j"
        lines = [f"{ii} = torch.arange({a}.shape[-2])[:, None]", f"{jj} = torch.arange({a}.shape[-1])[None, :]"]
        w = self.rng.choice([1, 2, 3, 4, 8])
        k = self.rng.choice([2, 3, 4])
        kinds = {  # the positions masked out
            "causal": f"{jj} > {ii}",
            "causal_strict": f"{jj} >= {ii}",
            "window": f"({ii} - {jj} >= {w}) | ({jj} > {ii})",
            "band": f"({ii} - {jj}).abs() >= {w}",
            "modular": f"({ii} + {jj}) % {k} != 0",
            "modular_causal": f"(({ii} + {jj}) % {k} != 0) & ({jj} > {ii})",
            "prefix": f"({jj} > {ii}) & ({jj} >= {w})",
            "bottom_right": f"{jj} > {ii} + ({a}.shape[-1] - {a}.shape[-2])",
            "dilated": f"(({ii} - {jj}) % {k} != 0) | ({jj} > {ii})",
            "anti": f"{ii} + {jj} < {w}",
        }
        kind = self.rng.choice(list(kinds))
        cond = kinds[kind]
        fill = self.rng.choice(['float("-inf")', 'float("-inf")', "-1e9", "-10000.0", "-1e4", "0.0"])
        forms = [f"{v} = {a}.masked_fill({cond}, {fill})", f"{v} = torch.where({cond}, {fill}, {a})",
                 f"{v} = {a}.masked_fill({cond}, {fill})"]
        if kind in ("causal", "window", "band"):
            keep = {"causal": f"{jj} <= {ii}", "window": f"({ii} - {jj} < {w}) & ({jj} <= {ii})",
                    "band": f"({ii} - {jj}).abs() < {w}"}[kind]
            forms.append(f"{v} = torch.where({keep}, {a}, {fill})")
        lines.append(self.rng.choice(forms))
        if fill != "0.0" and self.rng.random() < 0.75:
            self.prefer = ["softmax_last"]
        return tuple(lines)

    def fam_fill(self) -> str:
        a = self.pick(lambda t: t.is_floating_point())
        t = self.val(a)
        c, v = self.const(), self.const()
        forms = [f"torch.full_like({a}, {c}) * {a}", f"{a}.masked_fill({a} > {c}, {v})",
                 f"{a} + torch.zeros_like({a})", f"torch.ones_like({a}) - {a}"]
        if t.dim() >= 1:
            last = self.sym(int(t.shape[-1]))
            forms += [f"{a} + torch.full(({last},), {c})", f"{a} * torch.arange({last}) + {c}",
                      f"{a} - torch.ones({last}, dtype={a}.dtype)"]
        return self.rng.choice(forms)

    def fam_cast(self) -> str:
        a = self.pick(lambda t: True)
        t = self.val(a)
        if t.dtype == torch.bool:
            return self.rng.choice([f"{a}.float()", f"{a}.long()", f"{a}.to(torch.int32)", f"{a}.int() * 3"])
        if not t.is_floating_point():
            return self.rng.choice([f"{a}.float()", f"{a}.float() * 0.5", f"{a}.long()", f"{a} > 0",
                                    f"{a}.to(torch.{self.float_dtype})"])
        if t.dtype == torch.float32:
            return self.rng.choice([f"{a}.to(torch.float16)", f"{a}.bfloat16()", f"({a} * 3).int()",
                                    f"({a} > 0)", f"({a} * 4).long()", f"{a}.double().float()"])
        return self.rng.choice([f"{a}.float()", f"{a}.to(torch.float32) * 2", f"({a} > 0.5)"])

    def fam_int(self) -> str:
        a = self.pick(lambda t: not t.is_floating_point() and t.dtype != torch.bool)
        t = self.val(a)
        b = self.partner(a)
        k = self.rng.choice([2, 3, 5])
        forms = [f"{a} * 3 + {b}", f"{a} - {b}", f"{a}.abs()", f"-{a}", f"{a} % {k}", f"{a} // {k}",
                 f"{a} * {b}", f"({a} > {b})", f"{a}.float() * 0.5"]
        if b.startswith(("x", "t")):
            forms += [f"torch.maximum({a}, {b})", f"torch.where({a} > {b}, {a}, {b})"]
        if t.dim():
            forms += [f"{a}.sum({self.axis(t)})", f"{a}.amax({self.axis(t)})"]
        return self.rng.choice(forms)

    def fam_bool(self) -> str:
        a = self.pick(lambda t: t.dtype == torch.bool)
        t = self.val(a)
        bools = [n for n in self.pool if n != a and self.val(n).dtype == torch.bool and self._bcast(n, t)]
        b = self.rng.choice(bools) if bools else self.new_input(self.sym_shape(t.shape), "bool")
        floats = [n for n in self.pool if self.val(n).is_floating_point()]
        forms = [f"{a} & {b}", f"{a} | {b}", f"~{a}", f"{a} ^ {b}", f"{a}.float()", f"torch.logical_and({a}, ~{b})"]
        if floats:
            forms.append(f"torch.where({a}, {self.rng.choice(floats)}, {self.const()})")
        return self.rng.choice(forms)

    def fam_composite(self) -> str:
        a = self.pick(lambda t: t.is_floating_point() and t.dim() > 0)
        t = self.val(a)
        d = self.axis(t)
        forms = [f"torch.nn.functional.layer_norm({a}, ({a}.shape[-1],))",
                 f"{a} * torch.rsqrt({a}.pow(2).mean(-1, keepdim=True) + 1e-6)",
                 f"{a} - {a}.mean({d}, keepdim=True)", f"{a} / {a}.sum({d}, keepdim=True).abs().clamp(min=1e-3)",
                 f"{a}.std({d})", f"torch.nn.functional.normalize({a}, dim={d})",
                 f"({a} - {a}.amax({d}, keepdim=True)).exp().sum({d}).log()"]
        return self.rng.choice(forms)

    def fam_index(self) -> str:
        a = self.pick(lambda t: t.is_floating_point() and t.dim() > 0)
        t = self.val(a)
        d = self.rng.randrange(t.dim())
        bound = self.sym(int(t.shape[d]))
        kind = ("negindex:" if self.rng.random() < 0.3 else "index:") + bound
        dtype = "int64" if self.rng.random() < 0.8 else "int32"
        r = self.rng.random()
        if r < 0.3:
            idx = self.new_input((self.any_dim(),), dtype, kind)
            if d == 0:
                return self.rng.choice([f"{a}[{idx}]", f"{a}[{idx}] * 2"])
            return f"{a}[{', '.join([':'] * d)}, {idx}]"
        if r < 0.5:
            idx = self.new_input((self.any_dim(),), dtype, "index:" + bound)
            return f"{a}.index_select({d}, {idx})"
        if r < 0.8:
            shape = list(self.sym_shape(t.shape))
            shape[d] = self.any_dim()
            idx = self.new_input(tuple(shape), "int64", "index:" + bound)
            return self.rng.choice([f"torch.gather({a}, {d}, {idx})", f"torch.take_along_dim({a}, {idx}, dim={d})"])
        if t.dim() != 2:
            raise Reject("embedding wants a table")
        idx = self.new_input(self.random_shape(self.rng.choice([1, 2])), "int64", "index:" + self.sym(int(t.shape[0])))
        return f"torch.nn.functional.embedding({idx}, {a})"

    FAMILIES = {"index": 0.8, "composite": 0.8, "unary": 3.0, "binary": 4.0, "where": 1.2, "compare": 0.5, "reduce": 2.5, "softmax": 2.0,
                "matmul": 1.8, "layout": 1.5, "mask": 1.5, "fill": 0.6, "cast": 0.5, "int": 0.0, "bool": 0.0}

    def step(self) -> tuple[str, ...]:
        if self.prefer:
            fam, self.prefer = self.prefer[0], []
            if fam == "softmax_last":
                a = self.pool[-1]
                return (self.rng.choice([f"{{v}} = torch.softmax({a}, dim=-1)", f"{{v}} = {a}.softmax(-1)",
                                         f"{{v}} = torch.log_softmax({a}, -1)", f"{{v}} = torch.logsumexp({a}, -1)",
                                         f"{{v}} = torch.softmax({a}.float(), dim=-1)"]),)
        weights = dict(self.FAMILIES)
        last = self.val(self.pool[-1])
        if not last.is_floating_point():
            if last.dtype == torch.bool:
                weights["bool"] = 4.0
            else:
                weights["int"] = 4.0
            weights["cast"] = 1.5
        fam = self.rng.choices(list(weights), list(weights.values()))[0]
        out = getattr(self, f"fam_{fam}")()
        return out if isinstance(out, tuple) else (f"{{v}} = {out}",)

    def emit(self, lines: tuple[str, ...]) -> str:
        var = f"t{self.ntemp}"
        lines = tuple(line.replace("{v}", var) for line in lines)
        for line in lines:
            exec(line, self.ns)
        val = self.ns.get(var)
        if not isinstance(val, torch.Tensor):
            raise Reject("not a tensor")
        if val.numel() > MAX_NUMEL:
            raise Reject("too large")
        self.ntemp += 1
        self.ops.append(Op(var, lines))
        self.pool.append(var)
        return var

    def attempt(self, make: Callable[[], tuple[str, ...]]) -> str | None:
        saved = (len(self.inputs), len(self.pool), dict(self.dims), self.g.get_state(), list(self.prefer))
        try:
            return self.emit(make())
        except Exception:  # Reject, or eager refuses this op: restore and draw again
            n_in, n_pool, dims, gstate, prefer = saved
            del self.inputs[n_in:]
            del self.pool[n_pool:]
            for name in set(self.dims) - set(dims):
                self.ns.pop(name, None)
            self.dims = dims
            self.g.set_state(gstate)
            self.prefer = []
            return None

    # }}}

    # {{{ attention-shaped programs

    def attention(self) -> None:
        rng = self.rng
        dt = self.float_dtype
        for _ in range(20):
            self.dims = {}
            self.ns = {"torch": torch, "g": self.g}
            sq = self.new_dim(rng.choice([1, 5, 7, 13, 17, 31, 64, 97] + [31] * 2))
            sk = sq if rng.random() < 0.5 else self.new_dim(rng.choice([1, 3, 7, 13, 17, 31, 64, 97]))
            d = self.new_dim(rng.choice([2, 3, 5, 8, 16, 13]))
            dv = d if rng.random() < 0.6 else self.new_dim(rng.choice([3, 5, 8, 16]))
            batch = rng.choice([(), (self.any_dim(),), (self.any_dim(), self.any_dim()), ("1", self.any_dim())])
            numel = math.prod(self.dims.get(s, 1) for s in batch) * self.dims[sq] * self.dims[sk]
            if numel <= MAX_NUMEL:
                break
        else:
            raise Reject("no attention shape fits")
        q = self.new_input(batch + (sq, d), dt)
        k = self.new_input(batch + (sk, d), dt)
        s = self.emit((rng.choice([f"{{v}} = {q} @ {k}.transpose(-2, -1)", f"{{v}} = torch.matmul({q}, {k}.mT)",
                                   f"{{v}} = {q} @ {k}.transpose(-1, -2) * {rng.choice(['0.25', '0.5', '0.125'])}"]),))
        extra = rng.random()
        if extra < 0.2:
            s = self.emit((f"{{v}} = torch.tanh({s} / 5.0) * 5.0",))
        elif extra < 0.35:
            b = self.new_input(rng.choice([(sq, sk), ("1", sk), batch[-1:] + ("1", "1")]), dt)
            s = self.emit((f"{{v}} = {s} + {b}",))
        elif extra < 0.45:
            s = self.emit((f"{{v}}_i = torch.arange({s}.shape[-2])[:, None]",
                           f"{{v}}_j = torch.arange({s}.shape[-1])[None, :]",
                           f"{{v}} = {s} + 0.5 * ({{v}}_j - {{v}}_i)"))
        r = rng.random()
        if r < 0.15:  # a document mask: data-dependent
            dq = self.new_input((sq,), "int64", "doc:3")
            dk = dq if sk == sq else self.new_input((sk,), "int64", "doc:3")
            s = self.emit((f"{{v}} = {s}.masked_fill({dq}[:, None] != {dk}[None, :], float(\"-inf\"))",))
        elif r < 0.75:
            s = self.emit(self.fam_mask())
            self.prefer = []
        p = self.emit((rng.choice([f"{{v}} = torch.softmax({s}, dim=-1)", f"{{v}} = {s}.softmax(-1)",
                                   f"{{v}} = torch.softmax({s}.float(), dim=-1).to({q}.dtype)",
                                   f"{{v}} = torch.exp({s} - {s}.amax(-1, keepdim=True))"]),))
        if rng.random() < 0.85:
            v = self.new_input(batch + (sk, dv), dt)
            self.emit((rng.choice([f"{{v}} = {p} @ {v}", f"{{v}} = torch.matmul({p}, {v})"]),))

    # }}}

    # {{{ F.scaled_dot_product_attention

    def exact_dim(self, size: int) -> str:
        """A dimension of exactly this size (``"1"`` for 1): SDPA's head counts must divide."""
        if size == 1:
            return "1"
        name = self.new_dim(size)
        if self.dims[name] != size:
            raise Reject("no dimension name left")
        return name

    def size(self, expr: str) -> int:
        return eval(expr, {}, dict(self.dims))

    def sdpa(self) -> None:
        """A call of ``F.scaled_dot_product_attention`` with a random combination of its arguments:
        rank 2, 3 or 4; ``attn_mask`` None, boolean or float (an input, an ``arange`` band, a bias
        or zeros with ``-inf`` where a boolean input says no), in shapes that broadcast over some
        batch dimensions ([S_q, S_k], [1, S_k], [S_q, 1], [B, 1, 1, S_k], [H, S_q, S_k], full, ...);
        ``is_causal`` (only without a mask, as PyTorch requires); ``scale``; ``enable_gqa`` with
        fewer key/value heads; S_q != S_k, D_v != D. Masks may leave rows without any key (eager
        gives 0 there). q, k, v are inputs, one input (self-attention), or projections of one
        input split into heads. ``dropout_p`` is 0 (anything else is random)."""
        rng = self.rng
        dt = self.float_dtype
        self.max_dims = len(DIM_NAMES)
        for _ in range(30):
            self.dims = {}
            self.ns = {"torch": torch, "g": self.g}
            rank = rng.choice([4, 4, 4, 3, 3, 2])
            gqa = rank >= 3 and rng.random() < 0.35
            hk = rng.choice([1, 2, 2, 3])
            hq = hk * rng.choice([2, 3, 4]) if gqa and rng.random() < 0.85 else hk
            try:
                sq = self.exact_dim(rng.choice([1, 2, 3, 5, 7, 13, 17, 31]))
                sk = sq if rng.random() < 0.4 else self.exact_dim(rng.choice([1, 2, 3, 5, 7, 13, 31]))
                d = self.exact_dim(rng.choice([1, 2, 3, 4, 5, 8, 16]))
                dv = d if rng.random() < 0.7 else self.exact_dim(rng.choice([2, 3, 5, 8]))
                h, hkv = self.exact_dim(hq), self.exact_dim(hk)
                b = self.exact_dim(rng.choice([1, 2, 3]))
            except Reject:
                continue
            lead = (b, h) if rank == 4 else (h,) if rank == 3 else ()
            lead_kv = (b, hkv) if rank == 4 else (hkv,) if rank == 3 else ()
            nq, nk = math.prod(map(self.size, lead)), math.prod(map(self.size, lead_kv))
            widest = max(self.size(d), self.size(dv))
            if max(nq * self.size(sq) * max(self.size(sk), widest), nk * self.size(sk) * widest) <= MAX_NUMEL:
                break
        else:
            raise Reject("no SDPA shape fits")
        mode = rng.random()
        if sq == sk and d == dv and hq == hk and mode < 0.15:  # self-attention on one input
            q = k = v = self.new_input(lead + (sq, d), dt)
        elif rank == 4 and hq == hk and sq == sk and mode < 0.3:  # projections split into heads
            e = self.new_dim(rng.choice([3, 5, 8, 16]))
            x = self.new_input((b, sq, e), dt)
            q, k, v = (self.emit((f"{{v}} = ({x} @ {self.new_input((e, f'{h}*{w}'), dt)})"
                                  f".unflatten(-1, ({h}, {w})).transpose(1, 2)",)) for w in (d, d, dv))
        else:
            q, k, v = self.new_input(lead + (sq, d), dt), self.new_input(lead_kv + (sk, d), dt), \
                self.new_input(lead_kv + (sk, dv), dt)
            if rng.random() < 0.15:
                q = self.emit((rng.choice([f"{{v}} = {q} * {self.const()}", f"{{v}} = torch.tanh({q})"]),))
        mask = None
        if rng.random() < 0.55:
            shapes = [(sq, sk), (sq, sk), ("1", sk), (sq, "1"), lead + (sq, sk)]
            if rank == 4:
                shapes += [(b, "1", "1", sk), (b, "1", sq, sk), (h, sq, sk), ("1", h, "1", sk)]
            elif rank == 3:
                shapes += [(h, "1", sk)]
            shape = rng.choice(shapes)
            kind = rng.choice(["bool", "bool", "band", "float", "float_inf", "float_inf"])
            if kind == "bool":
                mask = self.new_input(shape, "bool")
            elif kind == "band":  # where to attend; an offset below 0 leaves the first rows without a key
                i, j = f"torch.arange({sq})[:, None]", f"torch.arange({sk})[None, :]"
                cond = rng.choice([f"{j} <= {i} + {rng.choice([-2, -1, 0, 1])}",
                                   f"({i} - {j}).abs() <= {rng.choice([0, 1, 2])}",
                                   f"{j} <= {i} + ({sk} - {sq})", f"{j} >= {i}"])
                if rng.random() < 0.3:
                    cond = f"({cond}) & {self.new_input(shape, 'bool')}"
                mask = self.emit((f"{{v}} = {cond}",))
            elif kind == "float":  # an additive bias
                mask = self.new_input(shape, dt)
            else:  # -inf where a boolean input says no
                m = self.new_input(shape, "bool")
                if rng.random() < 0.5:
                    mask = self.emit((f'{{v}} = torch.where({m}, 0.0, float("-inf")).to(torch.{dt})',))
                else:
                    mask = self.emit((f'{{v}} = {self.new_input(shape, dt)}.masked_fill(~{m}, float("-inf"))',))
        args = [q, k, v]
        if mask is not None:
            args.append(mask if rng.random() < 0.3 else f"attn_mask={mask}")
        if rng.random() < 0.15:
            args.append("dropout_p=0.0")
        if mask is None and rng.random() < 0.4:
            args.append("is_causal=True")
        elif rng.random() < 0.1:
            args.append("is_causal=False")
        if rng.random() < 0.35:
            args.append(f"scale={rng.choice(['0.5', '0.125', '0.3', '1.0', '2.0'])}")
        if gqa or (rank >= 3 and rng.random() < 0.1):
            args.append("enable_gqa=True")
        out = self.emit((f"{{v}} = {SDPA}({', '.join(args)})",))
        if rank == 4 and rng.random() < 0.3:  # heads merged again
            out = self.emit((f"{{v}} = {out}.transpose(1, 2).flatten(-2)",))
        self.keep = out

    # }}}

    def generate(self) -> Program:
        rng = self.rng
        n_ops = rng.randint(2, 8)
        r = rng.random()
        start = None if self.flavor == "int" else self.sdpa if r < 0.18 else self.attention if r < 0.44 else None
        if start is not None:
            try:
                start()
            except Exception:  # no shape fits, or eager refused: an ordinary program instead
                start = None
        if start is None:
            self.ops, self.pool, self.inputs, self.dims, self.ntemp, self.prefer = [], [], [], {}, 0, []
            self.max_dims, self.keep = 5, None
            self.g.manual_seed(self.seed)
            self.ns = {"torch": torch, "g": self.g}
            for _ in range(50):
                nd = rng.choices([0, 1, 2, 3, 4], [0.3, 1, 4, 3, 1])[0]
                shape = self.random_shape(nd)
                if math.prod(eval(s, {}, dict(self.dims)) for s in shape) <= MAX_NUMEL:
                    break
            self.new_input(shape)
            if self.flavor == "int":
                for _ in range(50):  # an index-sized input, as small as the first
                    try:
                        self.new_input(self.random_shape(rng.randint(1, 2)), rng.choice(["int32", "int64", "bool"]))
                        break
                    except Reject:
                        pass
        tries = 0
        while len(self.ops) < n_ops and tries < 200:
            tries += 1
            self.attempt(self.step)
        if not self.ops:
            self.attempt(lambda: ("{v} = " + self.pool[-1] + " * 2",))
        outputs = [self.ops[-1].var]
        # values nothing reads are outputs too, some of them (the rest is dropped)
        text = "\n".join(line.split(" = ", 1)[-1] for op in self.ops for line in op.lines)  # what ops read
        leaves = [op.var for op in self.ops[:-1] if not _uses(text, op.var)]
        rng.shuffle(leaves)
        outputs += leaves[:rng.choice([0, 1, 1, 2])]
        if len(outputs) == 1 and len(self.ops) > 1 and rng.random() < 0.15:
            outputs.append(rng.choice([op.var for op in self.ops[:-1]]))
        options: dict[str, Any] = {}
        r = rng.random()
        if r < 0.35:
            options["block_m"] = rng.choice([16, 32])
            options["block_n"] = rng.choice([16, 32])
        elif r < 0.5:
            options["block_limit"] = rng.choice([16, 32, 64])
        if self.flavor in ("f16", "bf16") and rng.random() < 0.3:
            options["exact_roundings"] = True
        p = Program(self.seed, dict(self.dims), tuple(self.inputs), tuple(self.ops), tuple(outputs), options,
                    tuple_out=len(outputs) == 1 and rng.random() < 0.1)
        if self.keep is not None and all(op.var != self.keep for op in prune(p).ops):  # no output needs it: one does
            p = replace(p, outputs=p.outputs + (self.keep,), tuple_out=False)
        p = prune(p)
        if rng.random() < 0.04:  # a dimension of size 0 (the first, in a random order, that eager accepts)
            names = sorted(p.dims)
            rng.shuffle(names)
            for name in names:
                q = replace(p, dims={**p.dims, name: 0})
                if _runs_eagerly(q):
                    p = q
                    break
        if rng.random() < 0.2 and any(_is_float(x.dtype) for x in p.inputs):  # gradients too, where eager has them
            q = replace(p, inputs=tuple(replace(x, grad=_is_float(x.dtype)) for x in p.inputs))
            if _runs_eagerly(q):
                p = q
        return p


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _runs_eagerly(p: Program) -> bool:
    """The program and, if some input requires grad, its backward run eagerly."""
    ns: dict[str, Any] = {"torch": torch}
    try:
        with _quiet():
            exec(compile(render_core(p), f"<fuzz seed {p.seed}>", "exec"), ns)
            inputs = ns["make_inputs"]()
            (with_grads(ns["prog"]) if wants_grad(inputs) else ns["prog"])(*inputs)
    except Exception:
        return False
    return True


def tags(p: Program) -> list[str]:
    """The program's families that a campaign counts apart: ``sdpa`` (calls
    F.scaled_dot_product_attention), ``grad`` (inputs that require grad: gradients are compared
    too), ``f64`` (float64 inputs), ``empty`` (a dimension of size 0)."""
    text = "\n".join(line for op in p.ops for line in op.lines)
    return ([t for t, hit in (("sdpa", "scaled_dot_product_attention" in text),
                              ("grad", any(x.grad for x in p.inputs)),
                              ("f64", any(x.dtype == "float64" for x in p.inputs)),
                              ("empty", 0 in p.dims.values())) if hit])


def generate(seed: int) -> Program:
    """The program of this seed (deterministic)."""
    with _quiet():
        return Gen(seed).generate()

# }}}


# {{{ comparing

class Mismatch(AssertionError):
    pass


def _flat(x: Any) -> list:
    if isinstance(x, (tuple, list)):
        return [y for e in x for y in _flat(e)]
    return [x]


def _structure(x: Any) -> Any:
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, tuple(_structure(e) for e in x))
    return type(x).__name__


def compare(out: Any, ref: Any, ref64: Any = None, narrowest: torch.dtype | None = None,
            ref64_flipped: tuple = (), noise: Callable[[], list] | None = None,
            labels: list[str] | None = None) -> None:
    """Raise :class:`Mismatch` (an ``AssertionError``) unless ``out`` is what eager's ``ref`` is.

    ``ref64`` (the same program on float64 inputs), if given, excuses values outside the
    tolerance where our error against it is within eager's own (an ill-conditioned output).
    ``narrowest``: the narrowest float dtype the program computes in; a float32 output of a
    program that rounds to bfloat16 on the way gets bfloat16's tolerance (flashlight keeps fused
    intermediates in float32, see ``passes/elide_roundings.py``).
    ``ref64_flipped``: ``ref64`` again with its float-to-integer casts pushed by eager's rounding
    error either way (:func:`reference64`); integers that differ there are decided by rounding.
    ``noise``: called at most once, only if a float value is otherwise beyond the tolerance: runs of
    the program with eager's rounding perturbed (:func:`eager_noise`); where our error against
    ``ref64`` is within :data:`NOISE_FACTOR` times their spread, it is rounding noise too.
    ``labels``: what each flattened value is called in a message (default ``output k``)."""
    if _structure(out) != _structure(ref):
        raise Mismatch(f"output structure {_structure(out)}, eager gives {_structure(ref)}")
    outs, refs = _flat(out), _flat(ref)
    r64s = _flat(ref64) if ref64 is not None and _structure(ref64) == _structure(ref) else [None] * len(refs)
    flips = [_flat(f) for f in ref64_flipped if _structure(f) == _structure(ref)]
    runs: list[list] | None = None

    def noise_of(k: int, r: torch.Tensor) -> list[torch.Tensor]:
        nonlocal runs
        if runs is None:  # once for all outputs
            runs = [_flat(n) for n in (noise() if noise is not None else []) if _structure(n) == _structure(ref)]
        return [n[k] for n in runs if isinstance(n[k], torch.Tensor) and n[k].shape == r.shape]
    # a gradient's rounding noise is on the scale of the values it flows from (the cotangent is at
    # most 1): one that is exactly 0 in exact arithmetic comes out as noise of the outputs' scale
    outputs = [r for k, r in enumerate(refs) if isinstance(r, torch.Tensor) and r.dtype.is_floating_point
               and not (labels is not None and k < len(labels) and labels[k].startswith("gradient"))]
    finite = [r.detach().double()[torch.isfinite(r.detach())] for r in outputs]
    out_scale = max((float(f.abs().max()) for f in finite if f.numel()), default=0.0)
    for k, (o, r, r64) in enumerate(zip(outs, refs, r64s)):
        what = labels[k] if labels is not None and k < len(labels) else f"output {k}"
        if not isinstance(r, torch.Tensor):
            if o != r:
                raise Mismatch(f"{what}: {o!r}, eager gives {r!r}")
            continue
        if (o.shape, o.dtype) != (r.shape, r.dtype):
            raise Mismatch(f"{what}: {o.dtype}{list(o.shape)}, eager gives {r.dtype}{list(r.shape)}")
        if o.device != r.device:
            raise Mismatch(f"{what} on {o.device}, eager's on {r.device}")
        r64 = r64.detach() if isinstance(r64, torch.Tensor) and r64.shape == r.shape else None
        flipped = [f[k] for f in flips if isinstance(f[k], torch.Tensor) and f[k].shape == r.shape]
        _compare_tensor(what, o.detach(), r.detach(), r64, narrowest, flipped, lambda k=k, r=r: noise_of(k, r),
                        out_scale if what.startswith("gradient") else 0.0)


def _compare_tensor(what: str, o: torch.Tensor, r: torch.Tensor, r64: torch.Tensor | None,
                    narrowest: torch.dtype | None = None, flipped: list[torch.Tensor] = (),
                    noise: Callable[[], list[torch.Tensor]] | None = None, min_scale: float = 0.0) -> None:
    if not r.dtype.is_floating_point and not r.dtype.is_complex:
        bad = o != r
        if bad.any() and r64 is not None:
            # positions where eager itself disagrees with float64 are decided by rounding
            bad &= r64.to(r.dtype) == r
            for f in flipped:  # and so are those whose truncated value lies within eager's error of an integer
                bad &= f.to(r.dtype) == r
        if bad.any() and not _rounding_flips(bad, narrowest):
            idx = bad.nonzero()[0].tolist()
            raise Mismatch(f"{what} ({r.dtype}{list(r.shape)}): {int(bad.sum())} of {r.numel()} elements differ, "
                           f"first at {idx}: {o[tuple(idx)].item()} vs eager {r[tuple(idx)].item()}")
        return
    o32, r32 = o.double(), r.double()
    nan_o, nan_r = torch.isnan(o32), torch.isnan(r32)
    if not torch.equal(nan_o, nan_r) and r64 is not None:
        # eager's own NaN where the float64 evaluation of the program has a value, and ours is that
        # value (CPU bfloat16 matmuls of rows of infinities give NaN where float32 and float64 sum
        # them to +-inf): judged against the float64 evaluation there
        r64d = r64.double()
        quirk = nan_r & ~nan_o & ~torch.isnan(r64d) & ((o32 == r64d) | (torch.isfinite(r64d) & torch.isfinite(o32)))
        if quirk.any():
            r32 = torch.where(quirk, r64d, r32)
            nan_r = torch.isnan(r32)
    if not torch.equal(nan_o, nan_r):
        idx = (nan_o != nan_r).nonzero()[0].tolist()
        raise Mismatch(f"{what} ({r.dtype}{list(r.shape)}): NaN in other places than eager "
                       f"({int(nan_o.sum())} vs {int(nan_r.sum())}); first at {idx}: "
                       f"{o[tuple(idx)].item()} vs eager {r[tuple(idx)].item()}")
    inf_r = torch.isinf(r32)
    differ = (torch.isinf(o32) != inf_r) | (inf_r & (o32 != r32))
    if differ.any() and r64 is not None and noise is not None:
        # an overflow that eager's own rounding noise decides (a difference of two values 1e17 apart
        # from 1e8 of each other, cast to float16): excused where a perturbed eager run agrees with us
        same = [(torch.isinf(n.double()) == torch.isinf(o32)) & (~torch.isinf(o32) | (n.double() == o32))
                for n in noise()]
        if same:
            excused = differ & torch.stack(same).any(0)
            o32, differ = torch.where(excused, r32, o32), differ & ~excused
    if differ.any():
        idx = differ.nonzero()[0].tolist()
        raise Mismatch(f"{what} ({r.dtype}{list(r.shape)}): infinities differ; first at {idx}: "
                       f"{o[tuple(idx)].item()} vs eager {r[tuple(idx)].item()}")
    fin = torch.isfinite(r32)
    if not fin.any():
        return
    rtol, atol_rel = TOLERANCES.get(r.dtype, (1e-4, 1e-4))
    if narrowest in TOLERANCES:
        rtol, atol_rel = max(rtol, TOLERANCES[narrowest][0]), max(atol_rel, TOLERANCES[narrowest][1])
    # a 16-bit program's rounding noise is relative to its values (about 1 for these inputs), not
    # to an output that cancels to nearly zero
    floor = 1.0 if narrowest in (torch.float16, torch.bfloat16) or r.dtype in (torch.float16, torch.bfloat16) else 1e-3
    scale = max(float(r32[fin].abs().max()), floor, min_scale)
    atol = atol_rel * scale
    try:
        torch.testing.assert_close(o32, r32, rtol=rtol, atol=atol, equal_nan=True)
        return
    except AssertionError as exc:
        first = str(exc).strip().splitlines()
    err = (o32 - r32).abs()
    err[~fin] = 0
    bad = err > atol + rtol * r32.abs()
    spread = None
    if r64 is not None:
        # no worse than eager's own rounding: its error against float64, or where that is lucky (a
        # row of equal values minus its mean comes out exactly 0), the spread of eager's runs with
        # perturbed roundings (only computed here, for what would otherwise be a mismatch)
        r64d = r64.double()
        eager_err = (r32 - r64d).abs()[fin & torch.isfinite(r64d)]
        eager_err = float(eager_err.max()) if eager_err.numel() else 0.0
        ours = (o32 - r64d).abs()
        ours[~fin | ~torch.isfinite(r64d)] = 0
        if float(ours[bad].max()) <= NOISE_FACTOR * eager_err + atol:
            return
        runs = noise() if noise is not None else []
        if runs:  # a run that overflows or gives NaN where eager does not excuses nothing
            spread = torch.stack([(n.double() - r32).abs() for n in runs]).amax(0).nan_to_num(0.0, 0.0, 0.0)
            if bool((ours[bad] <= NOISE_FACTOR * spread[bad].clamp_min(eager_err) + atol).all()):
                return
    if bad.any() and _rounding_flips(bad, narrowest):
        return
    if not bad.any():
        bad = err == err.max()
    idx = tuple(bad.nonzero()[0].tolist())
    raise Mismatch(f"{what} ({r.dtype}{list(r.shape)}): {int(bad.sum())} of {r.numel()} elements beyond "
                   f"rtol {rtol:g}, atol {atol:.2g}; max abs error {float(err.max()):.3g} (scale {scale:.3g}); "
                   f"first at {list(idx)}: {o32[idx].item()} vs eager {r32[idx].item()}"
                   + (f" (eager's rounding noise there {float(spread[idx]):.3g})" if spread is not None else "")
                   + "\n" + "\n".join(first[:6]))


def _rounding_flips(bad: torch.Tensor, narrowest: torch.dtype | None) -> bool:
    """A few isolated differences in a program that rounds to a 16-bit float: a comparison whose
    operand is one ulp off (flashlight decomposes softmax and keeps fused values in float32, eager
    rounds once per op) decides differently. At most 1% of the elements, and at most 3."""
    if narrowest not in (torch.float16, torch.bfloat16):
        return False
    n = int(bad.sum())
    return n <= min(3, max(1, bad.numel() // 100))


def _ref64_inputs(inputs: tuple) -> tuple:
    return tuple(_widen(x) for x in inputs)


def _truncates(func: Any, args: tuple, out: Any) -> bool:
    """A cast of a float tensor to an integer dtype (``.long()``, ``.int()``, ``.to(torch.int32)``)."""
    return (func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.to) and bool(args)
            and isinstance(args[0], torch.Tensor) and args[0].is_floating_point() and isinstance(out, torch.Tensor)
            and not out.dtype.is_floating_point and not out.dtype.is_complex and out.dtype != torch.bool)


def eager_with_dtypes(prog: Callable, inputs: tuple, casts: list[torch.Tensor] | None = None
                      ) -> tuple[Any, torch.dtype | None]:
    """``prog(*inputs)`` and the narrowest float dtype among its inputs and op results. ``casts``,
    if given, receives the float source of each float-to-integer cast, in program order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: set[torch.dtype] = {x.dtype for x in inputs if isinstance(x, torch.Tensor)}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in _flat(out):
                if isinstance(t, torch.Tensor):
                    seen.add(t.dtype)
            if casts is not None and _truncates(func, args, out):
                casts.append(args[0].detach().double())
            return out

    with Record():
        out = prog(*inputs)
    floats = [d for d in (torch.bfloat16, torch.float16) if d in seen]
    return out, (floats[0] if floats else None)


def reference64(prog: Callable, inputs: tuple, casts32: list[torch.Tensor]) -> tuple[Any, tuple]:
    """``prog`` on float64 inputs, and the same twice more with the source of each float-to-integer
    cast moved down, then up, by eager's largest error on that source (``casts32``, from
    :func:`eager_with_dtypes`). A float that lies within rounding noise of an integer truncates
    either way in float32 (a sum of -10000-masked log_softmax values, 0.08 from an integer while
    eager is 0.14 off elsewhere): where the flipped references differ, no integer is right.
    ``(None, ())`` if the program fails on float64."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shift(TorchDispatchMode):
        def __init__(self, sign: float) -> None:
            super().__init__()
            self.sign, self.k = sign, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if not _truncates(func, args, out):
                return out
            src, k = args[0], self.k
            self.k += 1
            if k >= len(casts32) or casts32[k].shape != src.shape or not casts32[k].numel():
                return out
            err = (casts32[k] - src.double()).abs().nan_to_num(0.0, 0.0, 0.0).max()
            return func(src + self.sign * err.to(src.dtype), *args[1:], **(kwargs or {}))

    inputs64 = _ref64_inputs(inputs)
    try:
        ref64 = prog(*inputs64)
    except Exception:
        return None, ()
    flipped = []
    for sign in (-1.0, 1.0) if casts32 else ():
        with Shift(sign):
            flipped.append(prog(*inputs64))
    return ref64, tuple(flipped)


# Monte-Carlo rounding of eager (:func:`eager_noise`): how many runs, and how far beyond eager's
# noise an error is still rounding. Runs: an element that depends on a few roundings, each of which
# moves it with probability about 1/2, keeps a spread of exactly 0 in a few runs by chance (seed
# 53511, ours off by an ulp of values in [64, 128): some such element had no spread in 76% of 4-run
# sets, 2.5% of 8-run sets, none of 16). Factor: a run perturbs each rounding by up to one ulp, uniform, about twice
# round-to-nearest's spread, and 16 runs reach about 2 of their standard deviations, yet a sum or
# a matmul is perturbed once where any evaluation rounds once per addend, in its own order (ours:
# tiled, fused, reassociated): 4x covers that. The two false positives this was made for (and their
# minimized reproducers) come out within 0.9x; real bugs are far beyond: a 3e-4 error (relative to the output's scale)
# injected into one element of each of 659 outputs (seeds 0-699) is caught in every one.
NOISE_RUNS = 16
NOISE_FACTOR = 4.0

# Composite ops whose internals round more than once (a mean, a variance, a max-subtracted sum of
# exps): :func:`eager_noise` runs them as their decompositions so that each step is perturbed.
_COMPOSITE = {"_softmax", "_log_softmax", "_safe_softmax", "logsumexp", "native_layer_norm", "native_group_norm",
              "native_batch_norm", "_native_batch_norm_legit_no_training", "var_mean", "std", "std_mean", "mean",
              "linalg_vector_norm", "gelu", "silu", "addmm", "baddbmm", "logaddexp"}
# Ops whose float results are some of their inputs' values (moved, selected, compared) or exact
# constants: they do not round.
_EXACT = {"_to_copy", "to", "convert_element_type", "clone", "copy", "copy_", "contiguous", "alias", "detach",
          "lift_fresh", "lift_fresh_copy", "_unsafe_view", "view", "reshape", "expand", "broadcast_in_dim", "permute",
          "transpose", "t", "squeeze", "unsqueeze", "slice", "select", "split", "split_with_sizes", "chunk", "unbind",
          "real", "cat", "stack", "flip", "roll", "repeat", "constant_pad_nd", "gather", "index", "index_select",
          "embedding", "masked_fill", "where", "tril", "triu", "maximum", "minimum", "amax", "amin", "max", "min",
          "clamp", "clamp_min", "clamp_max", "relu", "abs", "neg", "sign", "floor", "ceil", "round", "trunc", "sort",
          "topk", "fill", "full", "full_like", "zeros", "zeros_like", "ones", "ones_like", "empty", "empty_like",
          "scalar_tensor", "arange", "iota"}


def _rounds(func: Any, args: tuple, out: Any) -> bool:
    """Whether ``func`` rounds its floating-point result (as opposed to moving values around). A
    cast rounds when it narrows."""
    name = func.overloadpacket.__name__
    tensors = [a for a in _flat(list(args)) if isinstance(a, torch.Tensor)]
    if name in ("_to_copy", "to", "convert_element_type") and tensors and isinstance(out, torch.Tensor):
        src = tensors[0]
        return (src.is_floating_point() and out.is_floating_point()
                and torch.finfo(out.dtype).eps > torch.finfo(src.dtype).eps)
    return bool(tensors) and not func.is_view and name not in _EXACT


def _widen(a: Any) -> Any:
    if isinstance(a, torch.Tensor) and a.is_floating_point():
        return a.double()
    return torch.float64 if isinstance(a, torch.dtype) and a.is_floating_point else a


def eager_noise(prog: Callable, inputs: tuple, runs: int = NOISE_RUNS) -> list:
    """``prog(*inputs)`` ``runs`` times, each time with every floating-point result that an op
    rounded multiplied by ``1 + u * eps`` (``u`` uniform in [-1, 1], ``eps`` its dtype's ulp at 1,
    seeded: deterministic), composite ops (:data:`_COMPOSITE`) run as their decompositions so that
    their internal steps are perturbed too (a layer_norm's mean). Monte-Carlo arithmetic (Parker,
    1997; random rounding: a result that the same op in float64 gives exactly was not rounded and
    is left alone, so -10000 * -1.5 stays 15000). The spread of these runs around eager is eager's
    own rounding noise, elementwise, also where eager happens to be exact (equal rows minus their
    mean give exactly 0, while an equally valid rounding of one row gives ``eps * |row|``).
    ``[]`` if a run raises."""
    from torch._decomp import decomposition_table
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

    class Perturb(TorchDispatchMode):
        def __init__(self, seed: int) -> None:
            super().__init__()
            self.gen = torch.Generator().manual_seed(seed)

        def jitter(self, t: Any, wide: Any) -> Any:
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or not t.numel():
                return t
            u = torch.rand(t.shape, generator=self.gen, dtype=torch.float64) * 2 - 1
            moved = (t.double() * (1 + u * torch.finfo(t.dtype).eps)).to(t.dtype)
            if isinstance(wide, torch.Tensor) and wide.shape == t.shape:
                return torch.where(t.double() == wide.double(), t, moved)
            return moved

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.overloadpacket.__name__ in _COMPOSITE and func in decomposition_table:
                with self:  # the decomposition's ops come back here, to be perturbed
                    out = decomposition_table[func](*args, **kwargs)
                if out is not NotImplemented:
                    return out
            out = func(*args, **kwargs)
            if not _rounds(func, args, out):
                return out
            outs, spec = tree_flatten(out)
            try:  # the op in float64: where it gives the same value, nothing was rounded
                wides = tree_flatten(func(*tree_map(_widen, args), **tree_map(_widen, kwargs)))[0]
            except Exception:
                wides = []
            if len(wides) != len(outs):
                wides = [None] * len(outs)
            return tree_unflatten([self.jitter(t, w) for t, w in zip(outs, wides)], spec)

    results = []
    for k in range(runs):
        try:
            with _quiet(), Perturb(k):
                results.append(prog(*[x.clone() if isinstance(x, torch.Tensor) else x for x in inputs]))
        except Exception:
            return []
    return results


def fallbacks_of(f: Any) -> list[tuple[str, str]]:
    whole = [("function", f.eager_reason)] if getattr(f, "eager_reason", None) else []
    return whole + [x for g in getattr(f, "graphs", []) for x in g.fallbacks]


# {{{ gradients

def cotangent(t: torch.Tensor) -> torch.Tensor:
    """The direction the gradient check pulls back through an output: ``sin(0.7 k + 0.3)`` over its
    elements in order, rounded to a multiple of 1/64 (exact in every float dtype: the float64
    reference and the perturbed runs pull back the same one). Fixed and generic: ``sum(out**2)``
    would give identically zero gradients through a normalization."""
    c = torch.sin(torch.arange(t.numel(), dtype=torch.float64) * 0.7 + 0.3)
    return (torch.round(c * 64) / 64).reshape(t.shape).to(t.dtype)


def wants_grad(inputs: Any) -> bool:
    """Whether some input requires grad: then the check compares gradients too."""
    return any(isinstance(x, torch.Tensor) and x.requires_grad for x in inputs)


def _detached(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (tuple, list)):
        return type(x)(_detached(e) for e in x)
    return x


def with_grads(fn: Callable) -> Callable:
    """``fn`` and its backward: a function of the same inputs that returns ``(outputs, grads)``,
    ``grads`` the ``.grad`` of each input that requires grad, in order (``None`` where it got
    none), after one backward of :func:`cotangent` through every floating-point output that
    requires grad. Each call makes fresh leaves (detached copies) of those inputs, so that runs do
    not accumulate into each other; the outputs come back detached."""
    def run(*inputs: Any) -> tuple[Any, tuple]:
        xs = [x.detach().clone().requires_grad_() if isinstance(x, torch.Tensor) and x.requires_grad else x
              for x in inputs]
        out = fn(*xs)
        diff = [o for o in _flat(out) if isinstance(o, torch.Tensor) and o.is_floating_point() and o.requires_grad]
        if diff:
            torch.autograd.backward(diff, [cotangent(o) for o in diff])
        return _detached(out), tuple(x.grad for x in xs if isinstance(x, torch.Tensor) and x.requires_grad)
    return run


@dataclass
class Reference:
    """What the compiled function must give: eager's results (of ``fn``: the program, or with
    :func:`with_grads` its outputs and gradients) and what excuses rounding."""
    fn: Callable
    ref: Any
    narrowest: torch.dtype | None
    ref64: Any
    flipped: tuple
    saved: list          # copies of the inputs
    labels: list[str] | None  # names of the flattened results in messages

    @property
    def grad(self) -> bool:
        return self.labels is not None


def reference(prog: Callable, inputs: tuple) -> Reference:
    """Eager's results for :func:`check_results`; raises what eager raises."""
    grad = wants_grad(inputs)
    fn = with_grads(prog) if grad else prog
    casts: list[torch.Tensor] = []
    with _quiet():
        ref, narrowest = eager_with_dtypes(fn, inputs, casts)
    with _quiet():
        ref64, flipped = reference64(fn, inputs, casts)
    saved = [x.detach().clone().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x for x in inputs]
    labels = None
    if grad:
        labels = [f"output {k}" for k in range(len(_flat(ref[0])))] + \
            [f"gradient of input {k}" for k, x in enumerate(inputs) if isinstance(x, torch.Tensor) and x.requires_grad]
    return Reference(fn, ref, narrowest, ref64, flipped, saved, labels)


def check_results(out: Any, r: Reference, inputs: tuple) -> None:
    """Raise :class:`Mismatch` unless the compiled function's ``out`` (with gradients if ``r.grad``)
    is eager's, and the inputs are as they were."""
    if r.grad:
        n = len(_flat(r.ref[0]))
        for what, a, b in zip(r.labels[n:], out[1], r.ref[1]):
            if (a is None) != (b is None):
                raise Mismatch(f"{what}: {'none' if a is None else 'a gradient'}, eager gives "
                               f"{'none' if b is None else 'a gradient'}")
    compare(out, r.ref, r.ref64, r.narrowest, r.flipped, lambda: eager_noise(r.fn, r.saved), labels=r.labels)
    for k, (x, y) in enumerate(zip(inputs, r.saved)):
        if isinstance(x, torch.Tensor) and not torch.equal(x.detach().nan_to_num(), y.detach().nan_to_num()):
            raise Mismatch(f"input {k} was modified by the compiled function")

# }}}


def check_program(prog: Callable, make_inputs: Callable[[], tuple], options: dict | None = None,
                  strict_fallbacks: bool = False) -> list:
    """Eager against ``flashlight.compile(prog, **options)``: raises ``AssertionError`` if they
    differ or if flashlight raises (with ``strict_fallbacks``, also if compiling a segment
    raised and it ran eagerly instead); returns the fallbacks. If some input requires grad, the
    gradients of those inputs are compared too (:func:`with_grads`). The reproducers call this."""
    import flashlight

    inputs = make_inputs()
    r = reference(prog, inputs)
    with _quiet():
        f = flashlight.compile(prog, **(options or {}))
        try:
            out = (with_grads(f) if r.grad else f)(*inputs)
        except Exception as exc:
            raise AssertionError(f"flashlight raised {type(exc).__name__}: {exc}") from exc
    check_results(out, r, inputs)
    raised = [(op, why) for op, why in fallbacks_of(f) if op.startswith("program ")]
    if strict_fallbacks and raised:
        raise AssertionError(f"compiling {raised[0][0]} raised, it ran eagerly: {raised[0][1]}")
    return fallbacks_of(f)

# }}}


# {{{ running one program

@dataclass
class Outcome:
    kind: str  # ok | mismatch | crash | timeout | eager_error
    detail: str = ""
    signature: str = ""
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _silence_log():
            yield


@contextlib.contextmanager
def _silence_log():
    lg = logging.getLogger("flashlight")
    old = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(old)


class ProgramTimeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    if not seconds or threading_main() is False or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):
        raise ProgramTimeout(f"took longer than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


_FUZZER_DIR = Path(__file__).resolve().parent


def _in_fuzzer(filename: str) -> bool:
    """A frame of the fuzzer itself (which a checkout named ``flashlight`` also has under ``/flashlight/``)."""
    return Path(filename).resolve().parent == _FUZZER_DIR


def _crash_signature(exc: BaseException) -> str:
    """Exception type and the innermost flashlight frame: what tells one crash from another."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    for fr in frames:
        if "/flashlight/" in fr.filename.replace(os.sep, "/") and not _in_fuzzer(fr.filename):
            where = f"{Path(fr.filename).parent.name}/{Path(fr.filename).name}:{fr.name}"
    if not where and frames:
        fr = frames[-1]
        where = f"{Path(fr.filename).name}:{fr.name}"
    return f"{type(exc).__name__}@{where}"


# Set by ``--fail-on-compile-error``: a segment whose compilation raised (and that flashlight then
# ran eagerly, correctly) counts as a crash, so that it is minimized like one.
STRICT_FALLBACKS = False


def run_program(p: Program, timeout: float | None = 120.0) -> Outcome:
    import flashlight

    t0 = time.monotonic()
    try:
        ns = materialize(p)
        prog, inputs = ns["prog"], ns["make_inputs"]()
        r = reference(prog, inputs)
    except Exception as exc:
        return Outcome("eager_error", f"{type(exc).__name__}: {exc}", seconds=time.monotonic() - t0)
    f = None
    try:
        with _quiet(), _time_limit(timeout):
            f = flashlight.compile(prog, **p.options)
            out = (with_grads(f) if r.grad else f)(*inputs)
    except ProgramTimeout as exc:
        return Outcome("timeout", str(exc), "timeout", fallbacks_of(f), time.monotonic() - t0)
    except Exception as exc:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-6:])
        return Outcome("crash", f"{type(exc).__name__}: {exc}\n{tb}", _crash_signature(exc), fallbacks_of(f),
                       time.monotonic() - t0)
    fb = fallbacks_of(f)
    try:
        check_results(out, r, inputs)
    except Mismatch as exc:
        return Outcome("mismatch", str(exc), "mismatch", fb, time.monotonic() - t0)
    if f.eager_reason is None and not f.graphs:  # Dynamo ran it without calling flashlight
        f.eager_reason = "nothing was captured: Dynamo ran the function eagerly (recompile limit?)"
    if f.eager_reason is not None:  # correct, but nothing was compiled: the campaign must not count it ok
        return Outcome("crash", f.eager_reason, "capture:" + f.eager_reason.split(":")[1].strip(), fb,
                       time.monotonic() - t0)
    raised = [(op, why) for op, why in fb if op.startswith("program ")]
    if STRICT_FALLBACKS and raised:
        why = raised[0][1]
        return Outcome("crash", f"compilation raised, the segment ran eagerly: {why}",
                       "fallback:" + re.sub(r"\d+", "N", why.split(":")[0] + ":" + " ".join(why.split()[1:4])),
                       fb, time.monotonic() - t0)
    return Outcome("ok", "", "", fb, time.monotonic() - t0)

# }}}


# {{{ minimizing

_WORD = r"(?<![\w.]){}(?!\w)"


def _uses(text: str, name: str) -> bool:
    return re.search(_WORD.format(re.escape(name)), text) is not None


def _subst(text: str, name: str, new: str) -> str:
    return re.sub(_WORD.format(re.escape(name)), new, text)


def prune(p: Program) -> Program:
    """Drop ops no output needs, then inputs no op uses, then dimensions nothing mentions."""
    need = set(p.outputs)
    keep = []
    for op in reversed(p.ops):
        if op.var in need:
            keep.append(op)
            text = "\n".join(op.lines)
            need |= {o.var for o in p.ops if _uses(text, o.var)} | {x.name for x in p.inputs if _uses(text, x.name)}
    ops = tuple(reversed(keep))
    text = "\n".join(line for op in ops for line in op.lines) + "\n" + " ".join(p.outputs)
    inputs = tuple(x for x in p.inputs if _uses(text, x.name))
    used = text + " " + " ".join(s for x in inputs for s in x.shape) + " " + " ".join(x.kind for x in inputs)
    dims = {d: v for d, v in p.dims.items() if re.search(rf"\b{d}\b", used)}
    return replace(p, dims=dims, inputs=inputs, ops=ops)


def _rename_inputs(p: Program) -> Program:
    """x0, x1, ... in order again (after inputs were dropped)."""
    mapping = {x.name: f"x{k}" for k, x in enumerate(p.inputs)}
    if all(a == b for a, b in mapping.items()):
        return p
    tmp = {a: f"__in{k}__" for k, a in enumerate(mapping)}
    ops = []
    for op in p.ops:
        lines = list(op.lines)
        for a, t in tmp.items():
            lines = [_subst(line, a, t) for line in lines]
        for a, t in tmp.items():
            lines = [line.replace(t, mapping[a]) for line in lines]
        ops.append(Op(op.var, tuple(lines)))
    outs = tuple(mapping.get(o, o) for o in p.outputs)
    return replace(p, inputs=tuple(replace(x, name=mapping[x.name]) for x in p.inputs), ops=tuple(ops), outputs=outs)


def _dims_of(p: Program) -> dict[int, str]:
    by_size: dict[int, str] = {}
    for d, v in p.dims.items():
        by_size.setdefault(v, d)
    for a in p.dims:
        for b in p.dims:
            by_size.setdefault(p.dims[a] * p.dims[b], f"{a}*{b}")
    by_size[1] = "1"
    return by_size


def _candidates(p: Program) -> list[Program]:
    """Smaller programs, most ambitious first."""
    out: list[Program] = []
    # fewer outputs
    if len(p.outputs) > 1:
        out += [replace(p, outputs=(o,), tuple_out=False) for o in p.outputs]
    elif p.tuple_out:
        out.append(replace(p, tuple_out=False))
    # an earlier value as the output
    for k in range(len(p.ops) - 1):
        out.append(replace(p, outputs=(p.ops[k].var,), tuple_out=False))
    # fewer gradients: none at all, then one input's fewer
    grads = [k for k, x in enumerate(p.inputs) if x.grad]
    if grads:
        out.append(replace(p, inputs=tuple(replace(x, grad=False) for x in p.inputs)))
        if len(grads) > 1:
            out += [replace(p, inputs=tuple(replace(x, grad=False) if j == k else x for j, x in enumerate(p.inputs)))
                    for k in grads]
    vals = eval_vars(p)
    if vals is not None:
        by_size = _dims_of(p)
        for k, op in enumerate(p.ops):
            later = p.ops[k + 1:]
            if not later and op.var in p.outputs:
                continue
            t = vals[op.var]
            # a fresh input in place of this value (drops everything it was computed from)
            shape = tuple(by_size.get(int(s)) for s in t.shape)
            if all(s is not None for s in shape):
                dtype = str(t.dtype).removeprefix("torch.")
                name = f"x{len(p.inputs)}"
                kind = "bool" if dtype == "bool" else "randint" if not t.is_floating_point() else "randn"
                if dtype not in ("int8", "int16", "uint8"):
                    new_in = Input(name, shape, dtype, kind, grad=bool(grads) and t.is_floating_point())
                    out.append(_replace_value(p, k, name, extra_input=new_in))
            # an operand of the same shape and dtype in place of this value
            text = "\n".join(op.lines)
            names = [x.name for x in p.inputs] + [o.var for o in p.ops[:k]]
            for n in sorted(names, key=lambda n: not _uses(text, n)):
                u = vals[n]
                if _uses(text, n) and u.shape == t.shape and u.dtype == t.dtype:
                    out.append(_replace_value(p, k, n))
                    break
    # fewer options
    for key in p.options:
        out.append(replace(p, options={k: v for k, v in p.options.items() if k != key}))
    return out


def _replace_value(p: Program, k: int, new: str, extra_input: Input | None = None) -> Program:
    var = p.ops[k].var
    ops = list(p.ops[:k]) + [Op(o.var, tuple(_subst(line, var, new) for line in o.lines)) for o in p.ops[k + 1:]]
    outputs = tuple(new if o == var else o for o in p.outputs)
    inputs = p.inputs + ((extra_input,) if extra_input else ())
    return replace(p, ops=tuple(ops), inputs=inputs, outputs=outputs)


def _shrinks(p: Program) -> list[Program]:
    out = []
    for d, v in p.dims.items():
        for s in [1, 2, 3, 5, 7, 13, 16, 31, 64]:
            if s < v:
                out.append(replace(p, dims={**p.dims, d: s}))
    return out


def minimize(p: Program, kind: str, signature: str, budget_s: float = 300.0, max_evals: int = 200,
             timeout: float | None = 120.0, log: Callable[[str], None] | None = None) -> tuple[Program, Outcome]:
    """Greedy: take the first smaller program that fails the same way, until none does."""
    t0 = time.monotonic()
    evals = 0
    best = p
    best_outcome = run_program(p, timeout)
    seen = {render_core(p)}

    def fails(q: Program) -> Outcome | None:
        nonlocal evals
        q = _rename_inputs(prune(q))
        src = render_core(q)
        if src in seen:
            return None
        seen.add(src)
        evals += 1
        o = run_program(q, timeout)
        same = o.kind == kind and (kind != "crash" or o.signature == signature)
        return o if same else None

    progress = True
    while progress and evals < max_evals and time.monotonic() - t0 < budget_s:
        progress = False
        for gen in (_candidates, _shrinks):
            for q in gen(best):
                if evals >= max_evals or time.monotonic() - t0 >= budget_s:
                    break
                o = fails(q)
                if o is not None:
                    best, best_outcome, progress = _rename_inputs(prune(q)), o, True
                    if log:
                        log(f"  minimized to {len(best.ops)} ops, dims {best.dims}")
                    break
            if progress:
                break
    return best, best_outcome


def reproducer(p: Program, outcome: Outcome, found_seed: int) -> str:
    detail = outcome.detail.strip().splitlines()
    head = "\n".join(detail[:8]) if outcome.kind == "mismatch" else "\n".join(detail[:1] + detail[-4:])
    head = head.replace('"""', "'''").replace("\\", "\\\\")
    bug = (detail[0] if detail else outcome.kind).replace('"', "'").replace("\\", "\\\\")[:160]
    return f'''"""flashlight fuzz reproducer: {outcome.kind} (seed {found_seed}).

Found by ``python -m fuzz --seeds {found_seed}:{found_seed + 1}`` (generator version
{GENERATOR_VERSION}), then minimized.
Run ``python {{this file}}``: ``check()`` raises AssertionError while flashlight differs from eager.

{head}
"""

import sys
from pathlib import Path

import torch

_ROOT = Path(__file__).resolve().parents[2]
if (_ROOT / "flashlight" / "__init__.py").exists():
    sys.path.insert(0, str(_ROOT))  # the checkout this file is in: its fuzzer, and its flashlight first

from fuzz import check_program  # noqa: E402

# Open: the bug as found. A fixed bug's reproducer says FIXED = True and tests/test_fuzz.py
# then requires it to pass.
BUG = "{outcome.kind}: {bug}"
FIXED = False

{render_core(p)}

def check():
    check_program(prog, make_inputs, OPTIONS{', strict_fallbacks=True' if outcome.signature.startswith('fallback:') else ''})


if __name__ == "__main__":
    check()
    print("ok: flashlight matches eager")
'''

# }}}


# {{{ campaigns

@dataclass
class Summary:
    counts: Counter = field(default_factory=Counter)
    fallback_programs: int = 0
    fallback_reasons: Counter = field(default_factory=Counter)
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    programs: int = 0
    families: Counter = field(default_factory=Counter)  # (tag, outcome): programs (see :func:`tags`)

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
        for f in self.failures:
            lines.append(f"{f['kind']}: seed {f['seed']} [{f['signature']}] {f['detail'][:150]!r}"
                         + (f" -> {f['reproducer']}" if f.get("reproducer") else ""))
        return "\n".join(lines)


def _fallback_reason(op: str, why: str) -> str:
    op = re.sub(r"program \S+ \(\d+ ops\)", "program (N ops)", op)
    why = re.sub(r"\d+", "N", why.splitlines()[0] if why else "")[:100]
    return f"{op}: {why}"


def parse_seeds(text: str) -> range:
    if ":" in text:
        a, b = text.split(":")
        return range(int(a), int(b))
    return range(int(text), int(text) + 1)


def campaign(seeds: range, time_budget: float | None = None, out: Path | None = None, minimize_failures: bool = True,
             timeout: float | None = 120.0, max_minimize: int = 8, jsonl: Path | None = None,
             verbose: bool = False, reset_every: int = 25) -> Summary:
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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_FUZZER_DIR.parent),
                                                                      os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="flashlight-fuzz-") as tmp:
        # beside the merged file if there is one: a killed campaign leaves its records behind
        base = Path(f"{jsonl}.part") if jsonl is not None else Path(tmp) / "part"
        parts = [Path(f"{base}{k}") for k in range(jobs)]
        children = []
        for k, part in enumerate(parts):
            sub = seeds[k * share:(k + 1) * share]
            if len(sub):
                cmd = [sys.executable, "-m", "fuzz", "--seeds", f"{sub.start}:{sub.stop}", "--jsonl", str(part), *own]
                children.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env))
        for c in children:
            c.wait()
        lines = [line for part in parts if part.exists() for line in part.read_text().splitlines()]
        if jsonl is not None:
            with open(jsonl, "a") as f:
                f.writelines(line + "\n" for line in lines)
            for part in parts:
                part.unlink(missing_ok=True)
    return summarize([json.loads(line) for line in lines], time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
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
    global STRICT_FALLBACKS
    STRICT_FALLBACKS = args.fail_on_compile_error
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
    return 1 if s.counts["mismatch"] or s.counts["crash"] else 0

# }}}
