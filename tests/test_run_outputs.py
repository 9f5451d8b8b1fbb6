"""The files of a finished run. Every file that find, verify and report write, damaged (cut short, or deleted) one at a time:
`jaxskill run` recomputes what is needed and ends with the outputs of an undamaged run, never
"done already, skipped" into an incomplete report or a refusal that the same command repeats.
On the code before the stages kept their outputs' hashes (6db25d3), a cut pvalues.npz,
token_activations.npz or activations_heldout.npz was skipped into a report that refused to read
it, and a deleted one gave a report without p-values or a neuron browser with no panels. And
every file is readable by group and others under umask 022 (on 6db25d3 each atomically written
one was 0600, the temporary file's mode)."""

import json
import os
import stat

import numpy as np
import pytest

from jaxskill import cli
from jaxskill.runtime import files

DEMO = "configs/demo.yaml"
SMALL = ["task.n_train=32", "task.n_dev=8", "task.n_test=16", "train.steps=2",
         "train.batch_size=8", "train.eval_every=2", "find.batch_size=16", "verify.k_list=1,2",
         "verify.k=2", "verify.random_draws=2", "verify.modes=zero,mean", "verify.batch_size=16",
         "prompt.length=2", "find.report_neurons=1", "find.browser_examples=2",
         "find.permutations=2", "find.metrics=label,correct", "verify.selection=label",
         "verify.group_by="]  # two metrics: fewer figures to draw in each of the many runs
# What a run may legitimately write differently each time: its own timings.
TIMED = {"train_summary.json": ("seconds",), "verify.json": ("seconds",)}


def _run(capsys, tmp_path) -> tuple[int, str]:
  code = cli.main(["run", DEMO, *SMALL, f"out_dir={tmp_path}", "--no-progress"])
  out = capsys.readouterr()
  return code, out.out + out.err


def _outputs(run_dir) -> dict[str, bytes]:
  """The run's result files (not its logs, checkpoints, lock or stage record)."""
  skip = {"stages.json", ".lock", "metrics.jsonl", "verify_progress.jsonl"}
  return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())
          if p.is_file() and p.name not in skip}


def _same(name: str, a: bytes, b: bytes) -> bool:
  if name not in TIMED:
    return a == b
  x, y = json.loads(a), json.loads(b)
  for key in TIMED[name]:
    x.pop(key, None), y.pop(key, None)
  return x == y


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished run directory and its outputs' bytes."""
  tmp_path = tmp_path_factory.mktemp("damaged")
  umask = os.umask(0o022)  # the usual one; the test's own may be stricter
  try:
    code = cli.main(["run", DEMO, *SMALL, f"out_dir={tmp_path}", "--no-progress"])
  finally:
    os.umask(umask)
  assert code == 0
  return tmp_path, _outputs(tmp_path / "demo")


FIND = ["correlations.npz", "pvalues.npz", "summary.json", "neurons.csv", "activations.npz",
        "activations_heldout.npz", "token_activations.npz", "predictivity.npz"]
VERIFY = ["verify.json", "neuron_stats.npz"]
REPORT = ["report.html", "neurons.json", "r_hist.png", "layers.png", "verify.png", "dose.png",
          "kde_label.png"]


def test_the_run_writes_every_file_named_here(finished):
  _, reference = finished
  assert set(FIND + VERIFY + REPORT) <= set(reference), sorted(reference)


def test_every_file_is_readable_by_group_and_others(finished):
  tmp_path, _ = finished
  paths = [p for p in (tmp_path / "demo").rglob("*") if p.is_file()]
  assert len(paths) > len(FIND + VERIFY + REPORT)  # checkpoints and logs too
  for path in paths:
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o044 == 0o044 and not mode & 0o022, f"{path}: mode {mode:o}"


# Each file one way (cut short, or deleted), the two ways taking turns: both end in the same
# check (the file's recorded size and hash), and every case costs a recomputation.
CASES = [(name, ("cut", "deleted")[i % 2]) for i, name in enumerate(FIND + VERIFY + REPORT)]


@pytest.mark.parametrize("name,how", CASES)
def test_a_damaged_output_is_recomputed(finished, capsys, name, how):
  tmp_path, reference = finished
  run_dir = tmp_path / "demo"
  path = run_dir / name
  if how == "cut":
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
  else:
    path.unlink()
  code, out = _run(capsys, tmp_path)
  assert code == 0, out
  stage = "find" if name in FIND else "verify" if name in VERIFY else None
  if stage is not None:
    assert f"{stage}: running (outputs missing or changed since it ran: {name})" in out, out
    assert "train: done already, skipped" in out
  else:  # the report is written anew each time; the stages before it are kept
    assert "find: done already, skipped" in out and "verify: done already, skipped" in out
  now = _outputs(run_dir)
  assert sorted(now) == sorted(reference)
  for file, data in reference.items():
    assert _same(file, now[file], data), f"{file} differs after {name} was {how}"


def test_report_of_a_damaged_directory_names_the_command_that_recomputes(finished, capsys):
  tmp_path, _ = finished
  run_dir = tmp_path / "demo"
  (run_dir / "token_activations.npz").unlink()
  code = cli.main(["report", str(run_dir)])
  err = capsys.readouterr().err
  assert code == 2
  assert ("the find stage is not up to date" in err
          and "outputs missing or changed since it ran: token_activations.npz" in err
          and f"jaxskill run {run_dir / 'config.yaml'}" in err), err
  # ... and that command does recompute it.
  code, out = _run(capsys, tmp_path)
  assert code == 0 and (run_dir / "token_activations.npz").exists(), out
  assert np.isfinite(files.load_npz(run_dir / "token_activations.npz")["activations"]).all()
