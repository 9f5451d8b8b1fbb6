"""The Qwen1.5 experiment configs: every config loads, and each of configs/qwen1.5/ runs the whole
pipeline (train -> find -> verify -> report) for a few steps on a tiny random Qwen2 checkpoint
with the shipped demo tokenizer, keeping its own task, metrics, selections and groups."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxskill.config import load_config
from jaxskill.model.checkpoint import DEMO_MODEL
from jaxskill.tasks import build_task

ROOT = Path(__file__).resolve().parent.parent
QWEN = sorted((ROOT / "configs" / "qwen1.5").glob("*.yaml"))
HUB = {"0.5b": "Qwen/Qwen1.5-0.5B", "1.8b": "Qwen/Qwen1.5-1.8B", "7b": "Qwen/Qwen1.5-7B"}
LAYERS, INTERMEDIATE, PROMPT = 2, 80, 2

# A few steps on a few examples, two prompt seeds instead of the configs' three (still averaged
# over); everything else is the config's own.
FAST = {"model.dtype": "float32", "task.n_train": "8", "task.n_dev": "4", "task.n_test": "4",
        "find.seeds": "0,1",
        "train.steps": "2", "train.batch_size": "4", "train.eval_every": "1",
        "find.batch_size": "4", "verify.k_list": "1,2", "verify.k": "1",
        "verify.random_draws": "2", "verify.batch_size": "4", "prompt.length": str(PROMPT)}
PER_TASK = {
    # 24 texts, so that the two skills verify selects are requested in the train split; the demo
    # tokenizer spends about one token per character.
    "skillmix": {"task.n_train": "24", "data.max_length": "320"},
}


def test_every_config_loads():
  paths = sorted((ROOT / "configs").rglob("*.yaml"))
  assert len(paths) >= 9 + 5
  for path in paths:
    load_config(path)


def test_the_nine_qwen_configs_are_there_and_fit_their_names():
  assert [p.stem for p in QWEN] == sorted(f"{t}_{s}" for t in ("arithmetic", "hans", "skillmix")
                                          for s in HUB)
  for path in QWEN:
    task, size = path.stem.split("_")
    text = path.read_text()
    assert text.startswith("#") and f"jaxskill run configs/qwen1.5/{path.name}" in text
    config = load_config(path)
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


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent compilation cache for this module only: the nine runs (and the seeds within a
  run) compile the same few programs, which otherwise dominate the time on a CPU."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {name: getattr(jax.config, name) for name in names}
  for name, value in zip(names, (str(tmp_path_factory.mktemp("jax_cache")), 0, 0)):
    jax.config.update(name, value)
  cc.reset_cache()  # the cache is set up once per process, on the first compile
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  cc.reset_cache()


@pytest.fixture(scope="module")
def tiny_model(hf_checkpoint, tmp_path_factory):
  """A tiny random Qwen2 checkpoint with the demo tokenizer's vocabulary and files."""
  from jaxskill.model import load_tokenizer
  vocab = len(load_tokenizer("demo"))
  model, _ = hf_checkpoint(vocab=vocab, hidden=48, intermediate=INTERMEDIATE, layers=LAYERS)
  path = tmp_path_factory.mktemp("tiny_qwen")
  model.save_pretrained(path)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(DEMO_MODEL / name, path / name)
  return path


@pytest.fixture(scope="module")
def hans_file(tmp_path_factory):
  from tests.test_tasks import HANS_HEADER, hans_rows, write_tsv
  return write_tsv(tmp_path_factory.mktemp("hans") / "heuristics_evaluation_set.txt",
                   HANS_HEADER, hans_rows(90))


@pytest.mark.parametrize("path", QWEN, ids=[p.stem for p in QWEN])
def test_config_runs_the_pipeline_on_a_tiny_model(path, tiny_model, hans_file, tmp_path):
  from jaxskill.pipeline import run
  task = path.stem.split("_")[0]
  settings = {**FAST, **PER_TASK.get(task, {}), "model.path": str(tiny_model),
              "out_dir": str(tmp_path)}
  if task == "hans":
    settings["task.path"] = str(hans_file)
  config = load_config(path, [f"{k}={v}" for k, v in settings.items()])
  own = load_config(path)
  assert len(own.find.seeds) > 1 and config.find.metrics == own.find.metrics
  assert (config.verify.selection, config.verify.group_by) == (own.verify.selection,
                                                               own.verify.group_by)

  stages = run(config, progress=False)
  assert stages == {s: "ran" for s in ("train", "find", "verify", "report")}
  run_dir = config.run_dir
  for seed in config.find.seeds:
    assert (run_dir.parent / f"{config.name}-seed{seed}" / "prompt_best.npy").exists()

  with np.load(run_dir / "correlations.npz") as corr:
    assert sorted(corr.files) == sorted(config.find.metrics)
    positions = PROMPT + 2  # the prompt slots, last_input and answer
    for name in corr.files:
      assert corr[name].shape == (LAYERS, positions, INTERMEDIATE), name
    for name in config.verify.selection:
      assert np.isfinite(corr[name]).any(), name
      assert np.nanmax(np.abs(corr[name])) <= 1 + 1e-5

  result = json.loads((run_dir / "verify.json").read_text())
  assert result["split"] == "test" and result["n"] == config.task.n_test
  assert sorted(result["selections"]) == sorted(config.verify.selection)
  assert result["group_by"] == list(config.verify.group_by)
  groups = result["baseline"]["group_accuracy"]
  assert groups and all(g.count("=") == len(config.verify.group_by) for g in groups)
  assert 0.0 <= result["baseline"]["accuracy"] <= 1.0
  for name, selection in result["selections"].items():
    assert sorted(selection["modes"]) == sorted(config.verify.modes)
    for mode, per_k in selection["modes"].items():
      assert sorted(per_k, key=int) == ["1", "2"], (name, mode)
      for k, entry in per_k.items():
        assert 0.0 <= entry["top"]["accuracy"] <= 1.0
        assert np.isfinite(entry["top"]["loss"])
        assert np.isfinite(entry["random"]["accuracy_drop"]["mean"])
        assert len(selection["neurons"]) >= int(k)

  html = (run_dir / "report.html").read_text()
  assert html.lstrip().lower().startswith("<!doctype html") and len(html) > 1000
