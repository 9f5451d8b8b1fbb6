"""The stage runner's loop: an interrupted loop resumes from its last checkpoint and ends where a
straight one ends, running each step after the checkpoint exactly once more; the JSON-lines log
skips finished steps and drops a line cut short."""

import json

import numpy as np
import pytest

from jaxskill.runtime.runner import Checkpoints, JsonlLog, Runner


class Interrupted(Exception):
  pass


def _body(calls, fail_at=None):
  """A loop body: adds i^2 to a float64 total; raises before step `fail_at`."""
  def body(i, state, saving):
    if i == fail_at:
      raise Interrupted
    calls.append(i)
    return {"total": state["total"] + np.float64(i * i), "steps": state["steps"] + 1}, None
  return body


def _fresh():
  return {"total": np.float64(0.0), "steps": np.int64(0)}


def test_an_interrupted_loop_resumes_from_its_last_checkpoint(tmp_path):
  calls = []
  straight = Runner.loop(_body(calls), _fresh(), total=10, desc="t", progress=False)
  assert calls == list(range(10)) and straight["total"] == sum(i * i for i in range(10))

  calls = []
  with pytest.raises(Interrupted):
    with Checkpoints(tmp_path / "ck", every=3) as ckpt:
      Runner.loop(_body(calls, fail_at=7), _fresh(), total=10, desc="t", progress=False,
                  checkpoints=ckpt)
  assert calls == list(range(7))
  calls = []
  with Checkpoints(tmp_path / "ck", every=3) as ckpt:
    start, state = ckpt.restore(_fresh())
    assert start == 6 and int(state["steps"]) == 6  # steps 0..5 were saved at 3 and 6
    resumed = Runner.loop(_body(calls), state, total=10, start=start, desc="t", progress=False,
                          checkpoints=ckpt)
  assert calls == [6, 7, 8, 9]
  assert float(resumed["total"]) == float(straight["total"])
  assert int(resumed["steps"]) == 10


def test_checkpoints_are_due_every_n_steps_and_at_the_end(tmp_path):
  with Checkpoints(tmp_path / "ck", every=4) as ckpt:
    assert [d for d in range(1, 11) if ckpt.due(d, 10)] == [4, 8, 10]
  with Checkpoints(tmp_path / "none", every=0) as ckpt:
    assert not any(ckpt.due(d, 10) for d in range(1, 11))


def test_jsonl_log_skips_finished_steps_and_drops_a_cut_line(tmp_path):
  path = tmp_path / "progress.jsonl"
  keys = ["a", "b", "c"]
  path.write_text(
      json.dumps({"key": "a", "fingerprint": "f1", "result": 1}) + "\n"
      + json.dumps({"key": "b", "fingerprint": "other", "result": 99}) + "\n"
      + '{"key": "b", "fingerp')  # an interruption cut this line
  log = JsonlLog(path, keys, "f1")
  finished = log.restore()
  assert finished == {"a": 1}
  assert path.read_text().count("\n") == 2  # the cut line is gone, the other run's kept
  evaluated = []

  def body(i, done, saving):
    if keys[i] not in done:
      evaluated.append(keys[i])
      done = {**done, keys[i]: 10 * (i + 1)}
    return done, None
  out = Runner.loop(body, finished, total=3, desc="t", progress=False, checkpoints=log)
  assert evaluated == ["b", "c"] and out == {"a": 1, "b": 20, "c": 30}
  records = [json.loads(line) for line in path.read_text().splitlines()]
  ours = [(r["key"], r["result"]) for r in records if r["fingerprint"] == "f1"]
  assert ours == [("a", 1), ("b", 20), ("c", 30)]  # "a" is not written twice
  assert JsonlLog(path, keys, "f1").restore() == {"a": 1, "b": 20, "c": 30}
