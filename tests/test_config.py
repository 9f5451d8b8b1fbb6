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
  from jaxskill.stages.train import train
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
  import yaml
  base = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"
  assert to_dict(load_config(base)) == to_dict(RunConfig())
  written = yaml.safe_load(base.read_text())  # every key is there, not left to the default
  for section, keys in to_dict(RunConfig()).items():
    assert section in written, section
    if isinstance(keys, dict):
      assert set(keys) == set(written[section]), (section, set(keys) ^ set(written[section]))


# base_config: a file starts from another (relative to itself) and sets only what differs.


def _files(tmp_path, files: dict) -> dict:
  """Writes {relative path: text} under tmp_path; returns {relative path: absolute path}."""
  out = {}
  for name, text in files.items():
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    out[name] = path
  return out


CHAIN = {
    # Three levels in three folders: each base_config is relative to the file that names it.
    "shared/root/root.yaml": ("name: root\nprompt:\n  length: 4\n"
                              "train:\n  steps: 10\n  lr: 0.01\n  batch_size: 8\n"
                              "task:\n  digits: [1, 2, 3]\n  operations: [plus, minus]\n"),
    "shared/mid.yaml": ("base_config: root/root.yaml\nmodel:\n  dtype: bfloat16\n"
                        "train:\n  steps: 20\ntask:\n  digits: [5]\n"),
    "exp/top.yaml": ("base_config: ../shared/mid.yaml\nname: top\n"
                     "prompt:\n  length: 6\n  placement: prefix\ntrain:\n  batch_size: 2\n"
                     "find:\n"),  # an empty section: the chain's (here the defaults) stay
}


def test_base_config_chain_merges_key_by_key(tmp_path, monkeypatch):
  paths = _files(tmp_path, CHAIN)
  monkeypatch.chdir(tmp_path / "shared" / "root")  # relative to the file, not to the cwd
  cfg = load_config(paths["exp/top.yaml"])
  assert cfg.name == "top"  # top over root
  assert (cfg.prompt.length, cfg.prompt.placement) == (6, "prefix")  # top
  assert cfg.model.dtype == "bfloat16" and cfg.model.path == "demo"  # mid; the default
  # Section by section, key by key: steps from mid, lr from root, batch_size from top.
  assert (cfg.train.steps, cfg.train.lr, cfg.train.batch_size) == (20, 0.01, 2)
  assert cfg.train.b1 == 0.9 and cfg.train.weight_decay == 0.01  # defaults under the chain
  assert cfg.task.digits == (5,)  # a list replaces a list: not [1, 2, 3, 5]
  assert cfg.task.operations == ("plus", "minus")  # root's, untouched by mid and top
  assert cfg.find.sites == ("prompt", "last_input", "answer")
  # Each level alone is the chain below it.
  mid = load_config(paths["shared/mid.yaml"])
  assert (mid.name, mid.prompt.length, mid.train.batch_size, mid.train.steps) == (
      "root", 4, 8, 20)


def test_overrides_beat_the_chain(tmp_path):
  paths = _files(tmp_path, CHAIN)
  cfg = load_config(paths["exp/top.yaml"], ["train.steps=30", "task.digits=4", "name=cli",
                                            "train.lr=0.5"])
  assert (cfg.name, cfg.train.steps, cfg.train.lr, cfg.task.digits) == ("cli", 30, 0.5, (4,))
  assert cfg.train.batch_size == 2 and cfg.model.dtype == "bfloat16"  # the rest: the chain's


def test_base_config_is_not_a_field(tmp_path):
  from jaxskill.config import RunConfig, to_dict
  paths = _files(tmp_path, CHAIN)
  cfg = load_config(paths["exp/top.yaml"])
  assert "base_config" not in to_dict(cfg)
  assert "base_config" not in {f.name for f in dataclasses.fields(RunConfig)}
  dump_config(cfg, tmp_path / "config.yaml")
  assert "base_config" not in (tmp_path / "config.yaml").read_text()
  assert load_config(tmp_path / "config.yaml") == cfg  # the dump stands alone


