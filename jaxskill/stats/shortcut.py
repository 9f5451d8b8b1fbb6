"""Is there a last-digit shortcut neuron? A three-valued verdict: "yes", "no" or "insufficient
evidence", each with its reason and evidence.

For arithmetic verification runs whose activations include the metrics `label` (1: the candidate
is wrong) and `meta_last_digit_only`. Three groups of examples: right candidates, candidates
wrong only in the last digit, candidates wrong elsewhere (last digit right). For a neuron, two
Mann-Whitney AUCs: right vs last-digit-wrong and right vs elsewhere-wrong.
  - A shortcut neuron separates right from last-digit-wrong and not right from elsewhere-wrong.
    "yes" needs, on a held-out split, the last-digit AUC's 95% bootstrap interval min_effect or
    more from 0.5 and the elsewhere AUC's interval within max_other of 0.5 (an equivalence test:
    no separation, shown rather than assumed).
  - A neuron that verifies the whole answer separates right from both kinds of wrong, on the
    same side. "no" needs such a neuron shown on the held-out split: the last-digit interval
    min_effect or more from 0.5 and the elsewhere interval excluding 0.5 on the same side: it
    checks more than the last digit. Without that positive evidence nothing says "no".
  - Anything else is "insufficient evidence": no candidate on the selection split, intervals that
    contain 0.5 or straddle the equivalence margin, groups below min_group, no held-out split,
    or a prompt that did not learn (train_summary.json's prompt_learned false).
The candidates (the best of each kind) are chosen on the split the neurons were selected on and
judged on the held-out split alone, so that choosing the best of many does not decide the
verdict. find computes this (it has activations.npz and activations_heldout.npz) and writes it to
summary.json's "shortcut"; the report and the CLI only read it.
"""

from __future__ import annotations

import json

import numpy as np
from scipy import stats as sps

MIN_EFFECT = 0.25
MAX_OTHER = 0.1
MIN_GROUP = 20
DRAWS = 1000
YES, NO, INSUFFICIENT = "yes", "no", "insufficient evidence"


def auc(pos, neg):
  """P(a random `pos` value > a random `neg` value), ties half: the Mann-Whitney U statistic of
  `pos` over the number of pairs. Two 1-D arrays give a float (NaN if either is empty); `[d, n]`
  and `[d, n']` give the d AUCs of their rows `[d]` (one scipy call for a whole bootstrap)."""
  pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
  if pos.shape[-1] == 0 or neg.shape[-1] == 0:
    return float("nan") if pos.ndim == 1 else np.full(pos.shape[:-1], np.nan)
  # asymptotic: U is all that is used, and the exact p-value would cost the bootstrap its time
  u = sps.mannwhitneyu(pos, neg, axis=-1, method="asymptotic").statistic
  out = u / (pos.shape[-1] * neg.shape[-1])
  return float(out) if np.ndim(out) == 0 else out


