"""Degenerate metrics (jaxskill.stats.metric_checks): identical, monotone, constant, and a constant
prediction, checked against hand cases and scipy's Spearman rho."""

import numpy as np
import pytest
from scipy import stats as sps

from jaxskill.stats import metric_checks


def _flags(values: dict, classes=None) -> dict:
  names = list(values)
  out = metric_checks.degenerate_metrics(np.stack([values[n] for n in names], 1), names, classes)
  return {e["metric"]: e for e in out}


def test_an_untrained_model_answering_one_class():
  """The issue's case: the model says " no" (class 1) to every problem, so `correct` is `label`,
  its confidence a function of the label, and the prediction constant."""
  rng = np.random.default_rng(0)
  label = rng.integers(0, 2, 64).astype(float)
  p_no = 0.7  # the same output whatever the input
  confidence = np.where(label == 1, p_no, 1 - p_no)
  flags = _flags({"label": label, "confidence": confidence, "correct": label.copy(),
                  "meta_digits": np.full(64, 2.0)}, classes=(" yes", " no"))
  assert flags["correct"]["why"] == "identical to label"
  assert flags["confidence"]["why"] == "a monotone function of label"
  assert flags["meta_digits"]["why"] == "constant"
  assert flags["prediction"]["why"] == "constant" and flags["prediction"]["answer"] == " no"
  assert "answers ' no' to every one of the 64" in metric_checks.describe(flags["prediction"])
  assert "label" not in flags  # the first of a group is the reference, not flagged


def test_monotone_is_spearman_one_and_nothing_else():
  rng = np.random.default_rng(1)
  confidence = rng.uniform(0.01, 0.99, 100)
  values = {"confidence": confidence, "loss": -np.log(confidence),  # decreasing in it
            "margin": 2 * confidence - 1, "noisy": confidence + rng.normal(0, 0.01, 100),
            "other": rng.normal(size=100)}
  flags = _flags(values)
  assert set(flags) == {"loss", "margin"}
  for name in flags:
    assert flags[name]["why"] == "a monotone function of confidence"
  # The independent reference: scipy's rho is +-1 exactly where a metric is flagged.
  for name in ("loss", "margin", "noisy", "other"):
    rho = sps.spearmanr(confidence, values[name]).statistic
    assert (abs(rho) == pytest.approx(1.0, abs=1e-12)) == (name in flags), (name, rho)


def test_complements_nans_and_healthy_metrics():
  rng = np.random.default_rng(2)
  label = rng.integers(0, 2, 50).astype(float)
  correct = (rng.uniform(size=50) < 0.8).astype(float)  # right 80% of the time: varies freely
  half_nan = label.copy()
  half_nan[::2] = np.nan
  flags = _flags({"label": label, "correct": correct, "complement": 1 - label,
                  "half_nan": half_nan, "all_nan": np.full(50, np.nan)}, classes=("a", "b"))
  assert flags["complement"]["why"] == "a monotone function of label"
  assert flags["half_nan"]["why"] == "identical to label" and flags["half_nan"]["examples"] == 25
  assert flags["all_nan"]["why"] == "constant" and flags["all_nan"]["examples"] == 0
  assert "correct" not in flags and "prediction" not in flags  # both classes are answered


def test_three_classes_make_no_prediction_claim_and_bad_shapes_are_refused():
  label = np.array([0, 1, 2, 0, 1, 2], float)
  flags = _flags({"label": label, "correct": np.zeros(6)}, classes=("a", "b", "c"))
  assert set(flags) == {"correct"}  # constant; which class it answers is not known
  with pytest.raises(ValueError, match="do not match 3 names"):
    metric_checks.degenerate_metrics(np.zeros((4, 2)), ["a", "b", "c"])
