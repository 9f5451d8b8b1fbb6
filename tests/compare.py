"""Comparing two verify.json results computed by programs that differ only in how they order
float32 sums (the batched and one-edit verify paths, this code and an older commit)."""

import pytest

# The float32 metrics of the model's probabilities; everything else in verify.json (accuracies,
# drops, p-values, intervals, verdicts, neurons) is built on correctness counts and must be equal.
ROUNDED = ("confidence", "loss", "margin")


def assert_same_verify(new, old, path="verify.json"):
  """Equal, but for ROUNDED values: within 1e-6 (a few float32 ulps of values of order one, from
  another summation order, lie far below it)."""
  if isinstance(old, dict):
    assert new.keys() == old.keys(), path
    for key in old:
      assert_same_verify(new[key], old[key], f"{path}/{key}")
  elif isinstance(old, list):
    assert len(new) == len(old), path
    for i, (x, y) in enumerate(zip(new, old)):
      assert_same_verify(x, y, f"{path}[{i}]")
  elif isinstance(old, float) and any(m in path for m in ROUNDED):
    assert new == pytest.approx(old, rel=1e-6, abs=1e-6), path
  else:
    assert new == old, path
