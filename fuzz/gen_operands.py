"""The generator's state, and what its op families draw from: dimensions, inputs, operands.

:class:`GenOperands` holds a program as it is drawn (named dimensions, inputs, ops) together with
the eager value of everything so far, so that each new op is drawn to fit its operands' shapes
and dtypes. :meth:`GenOperands.emit` runs an op's lines and adds it; :meth:`GenOperands.attempt`
undoes a draw that does not fit (:class:`Reject`) or that eager refuses. The op families
(``gen_ops.py``), attention-shaped starts (``gen_attention.py``) and the whole program
(``generator.py``) build on it.

Every random choice is a call of ``self.rng`` (``random.Random(seed)``) or of the seeded
``torch.Generator`` ``self.g``, in a fixed order: changing that order changes what seeds make
(bump ``GENERATOR_VERSION`` in ``generator.py``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import torch

from .program import MAX_NUMEL, Input, Op, input_line

SIZES = [1, 2, 3, 5, 7, 13, 17, 31]
SIZE_WEIGHTS = [1, 2, 3, 3, 3, 3, 2, 2]
BIG_SIZES = [64, 97]
DIM_NAMES = ["A", "B", "C", "D", "E", "F", "G", "H"]  # ordinary programs name at most 5 dimensions
FLOAT_CONSTS = ["0.5", "2.0", "-1.5", "0.125", "3.0", "-0.25", "10.0", "1e-3"]


class Reject(Exception):
    """This draw of an op does not fit: try another."""


class GenOperands:
    """A program being drawn from a seed: dimensions, inputs, ops and their eager values."""

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

    def new_dim(self, size: int | None = None, big: bool = False) -> str:
        """A dimension of this size (drawn if not given; ``big``: 64 or 97): usually one that exists,
        else a new name, else (the names used up) the nearest that exists."""
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
        """A dimension that exists, or a new one (rarely a big one: several tiles)."""
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
        """A shape as dimension expressions."""
        return tuple(self.sym(int(s)) for s in shape)

    def new_input(self, shape: tuple[str, ...], dtype: str | None = None, kind: str | None = None) -> str:
        """A new input of this shape (dimension expressions) and dtype (the program's float dtype by
        default), drawn as ``kind`` says (see :class:`Input`); its name."""
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
        """``ndim`` dimensions, a few of size one."""
        return tuple("1" if self.rng.random() < 0.08 else self.any_dim() for _ in range(ndim))

    def val(self, name: str) -> torch.Tensor:
        """The eager value of an input or op variable."""
        return self.ns[name]

    def pick(self, pred: Callable[[torch.Tensor], bool], recent: float = 0.7) -> str:
        """An operand for which ``pred`` holds: the latest such value with probability ``recent``
        (chains of ops), else any."""
        cands = [n for n in self.pool if pred(self.val(n))]
        if not cands:
            raise Reject("no operand")
        if self.rng.random() < recent:
            return cands[-1]
        return self.rng.choice(cands)

    def const(self) -> str:
        """A float literal."""
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
        """An axis of ``t``, sometimes counted from the end."""
        d = self.rng.randrange(t.dim())
        return d - t.dim() if self.rng.random() < 0.4 else d

    def _bcast(self, n: str, t: torch.Tensor) -> bool:
        """Whether the value ``n`` broadcasts to ``t``'s shape."""
        try:
            return torch.broadcast_shapes(self.val(n).shape, t.shape) == t.shape
        except RuntimeError:
            return False

    def emit(self, lines: tuple[str, ...]) -> str:
        """Run an op's lines (``{v}`` is its variable, the next ``tN``) and add it; :class:`Reject`
        unless it makes a tensor of at most :data:`MAX_NUMEL` elements."""
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
        """:meth:`emit` what ``make`` draws; where that is rejected or eager raises, ``None``, with the
        inputs, dimensions and torch generator as they were before."""
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

    def exact_dim(self, size: int) -> str:
        """A dimension of exactly this size (``"1"`` for 1): SDPA's head counts must divide."""
        if size == 1:
            return "1"
        name = self.new_dim(size)
        if self.dims[name] != size:
            raise Reject("no dimension name left")
        return name

    def size(self, expr: str) -> int:
        """The size a dimension expression stands for."""
        return eval(expr, {}, dict(self.dims))
