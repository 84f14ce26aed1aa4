"""Shrinking a failing program while it fails the same way (:func:`minimize`), and writing it as
a runnable reproducer (:func:`reproducer`, the files of ``fuzz/corpus``).

Greedy: take the first smaller program (:func:`_candidates`, most ambitious first, then
:func:`_shrinks` of dimensions) that fails with the same kind of outcome (a crash with the same
signature), until none does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from .generator import GENERATOR_VERSION
from .program import Input, Op, Program, eval_vars, prune, render_core, subst, uses
from .run import Outcome, run_program


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
            lines = [subst(line, a, t) for line in lines]
        for a, t in tmp.items():
            lines = [line.replace(t, mapping[a]) for line in lines]
        ops.append(Op(op.var, tuple(lines)))
    outs = tuple(mapping.get(o, o) for o in p.outputs)
    return replace(p, inputs=tuple(replace(x, name=mapping[x.name]) for x in p.inputs), ops=tuple(ops), outputs=outs)


def _dims_of(p: Program) -> dict[int, str]:
    """A dimension expression for each size the program can name (a dimension, a product of two, 1)."""
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
            for n in sorted(names, key=lambda n: not uses(text, n)):
                u = vals[n]
                if uses(text, n) and u.shape == t.shape and u.dtype == t.dtype:
                    out.append(_replace_value(p, k, n))
                    break
    # fewer options
    for key in p.options:
        out.append(replace(p, options={k: v for k, v in p.options.items() if k != key}))
    return out


def _replace_value(p: Program, k: int, new: str, extra_input: Input | None = None) -> Program:
    """``p`` with op ``k``'s value read as ``new`` (an input, or ``extra_input``, added) after it."""
    var = p.ops[k].var
    ops = list(p.ops[:k]) + [Op(o.var, tuple(subst(line, var, new) for line in o.lines)) for o in p.ops[k + 1:]]
    outputs = tuple(new if o == var else o for o in p.outputs)
    inputs = p.inputs + ((extra_input,) if extra_input else ())
    return replace(p, ops=tuple(ops), inputs=inputs, outputs=outputs)


def _shrinks(p: Program) -> list[Program]:
    """``p`` with one dimension smaller (to 1, 2, 3, 5, ...)."""
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
    """The source of a reproducer script for ``fuzz/corpus``: what went wrong, the program, and
    ``check()`` (:func:`fuzz.check_program`), which raises while flashlight differs from eager."""
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
