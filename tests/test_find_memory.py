"""find's memory estimate (jaxskill.runtime.memory): the count by hand, and a find that would not
fit refused before anything is removed, or run with find.permutations lowered."""

import json

import numpy as np
import pytest

from jaxskill.config import load_config
from jaxskill.runtime import memory
from tests.test_user_path import _args, jaxskill


def test_the_count_by_hand():
  # m = 2 metrics, f = 10 features, P = 3, 2 seeds, 100 bytes of params, batch 4:
  # host: 8 bytes x (3 + 3 + 2) x 20 float64 rows (stats, null co-moments, scratch) = 1280,
  #       4 x 6 x 20 (the fetched float32 accumulator) = 480, 4 x 3 x 20 x 2 seeds' null r = 480
  # device: 3 accumulators x 4 x 6 x 20 = 1440, params 100, batch 4 x 4 x 4 x 10 = 640
  need = memory.peak_bytes(metrics=2, features=10, permutations=3, seeds=2,
                           param_bytes=100, batch_size=4)
  assert need.host == 1280 + 480 + 480 + memory.PROCESS_BYTES
  assert need.device == 1440 + 100 + 640
  # Each permutation costs 8 + 4 + 4 (host) + 12 (device) bytes per (metric, feature) per seed
  more = memory.peak_bytes(metrics=2, features=10, permutations=4, seeds=1,
                           param_bytes=100, batch_size=4)
  less = memory.peak_bytes(metrics=2, features=10, permutations=3, seeds=1,
                           param_bytes=100, batch_size=4)
  assert more.total() - less.total() == (8 + 4 + 4 + 12) * 20


def test_sizes_parse():
  assert memory.parse_bytes("24G", "x") == 24 * 2**30
  assert memory.parse_bytes("1.5g", "x") == 3 * 2**29
  assert memory.parse_bytes("512MiB", "x") == 512 * 2**20
  assert memory.parse_bytes("1000", "x") == 1000
  with pytest.raises(ValueError, match="x='lots'"):
    memory.parse_bytes("lots", "x")


def _need(tmp_path, permutations: int) -> int:
  args = _args(tmp_path)
  return memory.estimate(load_config(args[0], args[1:]))[0](permutations).total()


def test_a_find_that_would_not_fit_is_refused_before_anything_is_removed(tmp_path, capsys,
                                                                         monkeypatch):
  run_dir = tmp_path / "demo"
  assert jaxskill(capsys, "run", *_args(tmp_path, "find.permutations=2"))[0] == 0
  kept = {n: (run_dir / n).read_bytes() for n in ("correlations.npz", "summary.json",
                                                  "verify.json", "prompt_best.npy")}
  # Room for 3 permutations, not for 4: asking for 5 is refused, naming 3.
  room = (_need(tmp_path, 3) + _need(tmp_path, 4)) // 2
  monkeypatch.setenv("JAXSKILL_MEMORY_AVAILABLE", str(room))
  code, _, err = jaxskill(capsys, "run", *_args(tmp_path, "find.permutations=5"))
  assert code == 2 and "find.permutations=3 fits" in err and "JAXSKILL_MEMORY_AVAILABLE" in err
  assert {n: (run_dir / n).read_bytes() for n in kept} == kept
  # ... also when training would run first (its change would remove find's outputs).
  code, _, err = jaxskill(capsys, "run", *_args(tmp_path, "find.permutations=5",
                                                "train.steps=3"))
  assert code == 2 and "find.permutations=3 fits" in err
  assert {n: (run_dir / n).read_bytes() for n in kept} == kept
  # fit_memory=lower runs it with 3, and says so.
  code, _, err = jaxskill(capsys, "run", *_args(tmp_path, "find.permutations=5",
                                                "find.fit_memory=lower"))
  assert code == 0 and "lowering find.permutations to 3" in err
  summary = json.loads((run_dir / "summary.json").read_text())
  assert {m["significance"]["permutations"] for m in summary["metrics"].values()} == {3}
  # The record is the config asked for: the same command finds find done.
  code, out, _ = jaxskill(capsys, "run", *_args(tmp_path, "find.permutations=5",
                                                "find.fit_memory=lower"))
  assert code == 0 and "== find: done already, skipped" in out
  # Nothing fits: refused with what to change.
  monkeypatch.setenv("JAXSKILL_MEMORY_AVAILABLE", "1M")
  code, _, err = jaxskill(capsys, "find", *_args(tmp_path, "find.permutations=1",
                                                 "find.fit_memory=lower"))
  assert code == 2 and "even find.permutations=0 does not fit" in err
  assert np.load(run_dir / "correlations.npz")  # still there


def test_the_largest_fitting_permutations_is_the_one_a_linear_search_finds():
  # The peak of `peak_bytes` grows with P; bisection must land where counting down does.
  def need(p):
    return memory.peak_bytes(metrics=3, features=2048, permutations=p, seeds=1,
                             param_bytes=10_000, batch_size=16)
  total = lambda p: need(p).total()  # noqa: E731
  for room in (total(0) - 1, total(0), total(7), total(7) + 1, total(50) - 1, total(200)):
    linear = next((p for p in range(100, -1, -1) if memory.fits(need(p), room, None)), None)
    assert memory.largest_fitting(need, 100, room, None) == linear, room
