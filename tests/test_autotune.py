"""The autotuner's choice and its disk cache (timed with a fake clock: no GPU needed)."""

from __future__ import annotations

import torch

import flashlight
from flashlight import autotune, ir

PROGRAM = ir.parse("""\
program p(x: f32[4,8]) -> (out0: f32[4])
  for i in 0:4 parallel
    for j in 0:8 reduce
      S: out0[i] += x[i,j]""")


def test_tune_picks_the_fastest_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    built = []

    def build(bm, bn, stages, warps):
        built.append((bm, bn, stages, warps))
        if bm == 128 and bn == 128:
            raise RuntimeError("does not compile")  # skipped, not fatal
        return lambda inputs: (bm, bn, stages)

    speed = {(64, 64, 3): 1.0}
    clock = lambda fn: speed.get(fn(), 5.0)  # noqa: E731
    choice = autotune.tune(PROGRAM, torch.device("cpu"), build, timer=clock)
    assert (choice["block_m"], choice["block_n"], choice["num_stages"]) == (64, 64, 3)
    assert len(built) == len(autotune.CANDIDATES)
    built.clear()
    again = autotune.tune(PROGRAM, torch.device("cpu"), build, timer=clock)
    assert again["block_m"] == 64 and not built, "the decision comes from the disk cache"


def test_corrupt_cache_entry_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    autotune.store(PROGRAM, "cpu", {"block_m": 64, "block_n": 64, "num_stages": 2})
    path = next((tmp_path / "tuning").glob("*.json"))
    path.write_text("{ truncated")
    assert autotune.lookup(PROGRAM, "cpu") is None


INDEXED = ir.parse("""\
program p(x: f32[4,8], ids: i64[8]) -> (out0: f32[4])
  for i in 0:4 parallel
    for j in 0:8 reduce
      S: out0[i] += x[i,ids[j]]""")


def test_only_programs_with_integer_or_boolean_inputs_are_steered_by_their_data():
    assert autotune.data_steers(INDEXED) and not autotune.data_steers(PROGRAM)


