"""Attention-shaped starts of programs: a hand-written ``softmax(q @ k^T * c [+ bias | softcap |
ALiBi] [masked]) @ v``, or a call of ``F.scaled_dot_product_attention`` with a random
combination of its arguments. :meth:`Gen.generate` (``generator.py``) starts a program with
the call for 18% of its draws and with attention by hand for 26% (never an integer program);
ordinary op families follow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .gen_operands import DIM_NAMES, Reject
from .gen_ops import GenOps
from .program import MAX_NUMEL

SDPA = "torch.nn.functional.scaled_dot_product_attention"


@dataclass(frozen=True)
class SdpaShape:
    """The dimensions of an SDPA call (dimension expressions, ``"1"`` for size one) and its
    rank: 2 (``[S, D]``), 3 (``[H, S, D]``) or 4 (``[B, H, S, D]``)."""
    rank: int
    gqa: bool     # enable_gqa=True: fewer key/value heads than query heads
    hq: int       # query heads
    hk: int       # key/value heads (hq is a multiple of it)
    sq: str       # query length
    sk: str       # key length
    d: str        # q/k head width
    dv: str       # v head width
    h: str        # hq as a dimension expression
    hkv: str      # hk as a dimension expression
    b: str        # batch

    @property
    def lead(self) -> tuple[str, ...]:
        """q's dimensions before [S_q, D]."""
        return (self.b, self.h) if self.rank == 4 else (self.h,) if self.rank == 3 else ()

    @property
    def lead_kv(self) -> tuple[str, ...]:
        """k's and v's dimensions before [S_k, D]."""
        return (self.b, self.hkv) if self.rank == 4 else (self.hkv,) if self.rank == 3 else ()


