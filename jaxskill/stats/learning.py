"""Did the soft prompt learn? Exact, paired tests of the trained prompt on the dev split.

The best prompt is compared with the untrained (step-0) prompt on the same dev examples by
McNemar's exact test (a two-sided binomial test on the discordant pairs), and with chance by
an exact one-sided binomial test of its accuracy (classification only: a generation task's
chance of an exact answer is ~0, so there the comparison with the untrained prompt stands
alone). The prompt learned iff both tests that apply give p <= ALPHA in the right direction.

The best prompt is chosen on this same dev split (the highest of the evaluations during
training), so its dev accuracy is optimistic; the test asks whether training moved the prompt
at all, and a prompt that does not pass it is certainly not trained.

Later stages read the outcome through `untrained_prompt` to mark what they compute on such a
prompt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import stats as sps

from jaxskill.runtime import files

ALPHA = 0.01
TEST = ("McNemar's exact test (two-sided binomial on the discordant pairs) of the best prompt "
        "against the untrained one, and an exact one-sided binomial test of the best prompt's "
        "accuracy against chance (1 / classes), both on the dev split")
TEST_GENERATION = ("McNemar's exact test (two-sided binomial on the discordant pairs) of the "
                   "best prompt against the untrained one on the dev split; no test against "
                   "chance (an exact answer's chance is ~0 in a generation task)")


def mcnemar_exact(b: int, c: int) -> float:
  """Two-sided exact McNemar p of b pairs right only with the new prompt and c right only with
  the old: P(X <= min(b, c)) doubled (capped at 1), X ~ Binomial(b + c, 1/2); 1 when b + c = 0."""
  if b + c == 0:
    return 1.0
  return float(sps.binomtest(int(b), int(b + c), 0.5, alternative="two-sided").pvalue)


def binomial_above(k: int, n: int, p: float) -> float:
  """One-sided exact p of k or more successes in n trials of probability p: P(X >= k)."""
  if n == 0:
    return 1.0
  return float(sps.binomtest(int(k), int(n), p, alternative="greater").pvalue)


def learning_test(init_correct, best_correct, chance: float | None,
                  alpha: float = ALPHA) -> dict:
  """(prompt_learned, learning_test) for the per-example dev correctness (bool `[n]`) of the
  untrained and the best prompt, on the same examples in the same order. `chance`: the
  accuracy of a random answer (1 / classes), None for a generation task."""
  init_correct = np.asarray(init_correct, bool)
  best_correct = np.asarray(best_correct, bool)
  if init_correct.shape != best_correct.shape or init_correct.ndim != 1:
    raise ValueError(f"learning_test: the correctness vectors must be 1-D and paired, got "
                     f"shapes {init_correct.shape} and {best_correct.shape}")
  n = int(init_correct.size)
  b = int((best_correct & ~init_correct).sum())  # right only with the best prompt
  c = int((init_correct & ~best_correct).sum())  # right only with the untrained one
  k = int(best_correct.sum())
  p_init = mcnemar_exact(b, c)
  p_chance = None if chance is None else binomial_above(k, n, chance)
  # b > c: the two-sided test would also call a prompt that got worse significant.
  learned = n > 0 and b > c and p_init <= alpha and (chance is None or p_chance <= alpha)
  return {"prompt_learned": bool(learned),
          "learning_test": {
              "test": TEST if chance is not None else TEST_GENERATION,
              "p_vs_init": p_init, "p_vs_chance": p_chance,
              "dev_accuracy_init": float(init_correct.mean()) if n else None,
              "dev_accuracy_best": float(best_correct.mean()) if n else None,
              "chance": chance, "n_dev": n, "discordant": {"best_only": b, "init_only": c},
              "alpha": alpha}}


def no_dev_split() -> dict:
  """The outcome when the task has no dev split: nothing to test on."""
  return {"prompt_learned": None,
          "learning_test": {"test": None, "reason": "no dev split: the prompt was not tested "
                            "(set task.n_dev > 0 to test it)", "alpha": ALPHA}}


def describe(summary: dict) -> str:
  """One line on a train_summary.json's learning test ("" where it has none)."""
  t = summary.get("learning_test")
  if not t:
    return ""
  if summary.get("prompt_learned") is None:
    return t.get("reason", "the prompt was not tested")
  text = (f"dev accuracy {t['dev_accuracy_init']:.3f} untrained -> {t['dev_accuracy_best']:.3f} "
          f"best (n={t['n_dev']}): p = {t['p_vs_init']:.3g} against the untrained prompt")
  if t["p_vs_chance"] is not None:
    text += f", p = {t['p_vs_chance']:.3g} against chance {t['chance']:.3g}"
  else:
    text += " (generation task: no test against chance)"
  return text + f"; alpha {t['alpha']:g}"


def warning_line(name: str, summary: dict) -> str | None:
  """The stderr warning for a prompt that did not learn (None for one that did, or untested)."""
  if summary.get("prompt_learned") is not False:
    return None
  return (f"warning: the prompt of {name} did not learn ({describe(summary)}); every later "
          "result of this run is computed on an untrained prompt")


def untrained_prompt(run_dirs: list[Path]) -> bool | None:
  """Whether any of the prompts trained in `run_dirs` (a run's own, or each seed's) did not
  learn: True if one has prompt_learned false, False if all learned, None if none was tested
  (no dev split, or a run of a version without the test)."""
  values = []
  for d in run_dirs:
    path = Path(d) / "train_summary.json"
    if path.exists():
      values.append(files.read_json(path).get("prompt_learned"))
  if any(v is False for v in values):
    return True
  return False if values and all(v is True for v in values) else None
