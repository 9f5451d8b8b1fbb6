"""`jaxskill.Run` against the files it reads, read here with numpy and json alone: the same
arrays, the ranking recomputed by hand, every verify.json row."""

import json
from pathlib import Path

import numpy as np
import pytest

from jaxskill import Run
from jaxskill.runtime.pipeline import StaleRunError

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = ["train.steps=4", "task.n_train=32", "task.n_dev=16", "task.n_test=16",
             "verify.k_list=1,3", "verify.k=3", "verify.random_draws=2",
             "verify.modes=zero,noise", "find.permutations=20"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp("runs")
  return Run.create(ROOT / "configs" / "demo.yaml", [*OVERRIDES, f"out_dir={out}"]).verify()


def test_arrays_are_the_files(run):
  corr, pvals = np.load(run.run_dir / "correlations.npz"), np.load(run.run_dir / "pvalues.npz")
  summary = json.loads((run.run_dir / "summary.json").read_text())
  assert run.metrics == tuple(summary["metrics"]) and run.positions == tuple(summary["positions"])
  assert set(run.correlations) == set(corr.files) == set(pvals.files)
  for name in corr.files:
    np.testing.assert_array_equal(run.correlations[name].values, corr[name])
    np.testing.assert_array_equal(np.asarray(run.pvalues[name]), pvals[name])
    assert run.correlations[name].axes == ("layer", "position", "neuron")
  layer, k, neuron = 2, 0, 17
  assert run.correlations["label"].at(layer, run.positions[k], neuron) == corr["label"][2, 0, 17]
  assert run.prompts[run.config.name].shape == (8, 128)
  np.testing.assert_array_equal(run.prompts[run.config.name],
                                np.load(run.run_dir / "prompt_best.npy"))


def test_top_neurons_rank_by_the_largest_abs_r_over_positions(run):
  r = np.load(run.run_dir / "correlations.npz")["confidence"]
  p = np.load(run.run_dir / "pvalues.npz")["confidence"]
  best = np.nanmax(np.abs(r), axis=1)  # [l, i]
  order = np.argsort(-np.nan_to_num(best, nan=-1.0).ravel(), kind="stable")[:6]
  got = run.top_neurons("confidence", 6)
  assert [(n.layer, n.neuron) for n in got] == [divmod(int(j), r.shape[2]) for j in order]
  for n in got:
    k = run.positions.index(n.position)
    assert n.r == r[n.layer, k, n.neuron] and abs(n.r) == best[n.layer, n.neuron]
    assert n.p == p[n.layer, k, n.neuron]
  with pytest.raises(KeyError, match="'nope' is not among the metrics"):
    run.top_neurons("nope")


def test_verification_rows_are_verify_json(run):
  verify = json.loads((run.run_dir / "verify.json").read_text())
  rows = run.verification
  expected = [(sel, mode, int(k), row) for sel, s in verify["selections"].items()
              for mode, by_k in s["modes"].items() for k, row in by_k.items()]
  assert len(rows) == len(expected) == len(verify["selections"]) * 2 * 2
  for got, (sel, mode, k, row) in zip(rows, expected):
    assert (got.selection, got.mode, got.k) == (sel, mode, k)
    assert got.neurons == [tuple(n) for n in verify["selections"][sel]["neurons"][:k]]
    assert (got.accuracy_drop, got.verdict, got.p_empirical) == (
        row["accuracy_drop"], row["verdict"], row["p_empirical"])
  summary = json.loads((run.run_dir / "train_summary.json").read_text())
  assert run.verdicts["prompt_learned"] == {run.config.name: summary["prompt_learned"]}
  assert set(run.verdicts["verification"]) == {f"{s}|{m}|{k}" for s, m, k, _ in expected}


def test_open_checks_the_run_and_create_its_arguments(run, tmp_path):
  again = Run.open(run.run_dir)
  assert again.top_neurons("label", 4) == run.top_neurons("label", 4)
  with pytest.raises(FileNotFoundError, match="no config.yaml"):
    Run.open(tmp_path)
  saved = run.run_dir / "config.yaml"
  text = saved.read_text()
  try:
    saved.write_text(text.replace("steps: 4", "steps: 5"))
    with pytest.raises(StaleRunError, match="train.steps"):
      Run.open(run.run_dir)
  finally:
    saved.write_text(text)
  with pytest.raises(ValueError, match="overrides go with a config file"):
    Run.create(run.config, ["train.steps=2"])
  fresh = Run.create(ROOT / "configs" / "demo.yaml", [f"out_dir={tmp_path}"])
  with pytest.raises(FileNotFoundError, match="run the find stage first"):
    fresh.correlations
