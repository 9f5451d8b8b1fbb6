"""The shipped configs: every config loads, and `jaxskill run` runs each file in configs/ (train ->
find -> verify -> report) through the command line, in its own dtype and with its own seeds, for a
few steps on a tiny random checkpoint laid out like the real one of its model's family (Qwen1.5:
tests/qwen15_like.py; Qwen2.5, Qwen3, Llama 3.2: tests/family_like.py; the demo configs on the
shipped organism), keeping its own task, metrics, selections and groups."""

import json
from pathlib import Path

import numpy as np
import pytest

from jaxskill.config import load_config
from jaxskill.model import capture
from jaxskill.model import Architecture
from jaxskill.model.checkpoint import resolve_model_dir
from jaxskill.tasks import build_task
from tests.real_models import RUN_ON_REAL

ROOT = Path(__file__).resolve().parent.parent
QWEN = sorted((ROOT / "configs" / "qwen1.5").glob("*.yaml"))
# Those whose model is a real one that the tests can fetch run on it (test_real_experiment.py).
ALL = [p for p in sorted((ROOT / "configs").rglob("*.yaml"))
       if load_config(p).model.path not in RUN_ON_REAL]
HUB = {"0.5b": "Qwen/Qwen1.5-0.5B", "1.8b": "Qwen/Qwen1.5-1.8B", "7b": "Qwen/Qwen1.5-7B"}
# The other families' configs: the arithmetic experiment of configs/qwen1.5 on their model.
FAMILY_CONFIGS = {"qwen2.5/arithmetic_0.5b.yaml": ("Qwen/Qwen2.5-0.5B", "qwen2"),
                  "qwen3/arithmetic_0.6b.yaml": ("Qwen/Qwen3-0.6B-Base", "qwen3"),
                  "llama3.2/arithmetic_1b.yaml": ("meta-llama/Llama-3.2-1B", "llama")}
LAYERS, INTERMEDIATE, PROMPT = 2, 80, 2

# A few steps on a few examples; dtype, seeds and everything else are the config's own.
FAST = {"task.n_train": "8", "task.n_dev": "4", "task.n_test": "4", "train.steps": "2",
        "train.batch_size": "4", "train.eval_every": "1",
        "find.batch_size": "4", "verify.k_list": "1,2", "verify.k": "1",
        "verify.random_draws": "2", "verify.batch_size": "4", "prompt.length": str(PROMPT)}
PER_TASK = {
    # 24 texts, so that the two skills verify selects are requested in the train split; the demo
    # tokenizer spends about one token per character.
    "skillmix": {"task.n_train": "24", "data.max_length": "320"},
}


def test_every_config_loads():
  paths = sorted((ROOT / "configs").rglob("*.yaml"))
  assert len(paths) >= 3 + 9 + 3 + 5  # qwen1.5: 3 experiment, 9 size files; 3 families; 5 more
  for path in paths:
    load_config(path)


def test_the_nine_qwen_configs_are_there_and_fit_their_names():
  """The nine runs (task x size), each a short size file on its task's experiment file
  (base_config), which is itself the 0.5B run."""
  import yaml
  from jaxskill.config import to_dict
  tasks = ("arithmetic", "hans", "skillmix")
  assert [p.stem for p in QWEN] == sorted([*tasks, *(f"{t}_{s}" for t in tasks for s in HUB)])
  for path in QWEN:
    task, _, size = path.stem.partition("_")
    text = path.read_text()
    assert text.startswith("#") and f"jaxskill run configs/qwen1.5/{path.name}" in text
    config = load_config(path)
    if not size:  # the experiment file: the whole config, the same as its 0.5B run
      assert "base_config" not in yaml.safe_load(text)
      assert to_dict(config) == to_dict(load_config(path.with_name(f"{task}_0.5b.yaml")))
      size = "0.5b"
    else:  # a size file sets the model and the name; the experiment is its task's, for all sizes
      # (but for the memory of the permutation null, which the 7b files turn off)
      own = yaml.safe_load(text)
      assert own.keys() - {"find"} == {"base_config", "name", "model"}
      assert own.get("find", {"permutations": 0}).keys() == {"permutations"}
      assert ("find" in own) == (size == "7b")
      assert yaml.safe_load(text)["base_config"] == f"{task}.yaml"
    assert config.name == f"qwen1.5-{size}-{task}"
    assert config.model.path == HUB[size]
    assert (config.model.dtype, config.model.remat) == (
        ("bfloat16", True) if size == "7b" else ("float32", False))
    assert config.train.lr == 1e-3 and config.train.weight_decay == 0.01  # the article's
    assert (config.train.b1, config.train.b2) == (0.9, 0.999)
    if task == "hans":
      assert config.task.path == "heuristics_evaluation_set.txt" and "task.path=" in text
    else:  # generated tasks: the full sizes fit their pools
      built = build_task(config.task)
      assert [len(built.splits[s]) for s in ("train", "dev", "test")] == [
          config.task.n_train, config.task.n_dev, config.task.n_test]