def groups(activations: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """(right, wrong in the last digit only, wrong elsewhere): bool `[n]` masks from the metrics
  `label` and `meta_last_digit_only` of activations.npz's arrays, or None if either is missing."""
  names = [str(n) for n in activations["metric_names"]]
  if "label" not in names or "meta_last_digit_only" not in names:
    return None
  y = np.asarray(activations["metrics"])
  label, last_only = y[:, names.index("label")], y[:, names.index("meta_last_digit_only")]
  return label == 0, (label == 1) & (last_only == 1), (label == 1) & (last_only == 0)


def _sizes(masks) -> dict:
  right, wrong_last, wrong_else = masks
  return {"correct": int(right.sum()), "wrong_last_digit": int(wrong_last.sum()),
          "wrong_elsewhere": int(wrong_else.sum())}


def _far(x: float, margin: float) -> bool:
  return bool(abs(x - 0.5) >= margin)  # False for NaN (an empty group)


def neuron_rows(activations: dict, min_effect: float = MIN_EFFECT,
                max_other: float = MAX_OTHER) -> list[dict]:
  """Per kept feature of activations.npz (features int `[F, 3]` (layer, position index, neuron),
  activations `[n, F]`, metrics `[n, m]`, ...): both AUCs and whether it is, on these examples, a
  shortcut candidate or a whole-answer candidate; shortcut candidates first, best first."""
  right, wrong_last, wrong_else = groups(activations)
  acts = np.asarray(activations["activations"], np.float64).T  # [F, n]: every feature at once
  if acts.shape[0] == 0:
    return []
  lasts, others = auc(acts[:, wrong_last], acts[:, right]), auc(acts[:, wrong_else], acts[:, right])
  rows = []
  for j, (layer, pos, neuron) in enumerate(np.asarray(activations["features"])):
    last, other = float(lasts[j]), float(others[j])
    rows.append({"layer": int(layer), "position": str(activations["position_names"][pos]),
                 "neuron": int(neuron), "feature": j, "auc_last_digit_wrong": last,
                 "auc_elsewhere_wrong": other,
                 "shortcut": _far(last, min_effect) and not _far(other, max_other),
                 # Both kinds of wrong on the same side: it reacts to a wrong answer as such.
                 "whole_answer": (_far(last, min_effect) and _far(other, max_other)
                                  and (last - 0.5) * (other - 0.5) > 0),
                 "score": abs(last - 0.5) - abs(other - 0.5)})
  rows.sort(key=lambda r: (not r["shortcut"], -np.nan_to_num(r["score"], nan=-np.inf)))
  return rows


def _interval(a: np.ndarray, pos: np.ndarray, neg: np.ndarray, rng, draws: int) -> list:
  """95% percentile bootstrap interval of auc(a[pos], a[neg]), resampling within each group."""
  x, y = a[pos], a[neg]
  # Drawn in the order of one draw at a time (x's rows, then y's), all judged in one call.
  rows = [(rng.integers(0, x.size, x.size), rng.integers(0, y.size, y.size))
          for _ in range(draws)]
  values = auc(x[np.stack([i for i, _ in rows])], y[np.stack([j for _, j in rows])])
  return [float(v) for v in np.quantile(values, [0.025, 0.975])]


def heldout_evidence(heldout: dict, row: dict, min_group: int, draws: int, seed: int) -> dict:
  """The candidate `row` (its feature j) on the held-out split: group sizes, both AUCs and their
  95% bootstrap intervals (none when a group is below `min_group`)."""
  right, wrong_last, wrong_else = masks = groups(heldout)
  j = row["feature"]
  a = np.asarray(heldout["activations"], np.float64)[:, j]
  out = {"layer": row["layer"], "neuron": row["neuron"], "position": row["position"],
         "groups": _sizes(masks), "auc_last_digit_wrong": auc(a[wrong_last], a[right]),
         "auc_elsewhere_wrong": auc(a[wrong_else], a[right])}
  if min(out["groups"].values()) >= min_group:
    rng = np.random.default_rng([seed, j])  # per feature: the same draws whatever is judged
    out["auc_last_digit_wrong_95"] = _interval(a, wrong_last, right, rng, draws)
    out["auc_elsewhere_wrong_95"] = _interval(a, wrong_else, right, rng, draws)
  return out


def _beyond(interval: list, margin: float) -> int:
  """+1 (-1) where the whole interval lies `margin` or more above (below) 0.5, else 0."""
  lo, hi = interval
  return 1 if lo >= 0.5 + margin else -1 if hi <= 0.5 - margin else 0


def _excludes_half(interval: list) -> int:
  """+1 (-1) where the whole interval lies above (below) 0.5, 0 where it contains 0.5."""
  lo, hi = interval
  return 1 if lo > 0.5 else -1 if hi < 0.5 else 0


def holds_as_shortcut(h: dict, min_effect: float, max_other: float) -> bool:
  """The held-out test of a shortcut: last-digit interval min_effect or more from 0.5, the
  elsewhere interval within max_other of 0.5."""
  lo, hi = h["auc_elsewhere_wrong_95"]
  return (_beyond(h["auc_last_digit_wrong_95"], min_effect) != 0
          and 0.5 - max_other <= lo and hi <= 0.5 + max_other)


def holds_as_whole_answer(h: dict, min_effect: float) -> bool:
  """The held-out test of a whole-answer neuron: last-digit interval min_effect or more from
  0.5, the elsewhere interval excluding 0.5 on the same side."""
  side = _beyond(h["auc_last_digit_wrong_95"], min_effect)
  return side != 0 and _excludes_half(h["auc_elsewhere_wrong_95"]) == side


def criterion(n: int, min_effect: float, max_other: float, min_group: int) -> str:
  """The rule, in words, for the report and the CLI."""
  return (f"candidates chosen on {n} examples, judged on a held-out split by 95% bootstrap "
          f"intervals of AUC(correct vs last-digit-wrong) and AUC(correct vs elsewhere-wrong), "
          f"at least {min_group} examples per group: \"yes\" if a shortcut candidate's first "
          f"interval lies {min_effect} or more from 0.5 and its second within {max_other} of "
          f"0.5; \"no\" if a whole-answer candidate's first interval lies {min_effect} or more "
          "from 0.5 and its second excludes 0.5 on the same side (it checks more than the last "
          "digit); otherwise, or on an untrained prompt, \"insufficient evidence\"")


def last_digit_shortcut(activations: dict, heldout: dict | None = None, *,
                        untrained: bool | None = None, min_effect: float = MIN_EFFECT,
                        max_other: float = MAX_OTHER, min_group: int = MIN_GROUP,
                        draws: int = DRAWS, seed: int = 0) -> dict | None:
  """The verdict (see the module's docstring) for `activations` (activations.npz's arrays on the
  split the neurons were selected on: features `[F, 3]`, activations `[n, F]`, metrics `[n, m]`,
  metric_names `[m]`, position_names) and `heldout` (the same features on a held-out split);
  None if the metrics `label` and `meta_last_digit_only` are not both there. untrained: the
  prompt did not learn (`learning.untrained_prompt`). Returns {"verdict", "reason",
  "criterion", "groups", "neurons" (every feature's row), "candidates" and "heldout" ({"shortcut",
  "whole_answer"}: the chosen rows and their held-out evidence, None where there is none),
  "untrained_prompt", and "evidence_verdict" (what the evidence alone says)}."""
  masks = groups(activations)
  if masks is None:
    return None
  rows = neuron_rows(activations, min_effect, max_other)
  whole = sorted((r for r in rows if r["whole_answer"]), key=lambda r: -min(
      abs(r["auc_last_digit_wrong"] - 0.5), abs(r["auc_elsewhere_wrong"] - 0.5)))
  candidates = {"shortcut": next((r for r in rows if r["shortcut"]), None),
                "whole_answer": whole[0] if whole else None}
  held = {kind: None for kind in candidates}
  if heldout is not None and groups(heldout) is not None:
    held = {kind: None if row is None else heldout_evidence(heldout, row, min_group, draws, seed)
            for kind, row in candidates.items()}
  verdict, reason = _judge(candidates, held, heldout, min_group, min_effect, max_other)
  out = {"verdict": verdict, "reason": reason, "evidence_verdict": verdict,
         "criterion": criterion(int(masks[0].size), min_effect, max_other, min_group),
         "groups": _sizes(masks), "neurons": rows, "candidates": candidates, "heldout": held,
         "untrained_prompt": untrained}
  if untrained:
    out.update(verdict=INSUFFICIENT, reason=(
        f"the prompt did not learn (train_summary.json: prompt_learned false), so the model was "
        f"not doing the task; the evidence alone would read \"{verdict}\": {reason}"))
  return _no_nan(out)


def _no_nan(tree):
  """`tree` with NaN floats (the AUC of an empty group) as None: summary.json stays JSON."""
  if isinstance(tree, dict):
    return {k: _no_nan(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_no_nan(v) for v in tree]
  return None if isinstance(tree, float) and np.isnan(tree) else tree


def _judge(candidates: dict, held: dict, heldout: dict | None, min_group: int,
           min_effect: float, max_other: float) -> tuple[str, str]:
  """(verdict, reason) from the candidates chosen on the selection split and their held-out
  evidence."""
  if not any(candidates.values()):
    return INSUFFICIENT, (
        f"no neuron is a candidate on the selection split (|AUC correct vs last-digit-wrong - "
        f"0.5| >= {min_effect}, with AUC correct vs elsewhere-wrong within {max_other} of 0.5 "
        f"for a shortcut, or {max_other} or more from it on the same side for a whole-answer "
        "neuron)")
  if heldout is None or groups(heldout) is None:
    return INSUFFICIENT, "no held-out split (find.heldout_split) to judge the candidates on"
  sizes = _sizes(groups(heldout))
  if min(sizes.values()) < min_group:
    return INSUFFICIENT, (f"a held-out group has fewer than {min_group} examples "
                          f"({', '.join(f'{k} {v}' for k, v in sizes.items())})")
  s, w = held["shortcut"], held["whole_answer"]
  if s is not None and holds_as_shortcut(s, min_effect, max_other):
    return YES, (f"{_name(s)} separates right from last-digit-wrong candidates on the held-out "
                 f"split and not right from elsewhere-wrong ones ({_intervals(s)})")
  if w is not None and holds_as_whole_answer(w, min_effect):
    return NO, (f"{_name(w)} separates right candidates from last-digit-wrong and from "
                f"elsewhere-wrong ones on the held-out split ({_intervals(w)}): it checks more "
                "than the last digit")
  tried = "; ".join(f"{kind.replace('_', '-')} candidate {_name(h)}: {_intervals(h)}"
                    for kind, h in held.items() if h is not None)
  return INSUFFICIENT, f"no candidate holds up on the held-out split ({tried})"


def _name(h: dict) -> str:
  return f"layer {h['layer']} neuron {h['neuron']} at {h['position']}"


def _intervals(h: dict) -> str:
  lo, hi = h["auc_last_digit_wrong_95"]
  lo_e, hi_e = h["auc_elsewhere_wrong_95"]
  return (f"AUC correct vs last-digit-wrong {h['auc_last_digit_wrong']:.3f} [{lo:.3f}, {hi:.3f}],"
          f" correct vs elsewhere-wrong {h['auc_elsewhere_wrong']:.3f} [{lo_e:.3f}, {hi_e:.3f}]")


def heldout_text(h: dict | None) -> str:
  """One line on a candidate's held-out evidence ("" without it)."""
  if not h:
    return ""
  text = (f"{_name(h)}, held-out groups {json.dumps(h['groups'])}: AUC correct vs last-digit-wrong "
          f"{h['auc_last_digit_wrong']:.3f}")
  if "auc_last_digit_wrong_95" in h:
    lo, hi = h["auc_last_digit_wrong_95"]
    text += f" [{lo:.3f}, {hi:.3f}]"
  text += f", correct vs elsewhere-wrong {h['auc_elsewhere_wrong']:.3f}"
  if "auc_elsewhere_wrong_95" in h:
    lo, hi = h["auc_elsewhere_wrong_95"]
    text += f" [{lo:.3f}, {hi:.3f}]"
  return text