def test_base_config_cycle_names_the_files(tmp_path):
  paths = _files(tmp_path, {"a.yaml": "base_config: sub/b.yaml\nname: a\n",
                            "sub/b.yaml": "base_config: ../a.yaml\nname: b\n",
                            "self.yaml": "base_config: ./self.yaml\n"})
  with pytest.raises(RunConfigError, match="base_config cycle") as info:
    load_config(paths["a.yaml"])
  message = str(info.value)
  assert str(paths["a.yaml"]) in message and str(paths["sub/b.yaml"]) in message
  with pytest.raises(RunConfigError, match=f"base_config cycle: {paths['self.yaml']} -> "):
    load_config(paths["self.yaml"])


def test_an_error_in_a_base_names_the_base(tmp_path):
  paths = _files(tmp_path, {"base.yaml": "train:\n  batch_sise: 4\n",
                            "top.yaml": "base_config: base.yaml\nname: top\n"})
  with pytest.raises(RunConfigError) as info:
    load_config(paths["top.yaml"])
  message = str(info.value)
  assert message.startswith(f"{tmp_path / 'base.yaml'} (the base_config of {paths['top.yaml']})")
  assert "train: unknown key(s) ['batch_sise']" in message
  # A bad value too, and a base that is not there; each names the file that has the problem.
  paths["base.yaml"].write_text("train:\n  steps: many\n")
  with pytest.raises(RunConfigError, match=r"base.yaml \(the base_config of .*top.yaml\): "
                                           r"train.steps: expected an integer, got 'many'"):
    load_config(paths["top.yaml"])
  paths["top.yaml"].write_text("base_config: missing.yaml\n")
  with pytest.raises(RunConfigError, match=r"missing.yaml \(the base_config of .*top.yaml\): "
                                           "config file not found"):
    load_config(paths["top.yaml"])
  # An unknown key in the top file names the top file, not its base.
  paths["base.yaml"].write_text("name: base\n")
  paths["top.yaml"].write_text("base_config: base.yaml\nmodel:\n  dtyp: bfloat16\n")
  with pytest.raises(RunConfigError) as info:
    load_config(paths["top.yaml"])
  assert str(info.value).startswith(f"{paths['top.yaml']}: model: unknown key(s) ['dtyp']")


@pytest.mark.parametrize("value", ["", "[a.yaml]", "null", "3"])
def test_base_config_must_be_a_path(tmp_path, value):
  path = _write(tmp_path, f"base_config: {value}\n")
  with pytest.raises(RunConfigError, match=f"{path}: base_config: expected the path of a config"):
    load_config(path)


def test_a_section_may_be_completed_across_the_chain(tmp_path):
  """A section's own validation runs on the merged values: init=text in the base and its
  init_text in the file on top is a valid config; a range error names the file and its chain."""
  paths = _files(tmp_path, {"base.yaml": "prompt:\n  init: text\n",
                            "top.yaml": "base_config: base.yaml\nprompt:\n  init_text: Answer\n"})
  assert load_config(paths["top.yaml"]).prompt.init_text == "Answer"
  with pytest.raises(RunConfigError, match="init=text needs a non-empty init_text"):
    load_config(paths["base.yaml"])
  (paths["top.yaml"]).write_text("base_config: base.yaml\nprompt:\n  init_text: A\n  length: 0\n")
  with pytest.raises(RunConfigError) as info:
    load_config(paths["top.yaml"])
  assert str(info.value).startswith(f"{paths['top.yaml']} (over {paths['base.yaml']}): prompt: "
                                    "length=0 is out of range: expected >= 1")


def test_a_bad_value_given_on_the_command_line_is_blamed_on_it(tmp_path):
  # On 6db25d3 these named the YAML file, which holds no such value, and no range.
  paths = _files(tmp_path, {"run.yaml": "prompt:\n  length: 4\n"})
  with pytest.raises(RunConfigError) as info:
    load_config(paths["run.yaml"], ["prompt.length=0"])
  assert str(info.value) == ("command line (prompt.length=0): prompt: length=0 is out of range: "
                             "expected >= 1")
  with pytest.raises(RunConfigError) as info:
    load_config(paths["run.yaml"], ["train.steps=many"])
  assert str(info.value) == "command line: train.steps: expected an integer, got 'many'"
  with pytest.raises(RunConfigError) as info:  # among other overrides: the one at fault
    load_config(paths["run.yaml"], ["find.top_p_per_layer=2", "train.lr=1e-3"])
  assert "command line (find.top_p_per_layer=2)" in str(info.value)
  assert "expected in (0, 1]" in str(info.value)