@pytest.mark.parametrize("name", sorted(FAMILY_CONFIGS))
def test_family_configs_run_the_arithmetic_experiment(name):
  """Each family's config is configs/qwen1.5/arithmetic.yaml with only the model and the name
  changed, and its hub id's published config.json is of the family it says."""
  import yaml
  from jaxskill.config import to_dict
  from jaxskill.model import Architecture
  from tests.family_like import HUB_CONFIGS
  path = ROOT / "configs" / name
  hub, family = FAMILY_CONFIGS[name]
  text = path.read_text()
  assert text.startswith("#") and f"jaxskill run configs/{name}" in text
  own = yaml.safe_load(text)
  assert own.keys() == {"base_config", "name", "model"}
  assert own["base_config"] == "../qwen1.5/arithmetic.yaml"
  config = load_config(path)
  base = to_dict(load_config(ROOT / "configs" / "qwen1.5" / "arithmetic.yaml"))
  mine = to_dict(config)
  assert {k: v for k, v in mine.items() if k not in ("name", "model")} == {
      k: v for k, v in base.items() if k not in ("name", "model")}
  size = path.stem.removeprefix("arithmetic_")
  assert config.model.path == hub and config.name == f"{path.parent.name}-{size}-arithmetic"
  assert Architecture.from_hf_dict(HUB_CONFIGS[hub]).model_type == family


@pytest.fixture(scope="module")
def qwen15_dir(tmp_path_factory):
  """A tiny random checkpoint laid out like a real Qwen1.5 one (bf16 safetensors, legacy
  config.json, Qwen's byte-level BPE with eos = pad = <|endoftext|>, vocab_size > tokenizer)."""
  from tests.qwen15_like import make_qwen15_like_checkpoint
  return make_qwen15_like_checkpoint(tmp_path_factory.mktemp("qwen15"), layers=LAYERS,
                                     intermediate=INTERMEDIATE)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
  """Factory: hub id -> a tiny random checkpoint laid out like it (tests/family_like.py), built
  once per module."""
  from tests.family_like import make_family_checkpoint
  cache = {}

  def build(hub):
    if hub not in cache:
      cache[hub] = make_family_checkpoint(tmp_path_factory.mktemp("family"), hub, layers=LAYERS,
                                          intermediate=INTERMEDIATE)
    return cache[hub]

  return build


@pytest.fixture(scope="module")
def hans_file(tmp_path_factory):
  from tests.test_tasks import HANS_HEADER, hans_rows, write_tsv
  return write_tsv(tmp_path_factory.mktemp("hans") / "heuristics_evaluation_set.txt",
                   HANS_HEADER, hans_rows(90))


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory):
  """One out_dir for the module's runs, and {verify's fingerprint: the run name computed under
  it}."""
  return {"dir": tmp_path_factory.mktemp("runs"), "names": {}}


def _overrides(path: Path, model_dir: Path, hans: Path, out_dir: Path) -> list[str]:
  """Tiny sizes for speed; the config's own dtype, seeds, metrics, selections and groups."""
  own = load_config(path)
  settings = {**FAST, **PER_TASK.get(own.task.name, {}), "out_dir": str(out_dir)}
  if own.model.path != "demo":  # the shipped organism runs as it is; hub ids -> the tiny one
    settings["model.path"] = str(model_dir)
  if own.task.name == "hans":
    settings["task.path"] = str(hans)
  return [f"{k}={v}" for k, v in settings.items()]


