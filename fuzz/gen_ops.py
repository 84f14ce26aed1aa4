"""The generator's op families: each draws one op on earlier values, as a line of source.

A family (``fam_<name>``) picks its operands among the values so far, draws a form of the op and
returns its line with ``{v}`` for the new variable (or several lines: a mask builds its index
tensors first); :meth:`GenOps.step` draws the family, weighted by :data:`GenOps.FAMILIES`, more
integer and boolean logic after an integer or boolean value, and a softmax after a mask when the
mask asks for one.
"""

from __future__ import annotations

import torch

from .gen_operands import FLOAT_CONSTS, GenOperands, Reject


class GenOps(GenOperands):
    """The op families, and :meth:`step`: one op drawn from them."""

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

    def fam_compare(self) -> str:
        a = self.pick(lambda t: t.is_floating_point())
        b = self.partner(a)
        cmp = self.rng.choice([">", "<", ">=", "<=", "==", "!="])
        return self.rng.choice(["({a} {cmp} {b}).float()", "({a} {cmp} {b}).to({a}.dtype) * {a}",
                                "({a} {cmp} {b})"]).format(a=a, b=b, cmp=cmp)

    def _dims_arg(self, t: torch.Tensor) -> str:
        """A reduction's ``dim`` argument: one axis (often as a bare int) or a tuple of up to 3."""
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
        """An ``arange``-built mask over the last two axes, applied with a fill; a fill other than 0
        usually asks for a softmax next."""
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

    # the op families' weights; int and bool are drawn only after such a value (:meth:`step`)
    FAMILIES = {"index": 0.8, "composite": 0.8, "unary": 3.0, "binary": 4.0, "where": 1.2, "compare": 0.5, "reduce": 2.5, "softmax": 2.0,
                "matmul": 1.8, "layout": 1.5, "mask": 1.5, "fill": 0.6, "cast": 0.5, "int": 0.0, "bool": 0.0}

    def step(self) -> tuple[str, ...]:
        """One op's lines: the softmax a mask asked for, or a family drawn by weight (integer or
        boolean logic more likely after such a value)."""
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