class GenAttention(GenOps):
    """Programs that start as attention: :meth:`attention` (by hand), :meth:`sdpa` (the call)."""

    def attention(self) -> None:
        """``softmax(q @ k^T [* c] [+ bias | tanh softcap | ALiBi] [masked]) [@ v]`` over optional
        batch dimensions; the mask is a document mask (data-dependent) or one of
        :meth:`fam_mask`'s, the softmax sometimes in float32 or by hand (``exp(s - max)``)."""
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

    def sdpa(self) -> None:
        """A call of ``F.scaled_dot_product_attention`` with a random combination of its arguments:
        rank 2, 3 or 4; ``attn_mask`` None, boolean or float (an input, an ``arange`` band, a bias
        or zeros with ``-inf`` where a boolean input says no), in shapes that broadcast over some
        batch dimensions ([S_q, S_k], [1, S_k], [S_q, 1], [B, 1, 1, S_k], [H, S_q, S_k], full, ...);
        ``is_causal`` (only without a mask, as PyTorch requires); ``scale``; ``enable_gqa`` with
        fewer key/value heads; S_q != S_k, D_v != D. Masks may leave rows without any key (eager
        gives 0 there). q, k, v are inputs, one input (self-attention), or projections of one
        input split into heads. ``dropout_p`` is 0 (anything else is random)."""
        self.max_dims = len(DIM_NAMES)
        shape = self._sdpa_shape()
        q, k, v = self._sdpa_qkv(shape)
        mask = self._sdpa_mask(shape)
        args = self._sdpa_args(shape, q, k, v, mask)
        out = self.emit((f"{{v}} = {SDPA}({', '.join(args)})",))
        if shape.rank == 4 and self.rng.random() < 0.3:  # heads merged again
            out = self.emit((f"{{v}} = {out}.transpose(1, 2).flatten(-2)",))
        self.keep = out

    def _sdpa_shape(self) -> SdpaShape:
        """The call's dimensions, drawn until q, k, v and the scores fit (at most 30 times, each
        from no dimensions at all)."""
        for _ in range(30):
            self.dims = {}
            self.ns = {"torch": torch, "g": self.g}
            shape = self._draw_sdpa_shape()
            if shape is not None and self._sdpa_fits(shape):
                return shape
        raise Reject("no SDPA shape fits")

    def _draw_sdpa_shape(self) -> SdpaShape | None:
        """One draw of the call's dimensions; ``None`` when the dimension names run out."""
        rng = self.rng
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
            return None
        return SdpaShape(rank, gqa, hq, hk, sq, sk, d, dv, h, hkv, b)

    def _sdpa_fits(self, s: SdpaShape) -> bool:
        """q and the scores (or the output, if wider), k and v within :data:`MAX_NUMEL` elements."""
        nq, nk = math.prod(map(self.size, s.lead)), math.prod(map(self.size, s.lead_kv))
        widest = max(self.size(s.d), self.size(s.dv))
        return max(nq * self.size(s.sq) * max(self.size(s.sk), widest), nk * self.size(s.sk) * widest) <= MAX_NUMEL

    def _sdpa_qkv(self, s: SdpaShape) -> tuple[str, str, str]:
        """q, k and v: one input (self-attention), projections of one input split into heads, or
        three inputs (q sometimes scaled or squashed first)."""
        rng, dt = self.rng, self.float_dtype
        sq, sk, d, dv, h, b = s.sq, s.sk, s.d, s.dv, s.h, s.b
        mode = rng.random()
        if sq == sk and d == dv and s.hq == s.hk and mode < 0.15:  # self-attention on one input
            q = k = v = self.new_input(s.lead + (sq, d), dt)
        elif s.rank == 4 and s.hq == s.hk and sq == sk and mode < 0.3:  # projections split into heads
            e = self.new_dim(rng.choice([3, 5, 8, 16]))
            x = self.new_input((b, sq, e), dt)
            q, k, v = (self.emit((f"{{v}} = ({x} @ {self.new_input((e, f'{h}*{w}'), dt)})"
                                  f".unflatten(-1, ({h}, {w})).transpose(1, 2)",)) for w in (d, d, dv))
        else:
            q, k, v = self.new_input(s.lead + (sq, d), dt), self.new_input(s.lead_kv + (sk, d), dt), \
                self.new_input(s.lead_kv + (sk, dv), dt)
            if rng.random() < 0.15:
                q = self.emit((rng.choice([f"{{v}} = {q} * {self.const()}", f"{{v}} = torch.tanh({q})"]),))
        return q, k, v

    def _sdpa_mask(self, s: SdpaShape) -> str | None:
        """``attn_mask`` (more often than not; else ``None``), in a shape that broadcasts: a
        boolean input, an ``arange`` band, an additive float bias, or 0 and ``-inf`` where a
        boolean input says yes and no."""
        rng, dt = self.rng, self.float_dtype
        sq, sk, h, b = s.sq, s.sk, s.h, s.b
        if not rng.random() < 0.55:
            return None
        shapes = [(sq, sk), (sq, sk), ("1", sk), (sq, "1"), s.lead + (sq, sk)]
        if s.rank == 4:
            shapes += [(b, "1", "1", sk), (b, "1", sq, sk), (h, sq, sk), ("1", h, "1", sk)]
        elif s.rank == 3:
            shapes += [(h, "1", sk)]
        shape = rng.choice(shapes)
        kind = rng.choice(["bool", "bool", "band", "float", "float_inf", "float_inf"])
        if kind == "bool":
            return self.new_input(shape, "bool")
        if kind == "band":
            return self._sdpa_band(sq, sk, shape)
        if kind == "float":  # an additive bias
            return self.new_input(shape, dt)
        # -inf where a boolean input says no
        m = self.new_input(shape, "bool")
        if rng.random() < 0.5:
            return self.emit((f'{{v}} = torch.where({m}, 0.0, float("-inf")).to(torch.{dt})',))
        return self.emit((f'{{v}} = {self.new_input(shape, dt)}.masked_fill(~{m}, float("-inf"))',))

    def _sdpa_band(self, sq: str, sk: str, shape: tuple[str, ...]) -> str:
        """A boolean mask of where to attend, from ``arange`` (an offset below 0 leaves the first
        rows without a key), sometimes and-ed with a boolean input of this shape."""
        rng = self.rng
        i, j = f"torch.arange({sq})[:, None]", f"torch.arange({sk})[None, :]"
        cond = rng.choice([f"{j} <= {i} + {rng.choice([-2, -1, 0, 1])}",
                           f"({i} - {j}).abs() <= {rng.choice([0, 1, 2])}",
                           f"{j} <= {i} + ({sk} - {sq})", f"{j} >= {i}"])
        if rng.random() < 0.3:
            cond = f"({cond}) & {self.new_input(shape, 'bool')}"
        return self.emit((f"{{v}} = {cond}",))

    def _sdpa_args(self, s: SdpaShape, q: str, k: str, v: str, mask: str | None) -> list[str]:
        """The call's arguments: q, k, v, the mask (positional or ``attn_mask=``), and some of
        ``dropout_p=0.0``, ``is_causal`` (True only without a mask), ``scale``, ``enable_gqa``."""
        rng = self.rng
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
        if s.gqa or (s.rank >= 3 and rng.random() < 0.1):
            args.append("enable_gqa=True")
        return args
