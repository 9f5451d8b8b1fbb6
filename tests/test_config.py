"""Run configs: YAML + key=value overrides into frozen dataclasses; bad keys and values fail."""

import dataclasses

import pytest

from jaxskill.config import RunConfigError, dump_config, load_config, parse_overrides


def _write(tmp_path, text):
  path = tmp_path / "run.yaml"
  path.write_text(text)
  return path


def test_yaml_and_overrides(tmp_path):
  path = _write(tmp_path, "name: exp\ntrain:\n  lr: 0.01\n  steps: 7\nprompt:\n  length: 4\n")
  cfg = load_config(path, ["train.lr=1e-3", "task.digits=1,3", "model.remat=true"])
  assert cfg.name == "exp" and cfg.train.steps == 7 and cfg.prompt.length == 4
  assert cfg.train.lr == pytest.approx(1e-3)  # YAML 1.1 reads "1e-3" as a string: coerced
  assert cfg.task.digits == (1, 3)
  assert cfg.model.remat is True
  assert cfg.train.b2 == 0.999 and cfg.train.weight_decay == 0.01  # the article's defaults
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.train.lr = 1.0


def test_dump_and_reload_round_trip(tmp_path):
  cfg = load_config(None, ["train.lr=0.005", "task.operations=plus,minus", "name=x"])
  dump_config(cfg, tmp_path / "c.yaml")
  assert load_config(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize("override, fragment", [
    ("train.lrr=1", "train: unknown key(s) ['lrr']"),
    ("trian.lr=1", "unknown key(s) ['trian']"),
    ("train.steps=abc", "train.steps: expected an integer, got 'abc'"),
    ("train.steps=1.5", "train.steps: expected an integer, got '1.5'"),
    ("train.eval_every=0", "train: eval_every=0 is out of range"),
    ("train.lr=nan", "train: lr=nan is out of range"),
    ("prompt.length=-2", "prompt: length=-2 is out of range"),
    ("train.max_to_keep=0", "train: max_to_keep=0 is out of range"),
    ("prompt.init=text", "init=text needs a non-empty init_text"),
    ("train={steps: 7}", "train: expected a mapping"),
    ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
    ("model.remat=maybe", "model.remat: expected true or false, got 'maybe'"),
    ("prompt.placement=suffix", "prompt.placement: must be one of ['infix', 'prefix'], got 'suffix'"),
    ("model.dtype=float16", "model.dtype: must be one of"),
    ("train=3", "train: expected a mapping"),
    ("noequals", "expected key=value"),
])
def test_bad_overrides_name_the_key(override, fragment):
  with pytest.raises(RunConfigError) as info:
    load_config(None, [override])
  assert fragment in str(info.value)


def test_bad_file(tmp_path):
  with pytest.raises(RunConfigError, match="config file not found"):
    load_config(tmp_path / "missing.yaml")
  path = _write(tmp_path, "train:\n  batch_sise: 4\n")
  with pytest.raises(RunConfigError) as info:
    load_config(path)
  assert str(path) in str(info.value) and "batch_sise" in str(info.value)


def test_duplicate_override_is_an_error():
  with pytest.raises(RunConfigError, match="given twice"):
    parse_overrides(["train.lr=1", "train.lr=2"])


def test_shipped_configs_parse():
  from pathlib import Path
  configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
  assert len(configs) >= 3
  for path in configs:
    load_config(path)


def test_demo_verify_config_trains(tmp_path):
  """CI smoke run of the shipped demo config: three steps, with a checkpoint and a dev eval."""
  import json
  from pathlib import Path
  from jaxskill.train import train
  path = Path(__file__).resolve().parents[1] / "configs" / "demo_verify.yaml"
  config = load_config(path, [f"out_dir={tmp_path}", "train.steps=3", "train.eval_every=3"])
  summary = train(config, progress=False)
  assert summary["steps"] == 3 and 0 <= summary["best_dev_accuracy"] <= 1
  assert (config.run_dir / "checkpoints" / "3").is_dir()
  assert load_config(config.run_dir / "train_config.yaml") == config
  log = [json.loads(x) for x in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log if r["split"] == "dev"] == [0, 3]


def test_strings_are_taken_as_typed():
  """No YAML guessing on the command line: on, null, 0123 and yes/no stay strings."""
  cfg = load_config(None, ["name=on", "model.path=null", "out_dir=0123",
                           "task.labels=yes,no", "prompt.init_text=Answer: yes"])
  assert (cfg.name, cfg.model.path, cfg.out_dir) == ("on", "null", "0123")
  assert cfg.task.labels == ("yes", "no") and cfg.prompt.init_text == "Answer: yes"
  assert load_config(None, ["task.digits=[1, 2]"]).task.digits == (1, 2)


def test_yaml_booleans_for_strings_are_refused(tmp_path):
  path = _write(tmp_path, "task:\n  labels: [yes, no]\n")
  with pytest.raises(RunConfigError, match=r"task.labels\[0\]: expected a string, got True; quote"):
    load_config(path)
  path = _write(tmp_path, "task:\n  labels: ['yes', 'no']\n")
  assert load_config(path).task.labels == ("yes", "no")


def test_base_yaml_lists_every_key_with_its_default():
  from pathlib import Path
  from jaxskill.config import RunConfig, to_dict
  base = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"
  assert to_dict(load_config(base)) == to_dict(RunConfig())
