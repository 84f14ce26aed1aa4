"""The autotuner's choice and its disk cache (timed with a fake clock: no GPU needed)."""

from __future__ import annotations

import torch

from flashlight import autotune, ir

PROGRAM = ir.parse("""\
program p(x: f32[4,8]) -> (out0: f32[4])
  for i in 0:4 parallel
    for j in 0:8 reduce
      S: out0[i] += x[i,j]""")


def test_tune_picks_the_fastest_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FLASHLIGHT_CACHE_DIR", str(tmp_path))
    built = []

    def build(bm, bn, stages):
        built.append((bm, bn, stages))
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
