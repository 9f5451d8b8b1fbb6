"""The shipped configs whose model is a real trained one that the tests can fetch
(tests/real_models.py RUN_ON_REAL) run through `jaxskill run` on that model at tiny sizes: the
user's path, on real weights, in CI."""

from pathlib import Path

import pytest

from jaxskill import cli
from jaxskill.config import load_config
from tests.real_models import RUN_ON_REAL, real_model_dir
from tests.test_qwen_configs import _check_outputs, _overrides

ROOT = Path(__file__).resolve().parent.parent
REAL = [p for p in sorted((ROOT / "configs").rglob("*.yaml"))
        if load_config(p).model.path in RUN_ON_REAL]


def test_the_real_model_configs_are_there():
  assert [p.relative_to(ROOT / "configs").as_posix() for p in REAL] == [
      "smollm2/arithmetic_generation.yaml"]


@pytest.mark.parametrize("path", REAL, ids=[p.parent.name + "/" + p.name for p in REAL])
def test_real_model_config_runs_through_the_cli(path, tmp_path, capsys):
  own = load_config(path)
  model_dir = real_model_dir(RUN_ON_REAL[own.model.path])
  overrides = _overrides(path, model_dir, tmp_path / "unused", tmp_path)
  assert cli.main(["run", str(path), *overrides, "--no-progress"]) == 0
  out = capsys.readouterr().out
  for stage in ("train", "find", "verify", "report"):
    assert f"== {stage}: running" in out
  config = load_config(path, overrides)
  _check_outputs(config, own)
  html = (config.run_dir / "report.html").read_text()
  for section in ("Prompt training", "Skill neurons", "Verification", "Config"):
    assert f"<h2>{section}</h2>" in html, section
  assert cli.main(["run", str(path), *overrides, "--no-progress"]) == 0
  assert "== verify: done already, skipped" in capsys.readouterr().out


def test_an_untrained_prompt_on_a_real_model_is_said_everywhere(tmp_path, capsys):
  """Arithmetic verification on the real SmolLM2 (which cannot add) with train.steps=2: the run
  exits 0, its prompt is tested and found not to have learned, the warning closes the output
  and heads the report, and the shortcut verdict is "insufficient evidence"."""
  import json
  path = ROOT / "configs" / "smollm2" / "arithmetic_generation.yaml"
  model_dir = real_model_dir("smollm2-135m-instruct")
  changes = ["task.name=arithmetic_verification", "task.n_train=16", "task.n_dev=16",
             "task.n_test=16", "train.steps=2", "verify.selection=label",
             "verify.group_by=correct,last_digit_only", "name=untrained",
             # One mode and K: the verdicts of this test do not depend on them, and each edit
             # is a pass of the real model over the test split.
             "verify.modes=zero", "verify.k_list=1"]
  keys = {c.split("=")[0] for c in changes}
  overrides = [o for o in _overrides(path, model_dir, tmp_path / "unused", tmp_path)
               if o.split("=")[0] not in keys] + changes
  assert cli.main(["run", str(path), *overrides, "--no-progress"]) == 0
  captured = capsys.readouterr()
  run_dir = tmp_path / "untrained"
  summary = json.loads((run_dir / "train_summary.json").read_text())
  assert summary["prompt_learned"] is False, summary
  assert captured.err.strip().splitlines()[-1].startswith("warning:"), captured.err[-500:]
  found = json.loads((run_dir / "summary.json").read_text())
  assert found["shortcut"]["verdict"] == "insufficient evidence", found["shortcut"]
  assert found["untrained_prompt"] is True
  assert json.loads((run_dir / "verify.json").read_text())["untrained_prompt"] is True
  html = (run_dir / "report.html").read_text()
  assert html.index("Warning: the prompt did not learn.") < html.index("<h2>Prompt training</h2>")
