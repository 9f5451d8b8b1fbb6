"""Did the prompt learn? The exact tests against hand-computed binomial tails, and an untrained
prompt marked through every later stage: train_summary.json, summary.json, verify.json, the
report's banner and the CLI's warning."""

import json
from math import comb

import numpy as np
import pytest

from jaxskill import cli
from jaxskill.stats import learning
from tests.demo_small import OVERRIDES


def _tail_ge(k: int, n: int, p: float) -> float:
  """P(X >= k), X ~ Binomial(n, p), summed term by term."""
  return sum(comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_mcnemar_and_binomial_by_hand():
  assert learning.mcnemar_exact(10, 0) == pytest.approx(2 * 0.5 ** 10, rel=1e-12)
  assert learning.mcnemar_exact(0, 10) == pytest.approx(2 * 0.5 ** 10, rel=1e-12)
  # b=3, c=1: 2 P(X <= 1), X ~ Bin(4, 1/2) = 2 (1 + 4) / 16
  assert learning.mcnemar_exact(3, 1) == pytest.approx(0.625, rel=1e-12)
  assert learning.mcnemar_exact(5, 5) == 1.0 and learning.mcnemar_exact(0, 0) == 1.0
  assert learning.binomial_above(8, 10, 0.5) == pytest.approx((45 + 10 + 1) / 1024, rel=1e-12)
  assert learning.binomial_above(30, 40, 0.25) == pytest.approx(_tail_ge(30, 40, 0.25),
                                                                rel=1e-9)


def test_learning_test_rule():
  init = np.zeros(40, bool)
  init[:20] = True  # 0.5: chance for two classes
  best = init.copy()
  best[20:32] = True  # 12 more right, none lost
  out = learning.learning_test(init, best, chance=0.5)
  t = out["learning_test"]
  assert out["prompt_learned"] is True
  assert t["discordant"] == {"best_only": 12, "init_only": 0}
  assert t["p_vs_init"] == pytest.approx(2 * 0.5 ** 12, rel=1e-12)
  assert t["p_vs_chance"] == pytest.approx(_tail_ge(32, 40, 0.5), rel=1e-9)
  assert (t["dev_accuracy_init"], t["dev_accuracy_best"], t["n_dev"], t["alpha"]) == (
      0.5, 0.8, 40, 0.01)
  # The same change the other way is significant too, but it is no learning.
  assert learning.learning_test(best, init, chance=0.5)["prompt_learned"] is False
  # Up from far below chance: beats the untrained prompt, not chance (22/40 against 1/2).
  low, up = np.zeros(40, bool), np.zeros(40, bool)
  low[:8], up[:22] = True, True
  out = learning.learning_test(low, up, chance=0.5)
  assert out["learning_test"]["p_vs_init"] <= 0.01 < out["learning_test"]["p_vs_chance"]
  assert out["prompt_learned"] is False
  # A generation task: the comparison with the untrained prompt alone.
  gen = learning.learning_test(low, up, chance=None)
  assert gen["prompt_learned"] is True and gen["learning_test"]["p_vs_chance"] is None
  assert "no test against chance" in gen["learning_test"]["test"]
  with pytest.raises(ValueError, match="paired"):
    learning.learning_test(np.zeros(3, bool), np.zeros(4, bool), chance=0.5)


def test_untrained_prompt_of_run_dirs(tmp_path):
  dirs = [tmp_path / n for n in ("a", "b")]
  for d, value in zip(dirs, (True, None)):
    d.mkdir()
    (d / "train_summary.json").write_text(json.dumps({"prompt_learned": value}))
  assert learning.untrained_prompt(dirs[:1]) is False
  assert learning.untrained_prompt(dirs) is None  # one was not tested
  (dirs[1] / "train_summary.json").write_text(json.dumps({"prompt_learned": False}))
  assert learning.untrained_prompt(dirs) is True
  assert learning.untrained_prompt([tmp_path / "none"]) is None


@pytest.mark.slow  # the CLI on a whole run
def test_an_untrained_prompt_is_marked_everywhere(demo_run, capsys):
  """The shared small demo run (4 steps, 16 dev examples) cannot show learning at alpha 0.01;
  everything after training says so, and the shortcut question gets no answer."""
  config, _ = demo_run
  d = config.run_dir
  trained = json.loads((d / "train_summary.json").read_text())
  t = trained["learning_test"]
  assert trained["prompt_learned"] is False and t["n_dev"] == 16
  # The step-0 and best evaluations, recomputed at the end, agree with those of the loop.
  assert t["dev_accuracy_init"] == pytest.approx(trained["dev_accuracy_at_init"], abs=1e-6)
  assert t["dev_accuracy_best"] == pytest.approx(trained["best_dev_accuracy"], abs=1e-6)
  summary = json.loads((d / "summary.json").read_text())
  assert summary["untrained_prompt"] is True
  assert summary["shortcut"]["verdict"] == "insufficient evidence"
  assert "the prompt did not learn" in summary["shortcut"]["reason"]
  assert isinstance(summary["degenerate_metrics"], list)
  verified = json.loads((d / "verify.json").read_text())
  assert verified["untrained_prompt"] is True
  rows = [row for s in verified["selections"].values() for m in s["modes"].values()
          for row in m.values()]
  assert rows and all(row["untrained_prompt"] is True for row in rows)
  # `jaxskill run` again: every stage is done, the report is rewritten, the warning comes last.
  args = ["run", "configs/demo.yaml", *OVERRIDES, f"out_dir={config.out_dir}", "--no-progress"]
  assert cli.main(args) == 0
  out, err = capsys.readouterr()
  assert err.strip().splitlines()[-1].startswith("warning: the prompt of demo did not learn")
  assert "prompt learned? no: dev accuracy" in out
  assert ("last-digit shortcut neuron? insufficient evidence (computed on an untrained prompt)"
          in out)
  page = (d / "report.html").read_text()
  assert page.index("Warning: the prompt did not learn") < page.index("Prompt training")
  assert "(computed on an untrained prompt)" in page
