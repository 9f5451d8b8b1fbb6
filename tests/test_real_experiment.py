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
