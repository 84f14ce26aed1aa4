"""A differential fuzzer: random small PyTorch programs, eager against ``flashlight.compile``.

``python -m fuzz --seeds 0:200 [--time-budget 60] [--out fuzz/corpus]``, from the repository root: the
fuzzer is a tool of the checkout, not part of the installed ``flashlight`` package.

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

Modules, in the order a program goes through them:

* ``program.py``: :class:`Program` (dimensions, inputs, ops as lines of source, outputs, options),
  its source (:func:`render_core`), its eager values, :func:`prune`.
* ``generator.py``: :func:`generate`, a seed's program, drawn by :class:`Gen` on top of
  ``gen_operands.py`` (the generator's state: dimensions, inputs, operands), ``gen_ops.py`` (the
  op families) and ``gen_attention.py`` (attention-shaped starts, ``F.scaled_dot_product_attention``).
* ``check.py``: eager's reference results (``gradients.py``: with gradients; float64) and
  :func:`check_program`; ``comparison.py``: :func:`compare`; ``noise.py``: :func:`eager_noise`.
* ``run.py``: :func:`run_program`, one program as an :class:`Outcome`, with a time limit.
* ``minimizer.py``: :func:`minimize` and :func:`reproducer`.
* ``campaigns.py``: :func:`campaign` over many seeds, ``--jobs`` over processes; ``cli.py``:
  the command line (``__main__.py``: ``python -m fuzz``).
* ``quiet.py``, ``nested.py``: running without warnings; results as nested tuples.
"""

from .campaigns import Summary, campaign, campaign_in_processes, summarize
from .check import Reference, check_program, check_results, eager_with_dtypes, fallbacks_of, reference, reference64
from .cli import main, parse_seeds
from .comparison import TOLERANCES, Mismatch, compare
from .generator import GENERATOR_VERSION, Gen, generate
from .gradients import cotangent, wants_grad, with_grads
from .minimizer import minimize, reproducer
from .noise import NOISE_FACTOR, NOISE_RUNS, eager_noise
from .program import MAX_NUMEL, Input, Op, Program, eval_vars, input_line, materialize, prune, render_core, tags
from .run import Outcome, ProgramTimeout, run_program

__all__ = [
    "GENERATOR_VERSION", "MAX_NUMEL", "NOISE_FACTOR", "NOISE_RUNS", "TOLERANCES",
    "Gen", "Input", "Mismatch", "Op", "Outcome", "Program", "ProgramTimeout", "Reference", "Summary",
    "campaign", "campaign_in_processes", "check_program", "check_results", "compare", "cotangent",
    "eager_noise", "eager_with_dtypes", "eval_vars", "fallbacks_of", "generate", "input_line", "main",
    "materialize", "minimize", "parse_seeds", "prune", "reference", "reference64", "render_core",
    "reproducer", "run_program", "summarize", "tags", "wants_grad", "with_grads",
]
