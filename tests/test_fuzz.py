"""The differential fuzzer (``fuzz/``, ``python -m fuzz``) in CI, and its reproducers as regression tests.

* A short campaign over fixed seeds must find no mismatch and no crash (about 40 programs, well
  under a minute on two cores; the time budget stops it early on a slow machine).
* Every reproducer in ``fuzz/corpus`` is a test: an open bug (``FIXED = False``) is a strict xfail
  whose reason is the bug, so fixing the compiler turns it into an unexpected pass, and the
  reproducer is then marked ``FIXED = True`` and must keep passing.
* The fuzzer's own parts (generator, comparison, minimizer, reproducer files) are checked without
  compiling anything, except one round trip through a written reproducer.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import fuzz  # the repository root is on sys.path: pythonpath in pyproject.toml's pytest options

CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus"

# Seeds that CI runs. These programs pass today; a change that breaks one of them is a regression.
CI_SEEDS = range(1000, 1040)
CI_TIME_BUDGET = 60.0


# {{{ the campaign

def test_fuzz_campaign_finds_no_mismatch_or_crash():
    s = fuzz.campaign(CI_SEEDS, time_budget=CI_TIME_BUDGET, out=None, minimize_failures=False, timeout=60.0)
    assert s.programs >= 10, f"only {s.programs} programs ran in {CI_TIME_BUDGET} s"
    assert not s.counts["mismatch"] and not s.counts["crash"], s.text()


def test_jobs_split_the_seeds_and_merge_the_records(tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    assert fuzz.main(["--seeds", "0:3", "--jobs", "2", "--no-minimize", "--jsonl", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["seed"] for r in records) == [0, 1, 2]
    assert "programs: 3 in" in capsys.readouterr().out


def test_a_job_that_dies_is_reported_and_fails_the_campaign(tmp_path, capsys, monkeypatch):
    """A child killed by a signal writes nothing; its share must not vanish from the summary."""
    monkeypatch.setattr(sys, "executable", "/bin/false")  # each child exits at once, with code 1
    assert fuzz.main(["--seeds", "0:4", "--jobs", "2", "--no-minimize", "--jsonl", str(tmp_path / "r.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "lost job: seeds 0:2 exited with code 1 after 0 programs" in out
    assert "lost job: seeds 2:4 exited with code 1 after 0 programs" in out

# }}}


# {{{ the reproducers

def _literal(path: Path, name: str, default: object) -> object:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    return default


def _reproducers() -> list:
    params = []
    for path in sorted(CORPUS.glob("*.py")):
        marks = []
        if not _literal(path, "FIXED", False):
            marks.append(pytest.mark.xfail(strict=True, raises=AssertionError, reason=str(_literal(path, "BUG", "open"))))
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params or [pytest.param(None, id="empty", marks=pytest.mark.skip(reason="no reproducers"))]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"fuzz_corpus_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", _reproducers())
def test_reproducer(path):
    _load(path).check()

# }}}


# {{{ the fuzzer's parts

def test_generator_is_deterministic_and_varied():
    texts = [fuzz.render_core(fuzz.generate(seed)) for seed in range(20)]
    assert texts == [fuzz.render_core(fuzz.generate(seed)) for seed in range(20)]
    assert len(set(texts)) == 20


def test_generated_programs_are_small_and_run_eagerly():
    for seed in range(60):
        p = fuzz.generate(seed)
        assert 1 <= len(p.ops) <= 8, seed
        vals = fuzz.eval_vars(p)
        assert vals is not None, f"seed {seed} does not run eagerly:\n{fuzz.render_core(p)}"
        assert all(v.numel() <= fuzz.MAX_NUMEL for v in vals.values()), seed


def test_generator_covers_the_op_families():
    text = "\n".join(fuzz.render_core(fuzz.generate(seed)) for seed in range(300))
    for needle in ["softmax", "log_softmax", "logsumexp", ".var(", ".amax(", ".amin(", ".mean(", ".sum(", " @ ",
                   "masked_fill", "torch.where", "% ", "torch.arange", "transpose", "permute", "float16", "bfloat16",
                   "int32", "< 0.5", "keepdim=True", "torch.exp", "torch.tanh", "torch.sigmoid", "clamp", "maximum",
                   'float("-inf")', "block_m", "flatten", "unsqueeze"]:
        assert needle in text, needle


def test_generator_makes_the_new_families():
    """SDPA calls, inputs that require grad, float64 programs and zero-size dimensions, each for
    some seeds of a small range (generator version 4), without compiling anything."""
    programs = [fuzz.generate(seed) for seed in range(200)]
    by_tag = {t: [p for p in programs if t in fuzz.tags(p)] for t in ("sdpa", "grad", "f64", "empty")}
    assert all(by_tag.values()), {t: len(ps) for t, ps in by_tag.items()}
    assert len(by_tag["sdpa"]) < 60 and len(by_tag["grad"]) < 70, "the new families crowd out the rest"
    sdpa = "\n".join(fuzz.render_core(p) for p in by_tag["sdpa"])
    for needle in ["attn_mask=", "is_causal=True", "enable_gqa=True", "scale=", 'float("-inf")', "< 0.5"]:
        assert needle in sdpa, needle
    for p in by_tag["grad"]:
        assert all(x.grad == x.dtype.startswith(("float", "bfloat")) for x in p.inputs), p.seed
        assert ".requires_grad_()" in fuzz.render_core(p)
    entirely64 = 0
    for p in by_tag["sdpa"] + by_tag["empty"] + by_tag["f64"]:
        vals = fuzz.eval_vars(p)
        assert vals is not None, f"seed {p.seed} does not run eagerly:\n{fuzz.render_core(p)}"
        if p in by_tag["empty"]:
            assert any(v.numel() == 0 for v in vals.values()), p.seed
        if p in by_tag["f64"]:
            entirely64 += all(v.dtype == torch.float64 for v in vals.values() if v.is_floating_point())
    assert entirely64, "no program computes in float64 throughout"


def _normalize(x, w):
    return torch.nn.functional.layer_norm(x, (x.shape[-1],)) * w


def test_gradient_check_catches_wrong_missing_and_extra_gradients():
    g = torch.Generator().manual_seed(5)
    inputs = (torch.randn(3, 7, generator=g).requires_grad_(), torch.randn(7, generator=g).requires_grad_())
    ref = fuzz.reference(_normalize, inputs)
    assert ref.grad and ref.labels == ["output 0", "gradient of input 0", "gradient of input 1"]
    (_, grads) = ref.ref
    assert all(float(gr.abs().max()) > 1e-2 for gr in grads)  # the cotangent is generic: not 0 through a norm
    fuzz.check_results(fuzz.with_grads(_normalize)(*inputs), ref, inputs)

    def doubled(x, w):  # the same outputs, twice the gradient of x
        y = torch.nn.functional.layer_norm(x, (x.shape[-1],))
        return (y.detach() + 2 * (y - y.detach())) * w

    def detached_w(x, w):  # no gradient for w
        return _normalize(x, w.detach())

    def blocked(x, w):  # no gradient for anything: the output does not require grad
        return _normalize(x, w).detach()

    for fn, why in [(doubled, "gradient of input 0 .*beyond"), (detached_w, "gradient of input 1: none"),
                    (blocked, "gradient of input 0: none")]:
        with pytest.raises(AssertionError, match=why):
            fuzz.check_results(fuzz.with_grads(fn)(*inputs), ref, inputs)

    ref_w = fuzz.reference(detached_w, inputs)  # eager has none, ours has one: an extra gradient
    with pytest.raises(AssertionError, match="gradient of input 1: a gradient, eager gives none"):
        fuzz.check_results(fuzz.with_grads(_normalize)(*inputs), ref_w, inputs)
    assert inputs[0].grad is None and inputs[1].grad is None  # runs use copies: nothing accumulates


def test_cotangent_is_fixed_and_exact_in_every_dtype():
    t = torch.empty(4, 5)
    c = fuzz.cotangent(t)
    assert c.shape == t.shape and bool((c != 0).all())
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert torch.equal(fuzz.cotangent(t.to(dtype)).double(), c.double())
    assert fuzz.cotangent(torch.empty(0, 3)).shape == (0, 3)


def test_compare_accepts_rounding_and_catches_differences():
    r = torch.tensor([1.0, float("nan"), float("-inf"), 3.0])
    fuzz.compare(r * (1 + 1e-6), r)
    fuzz.compare((r, r.bool()), (r, r.bool()))
    bad = [
        (torch.tensor([1.0, 0.0, float("-inf"), 3.0]), "NaN"),
        (torch.tensor([1.0, float("nan"), float("inf"), 3.0]), "infinities"),
        (torch.tensor([1.0, float("nan"), float("-inf"), 3.1]), "beyond"),
        (r.double(), "float64"),
        (r[None], "[1, 4]"),
        ((r,), "structure"),
    ]
    for out, why in bad:
        with pytest.raises(AssertionError, match=why.replace("[", r"\[")):
            fuzz.compare(out, r)
    with pytest.raises(AssertionError, match="differ"):
        fuzz.compare(torch.tensor([1, 2]), torch.tensor([1, 3]))


def test_compare_excuses_what_eager_gets_as_wrong():
    # an ill-conditioned output: eager's float32 is as far from the float64 value as ours
    ref64 = torch.tensor([1.0, 1e-3], dtype=torch.float64)
    ref = torch.tensor([1.0, 1.3e-3])
    fuzz.compare(torch.tensor([1.0, 0.8e-3]), ref, ref64)
    with pytest.raises(AssertionError):
        fuzz.compare(torch.tensor([1.0, 0.8e-3]), ref)


def _layer_norm_sum(x):  # fuzz seed 420676: exactly 0, and 4.5e-15 in float64
    return torch.nn.functional.layer_norm(x, (x.shape[-1],)).mean(0, keepdim=True).sum((1, 0), keepdim=True)


def test_compare_excuses_rounding_noise_where_eager_is_lucky():
    x = torch.rand((5, 64), generator=torch.Generator().manual_seed(420676)) + 0.5
    ref, ref64 = _layer_norm_sum(x), _layer_norm_sum(x.double())
    noise = fuzz.eager_noise(_layer_norm_sum, (x,))
    spread = max(float((n - ref).abs().max()) for n in noise)
    # eager's rows are 1e-5 off but happen to cancel; the spread needs layer_norm decomposed (its
    # mean rounded on its own shifts a whole row): perturbing only its outputs gives 1e-6
    assert abs(float(ref)) < 3e-7 and spread > 4e-6
    ours = torch.full_like(ref, 7.152557373046875e-06)  # flashlight's mean is sum/64, one ulp off
    with pytest.raises(AssertionError, match="beyond"):
        fuzz.compare(ours, ref, ref64)  # against eager's error alone
    fuzz.compare(ours, ref, ref64, noise=lambda: noise)
    with pytest.raises(AssertionError, match="rounding noise there"):
        fuzz.compare(torch.full_like(ref, 100 * spread), ref, ref64, noise=lambda: noise)


def test_compare_with_noise_still_catches_small_errors_in_ordinary_programs():
    def prog(x, w):
        return torch.softmax(x @ w, -1) * 3.0

    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(7, 13, generator=g), torch.randn(13, 5, generator=g))
    ref, ref64 = prog(*inputs), prog(*(x.double() for x in inputs))
    noise = lambda: fuzz.eager_noise(prog, inputs)
    for out in (ref * (1 + 1e-3), ref.index_put((torch.tensor(3), torch.tensor(2)), ref[3, 2] + 3e-4 * ref.max())):
        with pytest.raises(AssertionError, match="beyond"):
            fuzz.compare(out, ref, ref64, noise=noise)
    fuzz.compare(ref * (1 + 1e-6), ref, ref64, noise=lambda: pytest.fail("noise computed for a passing output"))


def test_eager_noise_perturbs_roundings_only_and_is_deterministic():
    x = torch.randn(64, generator=torch.Generator().manual_seed(1))
    exact = fuzz.eager_noise(lambda x: (x * 2.0).transpose(0, 0).amax(), (x,))
    assert all(torch.equal(n, (x * 2.0).amax()) for n in exact)  # exact ops are not rounded: no noise
    runs = fuzz.eager_noise(torch.exp, (x,))
    assert len(runs) == fuzz.NOISE_RUNS
    assert all(torch.equal(a, b) for a, b in zip(runs, fuzz.eager_noise(torch.exp, (x,))))
    moved = torch.stack([(n - x.exp()).abs() / x.exp() / torch.finfo(torch.float32).eps for n in runs])
    assert 0 < float(moved.max()) <= 1.5  # eps relative, then rounded to a neighbouring float


def test_compare_excuses_truncations_that_rounding_decides():
    # fuzz seed 406900: (t4 * 4).long() of a sum of -10000-masked log_softmax values (about -1.8e6)
    def prog(x):
        i, j = torch.arange(x.shape[-2])[:, None], torch.arange(x.shape[-1])[None, :]
        t = torch.log_softmax(x.masked_fill(((i - j) % 3 != 0) | (j > i), -10000.0), -1)
        return (t.sum((2, 3), keepdim=True) * 4).long()

    inputs = (torch.randn((5, 2, 13, 5), generator=torch.Generator().manual_seed(406900)),)
    casts = []
    ref, _ = fuzz.eager_with_dtypes(prog, inputs, casts)
    ref64, flipped = fuzz.reference64(prog, inputs, casts)
    near = ref.clone()  # float64 gives -1800141.92, 0.08 from -1800142; eager is 0.14 off elsewhere
    near[0, 1] -= 1
    fuzz.compare(near, ref, ref64, None, flipped)
    far = ref.clone()  # float64 gives -1800082.61 here: 0.39 from -1800083, beyond eager's error
    far[1, 1] -= 1
    with pytest.raises(AssertionError, match="differ"):
        fuzz.compare(far, ref, ref64, None, flipped)


def test_minimize_deletes_ops_and_shrinks_dims(monkeypatch):
    # a stand-in failure: any program with a log_softmax over a dimension of at least 3 "crashes"
    def fake_run(p, timeout=None):
        vals = fuzz.eval_vars(p)
        hit = vals is not None and any("log_softmax" in line for op in p.ops for line in op.lines) and \
            max(p.dims.values(), default=0) >= 3
        return fuzz.Outcome("crash", "boom", "X@y") if hit else fuzz.Outcome("ok")

    monkeypatch.setattr(fuzz.minimizer, "run_program", fake_run)  # where minimize looks it up
    p = fuzz.Program(7, {"A": 13, "B": 7}, (fuzz.Input("x0", ("A", "B"), "float32", "randn"),
                                            fuzz.Input("x1", ("B",), "float32", "randn")),
                     (fuzz.Op("t0", ("t0 = x0 * x1",)), fuzz.Op("t1", ("t1 = torch.tanh(t0)",)),
                      fuzz.Op("t2", ("t2 = torch.log_softmax(t1, dim=-1)",)), fuzz.Op("t3", ("t3 = t2.sum(0)",))),
                     ("t3", "t1"), {"block_m": 16})
    small, outcome = fuzz.minimize(p, "crash", "X@y")
    assert outcome.kind == "crash"
    assert len(small.ops) == 1 and "log_softmax" in small.ops[0].lines[0], fuzz.render_core(small)
    assert small.options == {} and len(small.inputs) == 1
    assert sorted(small.dims.values()) in ([3], [1, 3]), small.dims


def test_reproducer_file_runs(tmp_path):
    p = fuzz.Program(3, {"A": 5}, (fuzz.Input("x0", ("A", "A"), "float32", "randn"),),
                     (fuzz.Op("t0", ("t0 = torch.softmax(x0 * 0.5, dim=-1)",)),), ("t0",))
    path = tmp_path / "mismatch_3.py"
    path.write_text(fuzz.reproducer(p, fuzz.Outcome("mismatch", "output 0: made up"), 3))
    module = _load(path)
    assert module.BUG.startswith("mismatch: output 0") and module.FIXED is False
    module.check()  # this program is right: the check passes
    assert fuzz.render_core(replace(p)) in path.read_text()


def test_reproducer_compares_gradients(tmp_path):
    p = fuzz.Program(4, {"A": 5}, (fuzz.Input("x0", ("A", "A"), "float32", "randn", grad=True),),
                     (fuzz.Op("t0", ("t0 = torch.softmax(x0 * 0.5, dim=-1)",)),), ("t0",))
    path = tmp_path / "mismatch_4.py"
    path.write_text(fuzz.reproducer(p, fuzz.Outcome("mismatch", "gradient of input 0: made up"), 4))
    assert ".requires_grad_()" in path.read_text()
    module = _load(path)
    assert fuzz.wants_grad(module.make_inputs())
    module.check()  # right outputs and gradients: the check passes


def test_program_source_is_plain_python():
    p = fuzz.generate(11)
    ns = fuzz.materialize(p)
    inputs = ns["make_inputs"]()
    assert len(inputs) == len(p.inputs)
    out = ns["prog"](*inputs)
    assert isinstance(out, (torch.Tensor, tuple))
    assert math.prod(inputs[0].shape) <= fuzz.MAX_NUMEL

# }}}


def _variance_gap(x):  # fuzz seed 1120149: variances near 3e17 whose differences float32 cannot resolve
    v = torch.cat([x, torch.full((x.shape[0], 2), -1e9, dtype=x.dtype)], 1).var(1, keepdim=True)
    return (v - v.mean(0, keepdim=True)).to(torch.float16)


def test_compare_excuses_an_overflow_that_eager_noise_decides():
    x = torch.rand((17, 1), generator=torch.Generator().manual_seed(3))
    ref, ref64 = _variance_gap(x), _variance_gap(x.double())
    noise = fuzz.eager_noise(_variance_gap, (x,))
    # eager's variances come out equal (0 after the subtraction); float64's and a perturbed run's
    # differ by one float32 ulp of 3e17, which overflows float16
    ours = noise[0]
    assert not torch.isinf(ref).any() and torch.isinf(ref64).any() and torch.isinf(ours).any()
    fuzz.compare(ours, ref, ref64, noise=lambda: noise)
    with pytest.raises(AssertionError, match="infinities"):  # without eager's noise: a mismatch
        fuzz.compare(ours, ref, ref64)
    with pytest.raises(AssertionError, match="infinities"):  # an overflow no eager run shows
        fuzz.compare(torch.tensor([float("inf")]), torch.tensor([1.0]), torch.tensor([1.0]).double(),
                     noise=lambda: [torch.tensor([1.0])])


def test_compare_excuses_a_nan_that_eager_noise_decides():
    """Where a perturbed eager run puts its NaN where ours is (or has none where we have none),
    rounding decides the NaN (BH, ``fuzz/corpus/mismatch_9921422.py``); a NaN no run shows is a
    mismatch still."""
    ref, ref64 = torch.tensor([1.0, 2.0, float("nan")]), torch.tensor([1.0, 2.0, 3.0]).double()
    ours = torch.tensor([1.0, float("nan"), 3.0])
    runs = [torch.tensor([1.0, float("nan"), float("nan")]), torch.tensor([1.0, 2.0, 3.0])]
    fuzz.compare(ours, ref, ref64, noise=lambda: runs)
    with pytest.raises(AssertionError, match="NaN"):  # without eager's noise: a mismatch
        fuzz.compare(ours, ref, ref64)
    with pytest.raises(AssertionError, match="NaN"):  # a NaN no eager run shows
        fuzz.compare(ours, ref, ref64, noise=lambda: [torch.tensor([1.0, 2.0, float("nan")])])
