"""Lifted values: what an FX tensor node becomes during lifting.

A :class:`Value` is an IR expression over *placeholder* iterators ``_p0 .. _p{n-1}``, one per
logical dimension: element ``[x0, ..., xn-1]`` of the value is the expression with the
placeholders replaced by the ``x``. A tensor input is ``q[_p0,_p1,_p2,_p3]``; a view of it
changes only the index expressions (``transpose`` swaps them, ``view`` splits or merges them
with floor division and modulo), so views never create statements or copies.

.. autoclass:: Value
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from flashlight.frontend.unsupported import Unsupported
from flashlight.ir import expr as E
from flashlight.ir.expr import Expr, Iter

PLACEHOLDER = "_p"

# A dimension: a size, or a size parameter of the program (a length that varies between calls)
Size = Union[int, str]
# what index simplification may assume of an index below a size parameter: it is not bounded
UNBOUNDED = 2**62


def index_ranges(names: Sequence[str], sizes: Sequence[Size]) -> dict[str, tuple[int, int]]:
    """The range of each index below its size, for index simplification."""
    return {x: (0, max(n - 1, 0) if isinstance(n, int) else UNBOUNDED) for x, n in zip(names, sizes)}


def placeholder(k: int) -> Iter:
    return Iter(f"{PLACEHOLDER}{k}")


def placeholders(n: int) -> tuple[Iter, ...]:
    return tuple(placeholder(k) for k in range(n))


@dataclass(frozen=True)
class Value:
    expr: Expr
    shape: tuple[Size, ...]
    dtype: str

    @property
    def rank(self) -> int:
        return len(self.shape)

    def at(self, idx: Sequence[Expr]) -> Expr:
        """The element at ``idx`` (one index expression per dimension)."""
        assert len(idx) == self.rank, (idx, self.shape)
        return E.substitute(self.expr, {f"{PLACEHOLDER}{k}": x for k, x in enumerate(idx)})

    def reindex(self, shape: Sequence[Size], idx: Sequence[Expr]) -> Value:
        """A view of shape ``shape`` whose element ``p`` is this value's element ``idx(p)``."""
        shape = tuple(s if isinstance(s, str) else int(s) for s in shape)
        ranges = index_ranges([placeholder(k).name for k in range(len(shape))], shape)
        return Value(E.simplify_index(self.at(idx), ranges), shape, self.dtype)

    # {{{ view operations

    def permute(self, dims: Sequence[int]) -> Value:
        dims = [d % self.rank for d in dims]
        idx: list[Expr] = [E.index(0)] * self.rank
        for k, d in enumerate(dims):
            idx[d] = placeholder(k)
        return self.reindex([self.shape[d] for d in dims], idx)

    def transpose(self, a: int, b: int) -> Value:
        dims = list(range(self.rank))
        a, b = a % max(self.rank, 1), b % max(self.rank, 1)
        dims[a], dims[b] = dims[b], dims[a]
        return self.permute(dims)

    def expand(self, sizes: Sequence[int]) -> Value:
        n, r = len(sizes), self.rank
        shape = [self.shape[k - (n - r)] if s == -1 else s for k, s in enumerate(sizes)]
        idx = []
        for a in range(r):
            k = a + n - r
            idx.append(E.index(0) if self.shape[a] == 1 and shape[k] != 1 else placeholder(k))
        return self.reindex(shape, idx)

    def unsqueeze(self, dim: int) -> Value:
        dim = dim % (self.rank + 1)
        idx = [placeholder(k if k < dim else k + 1) for k in range(self.rank)]
        return self.reindex(self.shape[:dim] + (1,) + self.shape[dim:], idx)

    def squeeze(self, dims: Sequence[int] | None = None) -> Value:
        if dims is None:
            dims = [k for k, s in enumerate(self.shape) if s == 1]
        drop = {d % max(self.rank, 1) for d in dims if self.shape[d % max(self.rank, 1)] == 1}
        idx, shape, k = [], [], 0
        for a, s in enumerate(self.shape):
            if a in drop:
                idx.append(E.index(0))
            else:
                idx.append(placeholder(k))
                shape.append(s)
                k += 1
        return self.reindex(shape, idx)

    def slice(self, dim: int, start: int | None, end: int | None, step: int = 1) -> Value:
        dim = dim % self.rank
        n = self.shape[dim]
        if isinstance(n, str):  # a varying length: only the whole of it (``x[:, :]``) is a view we can name
            if (start or 0) == 0 and (end is None or end >= UNBOUNDED) and step == 1:
                return self
            raise Unsupported(f"a slice {start}:{end}:{step} of the varying size {n}")
        start = 0 if start is None else (start + n if start < 0 else start)
        end = n if end is None else (end + n if end < 0 else end)
        start, end = min(max(start, 0), n), min(max(end, 0), n)
        size = max(0, (end - start + step - 1) // step)
        idx = [placeholder(k) for k in range(self.rank)]
        idx[dim] = E.add(E.mul(E.index(step), placeholder(dim)), E.index(start))
        return self.reindex(self.shape[:dim] + (size,) + self.shape[dim + 1:], idx)

    def select(self, dim: int, i: int) -> Value:
        dim = dim % self.rank
        i = i + self.shape[dim] if i < 0 else i
        idx = [placeholder(k if k < dim else k - 1) for k in range(self.rank)]
        idx[dim] = E.index(i)
        return self.reindex(self.shape[:dim] + self.shape[dim + 1:], idx)

    def reshape(self, sizes: Sequence[Size]) -> Value:
        if any(isinstance(s, str) for s in (*self.shape, *sizes)):
            shape = tuple(sizes)
            return self.reindex(shape, _symbolic_reshape_index(self.shape, shape))
        sizes = list(sizes)
        numel = 1
        for s in self.shape:
            numel *= s
        if -1 in sizes:
            known = 1
            for s in sizes:
                if s != -1:
                    known *= s
            sizes[sizes.index(-1)] = numel // known if known else 0
        shape = tuple(int(s) for s in sizes)
        return self.reindex(shape, _reshape_index(self.shape, shape))

    # }}}


def _reshape_index(src: tuple[int, ...], dst: tuple[int, ...]) -> list[Expr]:
    """Index into ``src`` for placeholder indices of ``dst``, grouping dims of equal products.

    Within a group, the destination indices are linearised and the source indices recovered
    by floor division and modulo; size-one dimensions index at 0.
    """
    idx: list[Expr] = [E.index(0)] * len(src)
    i = j = 0
    while i < len(src) or j < len(dst):
        # skip size-1 dims on either side: they carry no information
        if i < len(src) and src[i] == 1:
            i += 1
            continue
        if j < len(dst) and dst[j] == 1:
            j += 1
            continue
        if i >= len(src) or j >= len(dst):
            break
        gi, gj = [i], [j]
        ps, pd = src[i], dst[j]
        while ps != pd:
            if ps < pd:
                i += 1
                gi.append(i)
                ps *= src[i]
            else:
                j += 1
                gj.append(j)
                pd *= dst[j]
        lin: Expr = E.index(0)
        for d in gj:
            lin = E.add(E.mul(lin, E.index(dst[d])), placeholder(d))
        stride = ps
        for d in gi:
            stride //= src[d]
            x = lin if stride == 1 else E.floordiv(lin, stride)
            idx[d] = x if d == gi[0] else E.mod(x, src[d])
        i, j = gi[-1] + 1, gj[-1] + 1
    return idx


def _symbolic_reshape_index(src: tuple[Size, ...], dst: tuple[Size, ...]) -> list[Expr]:
    """:func:`_reshape_index` where some sizes are parameters: each parameter must stay a
    dimension of its own, in order (``[1, H, S, D] -> [H, S, D]``), and the sizes between two
    of them regroup as in a reshape of known sizes. Merging a parameter with another dimension
    would need division by a size, which is not affine."""
    def symbols(shape: tuple[Size, ...]) -> list[int]:
        return [k for k, s in enumerate(shape) if isinstance(s, str)]

    ks, kd = symbols(src), symbols(dst)
    if [src[k] for k in ks] != [dst[k] for k in kd]:
        raise Unsupported(f"a reshape from {list(src)} to {list(dst)} merges or splits a size parameter")
    idx: list[Expr] = [E.index(0)] * len(src)
    bounds = list(zip([-1] + ks, ks + [len(src)], [-1] + kd, kd + [len(dst)]))
    for a, b, c, d in bounds:
        seg_src, seg_dst = src[a + 1:b], dst[c + 1:d]
        n_src = n_dst = 1
        for x in seg_src:
            n_src *= x  # type: ignore[operator]
        for x in seg_dst:
            n_dst *= x  # type: ignore[operator]
        if n_src != n_dst:
            raise Unsupported(f"a reshape from {list(src)} to {list(dst)} moves elements across a size parameter")
        shift = {placeholder(k).name: placeholder(k + c + 1) for k in range(len(seg_dst))}
        for k, x in enumerate(_reshape_index(seg_src, seg_dst)):  # type: ignore[arg-type]
            idx[a + 1 + k] = E.substitute(x, shift)
        if b < len(src):
            idx[b] = placeholder(d)
    return idx
