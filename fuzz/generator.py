"""The program generator: a seed makes one program (:func:`generate`, deterministic).

:class:`Gen` draws 2-8 ops (``gen_ops.py``), starting some programs as attention
(``gen_attention.py``), then picks the outputs and compile options, drops what no output needs,
and turns some programs into variants: a dimension of size 0, inputs that require grad (where
eager runs them). The package docstring (``fuzz/__init__.py``) lists what programs are made of.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from .gen_attention import GenAttention
from .gen_operands import Reject
from .gradients import wants_grad, with_grads
from .program import MAX_NUMEL, Program, prune, render_core, uses
from .quiet import quiet

# Bumped whenever the programs a seed makes change: a seed names a program only together with it.
GENERATOR_VERSION = 4


class Gen(GenAttention):
    """A seed's program: :meth:`generate` draws it all."""

    def generate(self) -> Program:
        """The whole program: a start (SDPA, attention by hand, or one or two inputs), ops up to a
        drawn count, outputs and options; what no output needs dropped; maybe a variant."""
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
            self._plain_start()
        tries = 0
        while len(self.ops) < n_ops and tries < 200:
            tries += 1
            self.attempt(self.step)
        if not self.ops:
            self.attempt(lambda: ("{v} = " + self.pool[-1] + " * 2",))
        outputs = self._outputs()
        options = self._options()
        p = Program(self.seed, dict(self.dims), tuple(self.inputs), tuple(self.ops), tuple(outputs), options,
                    tuple_out=len(outputs) == 1 and rng.random() < 0.1)
        if self.keep is not None and all(op.var != self.keep for op in prune(p).ops):  # no output needs it: one does
            p = replace(p, outputs=p.outputs + (self.keep,), tuple_out=False)
        return self._variant(prune(p))

    def _plain_start(self) -> None:
        """From nothing (whatever a failed start drew is dropped, the torch generator reseeded): one
        input of rank 0-4, and in an integer program an index-sized integer or boolean input."""
        rng = self.rng
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

    def _outputs(self) -> list[str]:
        """The last op's value, and maybe some values that nothing reads or an earlier value."""
        rng = self.rng
        outputs = [self.ops[-1].var]
        # values nothing reads are outputs too, some of them (the rest is dropped)
        text = "\n".join(line.split(" = ", 1)[-1] for op in self.ops for line in op.lines)  # what ops read
        leaves = [op.var for op in self.ops[:-1] if not uses(text, op.var)]
        rng.shuffle(leaves)
        outputs += leaves[:rng.choice([0, 1, 1, 2])]
        if len(outputs) == 1 and len(self.ops) > 1 and rng.random() < 0.15:
            outputs.append(rng.choice([op.var for op in self.ops[:-1]]))
        return outputs

    def _options(self) -> dict[str, Any]:
        """Compile options: small tiles (several, and partial ones, at these sizes), a small
        ``block_limit``, ``exact_roundings`` in a 16-bit program; often none."""
        rng = self.rng
        options: dict[str, Any] = {}
        r = rng.random()
        if r < 0.35:
            options["block_m"] = rng.choice([16, 32])
            options["block_n"] = rng.choice([16, 32])
        elif r < 0.5:
            options["block_limit"] = rng.choice([16, 32, 64])
        if self.flavor in ("f16", "bf16") and rng.random() < 0.3:
            options["exact_roundings"] = True
        return options

    def _variant(self, p: Program) -> Program:
        """``p``, sometimes with a dimension of size 0 and sometimes with inputs that require grad,
        each only where eager runs it."""
        rng = self.rng
        if rng.random() < 0.04:  # a dimension of size 0 (the first, in a random order, that eager accepts)
            names = sorted(p.dims)
            rng.shuffle(names)
            for name in names:
                q = replace(p, dims={**p.dims, name: 0})
                if _runs_eagerly(q):
                    p = q
                    break
        if rng.random() < 0.2 and any(is_float(x.dtype) for x in p.inputs):  # gradients too, where eager has them
            q = replace(p, inputs=tuple(replace(x, grad=is_float(x.dtype)) for x in p.inputs))
            if _runs_eagerly(q):
                p = q
        return p


def is_float(dtype: str) -> bool:
    """A floating-point dtype's name (``float32``, ``bfloat16``, ...)."""
    return dtype.startswith(("float", "bfloat"))


def _runs_eagerly(p: Program) -> bool:
    """The program and, if some input requires grad, its backward run eagerly."""
    ns: dict[str, Any] = {"torch": torch}
    try:
        with quiet():
            exec(compile(render_core(p), f"<fuzz seed {p.seed}>", "exec"), ns)
            inputs = ns["make_inputs"]()
            (with_grads(ns["prog"]) if wants_grad(inputs) else ns["prog"])(*inputs)
    except Exception:
        return False
    return True


def generate(seed: int) -> Program:
    """The program of this seed (deterministic)."""
    with quiet():
        return Gen(seed).generate()