@pytest.mark.parametrize("path", ALL, ids=[str(p.relative_to(ROOT / "configs")) for p in ALL])
def test_the_command_line_runs_every_config(path, qwen15_dir, family_dirs, hans_file,
                                            shared_runs, capsys):
  """`jaxskill run CONFIG` exits 0 on every shipped config, in its own dtype and with its own
  seeds, and the report has every section. A config whose stages compute what an earlier one's
  did on the same tiny checkpoint (qwen1.5's experiment file and its 0.5B and 1.8B size files)
  runs under that one's name: every stage must then be found done (the same keys), and the
  report is written anew."""
  from jaxskill import cli
  from jaxskill.runtime.pipeline import fingerprint
  hub = load_config(path).model.path
  model_dir = (family_dirs(hub) if hub in dict(FAMILY_CONFIGS.values()) else qwen15_dir)
  overrides = _overrides(path, model_dir, hans_file, shared_runs["dir"])
  # verify's keys hold train's and find's (pipeline.STAGE_SECTIONS): one fingerprint is the twin's
  key = fingerprint(load_config(path, overrides), "verify")
  twin = shared_runs["names"].get(key)
  if twin is not None:
    overrides.append(f"name={twin}")
  assert cli.main(["run", str(path), *overrides, "--no-progress"]) == 0
  out = capsys.readouterr().out
  config = load_config(path, overrides)
  own = load_config(path)
  shared_runs["names"].setdefault(key, config.name)
  assert config.model.dtype == own.model.dtype and config.find.seeds == own.find.seeds
  for stage in ("train", "find", "verify"):
    assert f"== {stage}: {'done already, skipped' if twin else 'running'}" in out, stage
  # A twin with the same config.yaml finds the page drawn from the same files too.
  assert "== report: running" in out or (twin and "== report: done already, skipped" in out)
  run_dir = config.run_dir
  for seed in config.find.seeds:
    assert (run_dir.parent / f"{config.name}-seed{seed}" / "prompt_best.npy").exists()
    assert f"prompt training ({config.name}-seed{seed})" in out
  _check_outputs(config, own)
  html = (run_dir / "report.html").read_text()
  assert html.lstrip().lower().startswith("<!doctype html")
  for section in ("Prompt training", "Skill neurons", "Verification", "Config"):
    assert f"<h2>{section}</h2>" in html, section
  for seed in config.find.seeds:  # one training row per seed
    assert f"<td>{config.name}-seed{seed}</td>" in html
  # A second run finds everything done: nothing is recomputed.
  assert cli.main(["run", str(path), *overrides, "--no-progress"]) == 0
  out = capsys.readouterr().out
  for stage in ("train", "find", "verify", "report"):
    assert f"== {stage}: done already, skipped" in out


def _check_outputs(config, own) -> None:
  run_dir = config.run_dir
  with np.load(run_dir / "correlations.npz") as corr:
    if own.find.metrics:
      assert sorted(corr.files) == sorted(own.find.metrics)
    positions = len(capture.site_positions(config.find.sites, PROMPT, config.prompt.placement))
    model = Architecture.from_json_file(resolve_model_dir(config.model.path) / "config.json")
    for name in corr.files:
      assert corr[name].shape == (model.num_hidden_layers, positions,
                                  model.intermediate_size), name
      assert np.nanmax(np.abs(corr[name]), initial=0) <= 1 + 1e-5
  with np.load(run_dir / "activations.npz") as acts:  # plain float32, whatever the model's dtype
    assert acts["activations"].dtype == np.float32
  result = json.loads((run_dir / "verify.json").read_text())
  assert result["split"] == "test" and result["n"] == config.task.n_test
  verified = sorted([*result["selections"], *result["skipped"]])
  assert verified == sorted(own.verify.selection or [
      "label" if build_task(config.task).kind == "classification" else "correct"])
  assert result["group_by"] == list(config.verify.group_by)
  if config.verify.group_by:
    groups = result["baseline"]["group_accuracy"]
    assert groups and all(g.count("=") == len(config.verify.group_by) for g in groups)
  for name, selection in result["selections"].items():
    assert sorted(selection["modes"]) == sorted(config.verify.modes)
    for mode, per_k in selection["modes"].items():
      assert sorted(per_k, key=int) == ["1", "2"], (name, mode)
      for k, entry in per_k.items():
        assert 0.0 <= entry["top"]["accuracy"] <= 1.0
        assert np.isfinite(entry["top"]["loss"])
        assert np.isfinite(entry["random"]["accuracy_drop"]["mean"])
        assert len(selection["neurons"]) >= int(k)