def test_tune_times_the_inputs_it_is_given(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    real = [torch.ones(4, 8), torch.arange(8)]
    seen = []

    def build(bm, bn, stages, warps):
        return lambda inputs: seen.append(inputs) or (bm, bn, stages)

    autotune.tune(INDEXED, torch.device("cpu"), build, timer=lambda fn: float(fn()[0]), inputs=real)
    assert seen and all(inputs is real for inputs in seen)


class _Program:
    """Stands in for a CompiledProgram: returns its name."""

    def __init__(self, name):
        self.name, self.program, self.launches = name, PROGRAM, []

    def __call__(self, inputs):
        return self.name


def test_a_program_tuned_on_its_first_call_chooses_once():
    import threading

    from flashlight.runtime import TunedOnFirstCall

    calls = []
    tuned = TunedOnFirstCall(_Program("default"), lambda inputs: calls.append(inputs) or _Program("chosen"))
    results = []
    threads = [threading.Thread(target=lambda: results.append(tuned([1]))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["chosen"] * 4 and calls == [[1]], "one thread tunes, on the call's inputs"


def test_a_failed_tuning_keeps_the_default_configuration():
    from conftest import warnings_of

    from flashlight.runtime import TunedOnFirstCall

    def fail(inputs):
        raise RuntimeError("no configuration compiles")

    tuned = TunedOnFirstCall(_Program("default"), fail)
    results = []
    text = warnings_of(lambda: results.extend([tuned([1]), tuned([1])]))
    assert results == ["default", "default"] and "keeping the default configuration" in text


def test_one_noisy_timing_does_not_decide(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    seen: dict = {}

    def clock(fn):  # the fastest configuration is slow the first time it is timed
        config = fn()
        seen[config] = seen.get(config, 0) + 1
        return (9.0 if seen[config] == 1 else 1.0) if config == (64, 32, 3, None) else 5.0

    choice = autotune.tune(PROGRAM, torch.device("cpu"), lambda *c: lambda inputs: c, timer=clock)
    assert (choice["block_m"], choice["block_n"], choice["num_stages"]) == (64, 32, 3)
    assert set(seen.values()) == {autotune.ROUNDS}


def _two_kernels(cost: dict, clock: list):
    """A build of two kernels, ``k0`` and ``k1``, whose launches add ``cost[name, warps]`` to ``clock``."""
    from flashlight.codegen.kernel_source import KernelSource
    from flashlight.codegen.launcher import Launch
    from flashlight.runtime import CompiledProgram

    class CountedLaunch(Launch):
        def __call__(self, tensors, sizes=None):
            clock.append(cost[self.kernel.name, self.kernel.num_warps])

    def build(bm, bn, stages, warps):
        kernels = [KernelSource(f"k{i}", "", (), 1, num_warps=warps or 4) for i in range(2)]
        return CompiledProgram(PROGRAM, [CountedLaunch(k, None) for k in kernels], {"x": (8, 1)})

    def timer(fn):  # a program's time: the sum of its launches'
        clock.clear()
        fn()
        return sum(clock)

    def launch_timer(run, inputs):
        tensors, sizes = run.bind(inputs)
        times = []
        for launch in run.launches:
            clock.clear()
            launch(tensors, sizes)
            times.append(clock[0])
        return times

    return build, timer, launch_timer


def test_each_kernel_of_a_program_keeps_the_warps_it_ran_fastest_with(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    # k0 (a product with a prologue) runs fastest with 8 warps, k1 (attention) with 4: no one
    # count of warps for the whole program is the fastest
    cost = {("k0", 4): 2.0, ("k0", 8): 1.0, ("k1", 4): 1.0, ("k1", 8): 3.0}
    build, timer, launch_timer = _two_kernels(cost, [])
    choice = autotune.tune(PROGRAM, torch.device("cpu"), build, timer=timer, launch_timer=launch_timer)
    assert choice["kernel_warps"] == [8, 4] and choice["num_warps"] is None and choice["ms"] == 2.0

    run = build(64, 64, 3, None).with_warps(choice["kernel_warps"])
    assert [ln.kernel.num_warps for ln in run.launches] == [8, 4]

    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path / "pinned"))  # warps the user set stay theirs
    pinned = autotune.tune(PROGRAM, torch.device("cpu"), build, timer=timer, launch_timer=launch_timer,
                           warps_per_kernel=False)
    assert pinned.get("kernel_warps") is None and pinned["ms"] == 3.0


def test_a_choice_is_kept_per_pipeline(tmp_path, monkeypatch):
    """Another pipeline makes other kernels: a choice tuned for one is not reused for the other."""
    from flashlight import passes

    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    reduced = passes.DEFAULT_PIPELINE.replace("factor-scales,", "")
    autotune.store(PROGRAM, "cpu", {"block_m": 64, "block_n": 32, "num_stages": 3})
    assert autotune.lookup(PROGRAM, "cpu") is not None
    assert autotune.lookup(PROGRAM, "cpu", reduced) is None
    autotune.store(PROGRAM, "cpu", {"block_m": 128, "block_n": 64, "num_stages": 2}, reduced)
    assert autotune.lookup(PROGRAM, "cpu", reduced)["block_m"] == 128
    assert autotune.lookup(PROGRAM, "cpu")["block_m"] == 64


def _rows(n: int) -> ir.Program:
    return ir.parse(f"program p(x: f32[{n},8]) -> (out0: f32[{n}])\n"
                    f"  for i in 0:{n} parallel\n    for j in 0:8 reduce\n      S: out0[i] += x[i,j]")


def test_one_choice_serves_every_length_of_a_power_of_two_bucket(tmp_path, monkeypatch):
    """A new sequence length in a bucket that was tuned before is timed no more (issue 19)."""
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    timed = []

    def clock(fn):
        timed.append(fn())
        return 1.0

    def build(*config):
        return lambda inputs: config

    autotune.tune(_rows(600), torch.device("cpu"), build, timer=clock)
    first = len(timed)
    assert first >= len(autotune.CANDIDATES)
    for length in (513, 1000, 1024):
        autotune.tune(_rows(length), torch.device("cpu"), build, timer=clock)
    assert len(timed) == first, "lengths 513..1024 share the choice tuned at 600"
    autotune.tune(_rows(1025), torch.device("cpu"), build, timer=clock)
    assert len(timed) == 2 * first, "1025 is in the next bucket: tuned anew"
    assert str(autotune.size_class(_rows(600))).startswith("program p(x: f32[1024,8]) -> (out0: f32[1024])")


def test_a_parametric_program_is_tuned_once_per_bucket_of_its_sizes():
    """Issue 19: a size in a bucket tuned before launches with that bucket's choice; a size in a
    new bucket is tuned there once."""
    from flashlight.runtime import TunedPerBucket

    program = ir.parse("program p[S](x: f32[S,8]) -> (out0: f32[S])\n"
                       "  for i in 0:S parallel\n    for j in 0:8 reduce\n      A: out0[i] += x[i,j]")
    tuned_at = []

    class Built:  # what a build returns: a callable program
        def __init__(self, sizes):
            self.program, self.bucket = program, autotune.size_bucket(sizes)

        def __call__(self, inputs):
            return self.bucket

    def at(sizes):
        tuned_at.append(dict(sizes))
        return Built(sizes)

    first = {"S": 600}
    runner = TunedPerBucket(at(first), autotune.size_bucket(first), at, autotune.size_bucket)
    served = [runner([torch.zeros(n, 8)]) for n in (513, 1000, 1024, 1025, 2000, 4000, 700)]
    assert tuned_at == [{"S": 600}, {"S": 1025}, {"S": 4000}]
    assert served == [(("S", 1024),)] * 3 + [(("S", 2048),)] * 2 + [(("S", 4096),), (("S", 1024),)]


def test_a_bucket_is_tuned_at_its_largest_sizes(monkeypatch):
    """The choice for a bucket is timed at the bucket's power of two, whichever length opened it."""
    program = ir.parse("program p[S](x: f32[S,8]) -> (out0: f32[S])\n"
                       "  for i in 0:S parallel\n    for j in 0:8 reduce\n      A: out0[i] += x[i,j]")
    tuned_at = []

    class Built:  # what a build returns: a callable program
        def __init__(self, sizes):
            self.program, self.sizes = program, dict(sizes)

        def __call__(self, inputs):
            return self.sizes

    def fake_build_tuned(prog, device, opts, build, report, sizes):
        tuned_at.append(dict(sizes))
        return Built(sizes)

    monkeypatch.setattr(autotune, "build_tuned", fake_build_tuned)
    runner = autotune.build_tuned_per_bucket(program, torch.device("cpu"), flashlight.Options(), None, {"S": 600})
    assert runner([torch.zeros(700, 8)]) == {"S": 1024}
    runner([torch.zeros(1500, 8)])
    assert tuned_at == [{"S": 1024}, {"S": 2048}]
