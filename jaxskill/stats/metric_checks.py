"""What find adds to summary.json beyond the statistics: the metrics that cannot tell anything
apart on this split (degenerate metrics), the last-digit shortcut verdict
(`jaxskill.stats.shortcut`),
and whether the prompt the neurons were found under learned (`jaxskill.stats.learning`).

A degenerate metric is
  - "constant": one value on every example (none of its correlations is defined), or
  - "identical to X": equal, example for example, to an earlier metric X (e.g. `correct` equals
    `label` when the model answers "wrong" to every candidate), or
  - "a monotone function of X": the same ranking of the examples as X, or its reverse
    (Spearman |rho| = 1, checked on the ranks themselves, not a rounded rho; e.g. `loss`, which
    is -log `confidence`). Its top neurons by rank are X's.
and, for a two-class task with `label` and `correct`, the model's prediction is "constant" when
it answers the same class for every example (then `correct` is `label` or its complement).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats as sps

from jaxskill.config import seed_runs
from jaxskill.runtime import files
from jaxskill.stats import learning, shortcut


def _relation(a: np.ndarray, b: np.ndarray) -> str | None:
  """"identical", "monotone" or None for two metric columns `[n]` (NaN: no value), over the
  examples both have values on (at least two)."""
  both = np.isfinite(a) & np.isfinite(b)
  if both.sum() < 2:
    return None
  a, b = a[both], b[both]
  if np.array_equal(a, b):
    return "identical"
  ra, rb = sps.rankdata(a), sps.rankdata(b)  # average ranks: x.5 values, exact in float64
  if np.array_equal(ra, rb) or np.array_equal(ra, a.size + 1 - rb):
    return "monotone"
  return None


def degenerate_metrics(values: np.ndarray, names: Sequence[str],
                       classes: Sequence[str] | None = None) -> list[dict]:
  """The degenerate metrics (see the module's docstring) among the per-example columns `values`
  `[n, m]` (NaN: no value) named `names` `[m]`; classes: the verbalizer words of a
  classification task (None otherwise). Each metric is named once, against the first earlier
  metric it repeats; [{"metric", "why", "other", "examples"}]."""
  values = np.asarray(values, np.float64)
  names = [str(n) for n in names]
  if values.ndim != 2 or values.shape[1] != len(names):
    raise ValueError(f"degenerate_metrics: values {values.shape} do not match {len(names)} names")
  out, kept = [], []  # kept: the metrics later ones are compared against
  for j, name in enumerate(names):
    column = values[:, j]
    finite = column[np.isfinite(column)]
    if np.unique(finite).size <= 1:
      out.append({"metric": name, "why": "constant", "other": None, "examples": int(finite.size)})
      continue
    found = next(((i, rel) for i in kept if (rel := _relation(values[:, i], column))), None)
    if found is None:
      kept.append(j)
      continue
    i, rel = found
    why = f"identical to {names[i]}" if rel == "identical" else f"a monotone function of {names[i]}"
    out.append({"metric": name, "why": why, "other": names[i],
                "examples": int((np.isfinite(values[:, i]) & np.isfinite(column)).sum())})
  prediction = _constant_prediction(values, names, classes)
  return out + ([prediction] if prediction else [])


def _constant_prediction(values: np.ndarray, names: list[str],
                         classes: Sequence[str] | None) -> dict | None:
  """For a two-class task with `label` and `correct`: the entry for a model that answers one
  class for every example (None if it does not, or if that cannot be told)."""
  if classes is None or len(classes) != 2 or not {"label", "correct"} <= set(names):
    return None
  label, correct = values[:, names.index("label")], values[:, names.index("correct")]
  ok = np.isfinite(label) & np.isfinite(correct)
  predicted = np.where(correct[ok] == 1, label[ok], 1 - label[ok])  # the class answered
  if predicted.size == 0 or np.unique(predicted).size > 1:
    return None
  return {"metric": "prediction", "why": "constant", "other": None,
          "examples": int(predicted.size),
          "answer": str(classes[int(predicted[0])])}


def describe(entry: dict) -> str:
  """One entry of summary.json's degenerate_metrics, in words."""
  if entry["metric"] == "prediction":
    return (f"the model answers {entry['answer']!r} to every one of the {entry['examples']} "
            "examples (a constant prediction)")
  if entry["why"] == "constant":
    return f"{entry['metric']} is constant over the {entry['examples']} examples"
  return f"{entry['metric']} is {entry['why']} on the {entry['examples']} examples"


def find_checks(config, task) -> dict:
  """summary.json's "untrained_prompt", "degenerate_metrics" and "shortcut" from the files find
  wrote into `config.run_dir` (activations.npz, activations_heldout.npz: on the first seed's
  prompt) and each seed's train_summary.json; None where activations.npz is missing (no
  neuron's correlation was defined)."""
  untrained = learning.untrained_prompt([c.run_dir for c in seed_runs(config)])
  path, held_path = (config.run_dir / n for n in ("activations.npz", "activations_heldout.npz"))
  if not path.exists():
    return {"untrained_prompt": untrained, "degenerate_metrics": None, "shortcut": None}
  acts = files.load_npz(path)
  heldout = files.load_npz(held_path) if held_path.exists() else None
  classes = tuple(task.verbalizer) if task.kind == "classification" else None
  return {"untrained_prompt": untrained,
          "degenerate_metrics": degenerate_metrics(acts["metrics"], acts["metric_names"],
                                                   classes),
          "shortcut": shortcut.last_digit_shortcut(acts, heldout, untrained=untrained)}
