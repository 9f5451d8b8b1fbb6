"""The three-valued last-digit shortcut verdict (jaxskill.stats.shortcut): "yes" only for a planted
shortcut neuron, "no" only for a planted whole-answer neuron, "insufficient evidence" on null
data, with too few examples, without a held-out split, or on an untrained prompt."""

import itertools

import numpy as np
import pytest

from jaxskill.stats import shortcut


def _npz(label, last_only, activations) -> dict:
  """activations.npz's arrays for one position, features (layer 1, neuron j)."""
  activations = np.asarray(activations, np.float64).reshape(len(label), -1)
  f = activations.shape[1]
  return {"metric_names": np.array(["label", "meta_last_digit_only", "confidence"]),
          "metrics": np.stack([label, last_only, np.full(len(label), 0.5)], 1).astype(np.float32),
          "position_names": np.array(["last_input"]),
          "features": np.stack([np.ones(f, int), np.zeros(f, int), np.arange(f)], 1),
          "activations": activations}


def _planted(n: int, seed: int, kind: str) -> dict:
  """n examples in three equal groups (right, last-digit-wrong, elsewhere-wrong) and one neuron:
  "shortcut" fires on a wrong last digit only, "whole" on any wrong answer, 2 apart at noise
  0.3; "null": noise alone."""
  rng = np.random.default_rng(seed)
  label = np.repeat([0, 1, 1], n // 3)
  last_only = np.repeat([0, 1, 0], n // 3)
  signal = {"shortcut": last_only, "whole": label, "null": 0 * label}[kind]
  return _npz(label, last_only, 2.0 * signal + rng.normal(0, 0.3, label.size))


def test_auc_is_the_pairwise_share_with_ties_half():
  """The rank formula against the definition, counted pair by pair, on data full of ties."""
  rng = np.random.default_rng(0)
  for _ in range(20):
    pos, neg = rng.integers(0, 5, rng.integers(1, 30)), rng.integers(0, 5, rng.integers(1, 30))
    pairs = list(itertools.product(pos, neg))
    want = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert shortcut.auc(pos, neg) == pytest.approx(want, abs=1e-12)
  assert np.isnan(shortcut.auc([], [1.0]))


def test_a_planted_shortcut_neuron_is_yes():
  v = shortcut.last_digit_shortcut(_planted(300, 0, "shortcut"), _planted(600, 1, "shortcut"))
  assert v["verdict"] == "yes" and v["evidence_verdict"] == "yes"
  h = v["heldout"]["shortcut"]
  assert h["auc_last_digit_wrong_95"][0] >= 0.75  # the first interval clear of 0.5 by 0.25
  assert 0.4 <= h["auc_elsewhere_wrong_95"][0] and h["auc_elsewhere_wrong_95"][1] <= 0.6
  assert v["candidates"]["whole_answer"] is None  # it does not react to elsewhere-wrong


def test_a_planted_whole_answer_neuron_is_no():
  v = shortcut.last_digit_shortcut(_planted(300, 0, "whole"), _planted(300, 1, "whole"))
  assert v["verdict"] == "no", v["reason"]
  h = v["heldout"]["whole_answer"]
  assert h["auc_last_digit_wrong_95"][0] > 0.75 and h["auc_elsewhere_wrong_95"][0] > 0.5
  assert v["candidates"]["shortcut"] is None and "checks more than the last digit" in v["reason"]


def test_null_data_is_insufficient_evidence_never_a_confident_no():
  """Random activations against random groups: many neurons, few examples to choose on (so that
  some are candidates by chance), then a held-out split. A candidate chosen on noise does not
  hold up: no verdict but "insufficient evidence", and the held-out path is taken."""
  judged = 0
  for seed in range(20):
    rng = np.random.default_rng(seed)
    splits = []
    for n in (30, 300):
      label = rng.integers(0, 2, n)
      last_only = label * rng.integers(0, 2, n)
      splits.append(_npz(label, last_only, rng.normal(size=(n, 200))))
    v = shortcut.last_digit_shortcut(*splits)
    assert v["verdict"] == "insufficient evidence", (seed, v["reason"])
    judged += any(h is not None for h in v["heldout"].values())
  assert judged >= 15  # candidates were found by chance and judged on the held-out split


def test_no_candidate_no_heldout_too_few_examples_untrained():
  null = shortcut.last_digit_shortcut(_planted(300, 0, "null"), _planted(600, 1, "null"))
  assert null["verdict"] == "insufficient evidence"
  assert null["reason"].startswith("no neuron is a candidate on the selection split")
  alone = shortcut.last_digit_shortcut(_planted(300, 0, "shortcut"))
  assert alone["verdict"] == "insufficient evidence" and "no held-out split" in alone["reason"]
  small = shortcut.last_digit_shortcut(_planted(300, 0, "shortcut"), _planted(30, 1, "shortcut"))
  assert small["verdict"] == "insufficient evidence" and "fewer than 20" in small["reason"]
  assert "auc_last_digit_wrong_95" not in small["heldout"]["shortcut"]  # no interval from 10
  # Perfect evidence on an untrained prompt: kept, but no verdict is drawn from it.
  v = shortcut.last_digit_shortcut(_planted(300, 0, "shortcut"), _planted(600, 1, "shortcut"),
                                   untrained=True)
  assert (v["verdict"], v["evidence_verdict"], v["untrained_prompt"]) == (
      "insufficient evidence", "yes", True)
  assert "the prompt did not learn" in v["reason"]


def test_not_an_arithmetic_verification_run_and_empty_groups():
  acts = _planted(30, 0, "shortcut")
  acts["metric_names"] = np.array(["label", "meta_digits", "confidence"])
  assert shortcut.last_digit_shortcut(acts) is None
  # No wrong-last-digit example: its AUC is undefined (None in the JSON), no candidate.
  label = np.array([0, 1] * 20)
  v = shortcut.last_digit_shortcut(_npz(label, 0 * label, label + 0.1 * np.arange(40)))
  assert v["neurons"][0]["auc_last_digit_wrong"] is None
  assert v["verdict"] == "insufficient evidence"
