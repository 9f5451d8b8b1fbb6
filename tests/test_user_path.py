"""The command line as users run it: stage commands one by one after a config change, faults
(torn files, a second process, a diverging loss) and bad values. Each case here failed on the
code before the stage record (commit 754ca24): stale results were read silently, a run crashed
after its work was done, or an error came out as a traceback."""

import json
import os

import jax
import numpy as np
import pytest

from jaxskill import cli
from jaxskill.config import RunConfigError, load_config
from jaxskill.runtime import files
from tests.lock_holder import lock_held_by_another_process

DEMO = "configs/demo.yaml"
SMALL = ["task.n_train=32", "task.n_dev=8", "task.n_test=16", "train.steps=2",
         "train.batch_size=8", "train.eval_every=2", "find.batch_size=16", "verify.k_list=1,2",
         "verify.k=2", "verify.random_draws=2", "verify.modes=zero", "verify.batch_size=16",
         "prompt.length=2", "find.report_neurons=1"]
METRICS = ["label", "correct", "confidence", "meta_last_digit_only",
           "meta_candidate_last_digit_correct"]


def jaxskill(capsys, *argv) -> tuple[int, str, str]:
  """`jaxskill ARGV` in this process (the compiled programs are shared between calls)."""
  code = cli.main([*argv, "--no-progress"])
  out = capsys.readouterr()
  return code, out.out, out.err


def _args(tmp_path, *changes) -> list[str]:
  """configs/demo.yaml made small, with `changes` ("key=value") replacing the same keys."""
  keys = {c.split("=")[0] for c in changes}
  return [DEMO, *[o for o in SMALL if o.split("=")[0] not in keys], f"out_dir={tmp_path}",
          *changes]


def test_stage_commands_after_a_config_change(tmp_path, capsys):
  run_dir = tmp_path / "demo"
  code, _, _ = jaxskill(capsys, "train", *_args(tmp_path))
  assert code == 0 and (run_dir / "prompt_best.npy").exists()
  # Training settings changed: find refuses to build on the old prompt, naming the key.
  code, _, err = jaxskill(capsys, "find", *_args(tmp_path, "train.lr=0.01"))
  assert code == 2 and "train.lr: 0.003 -> 0.01" in err
  code, _, err = jaxskill(capsys, "find", *_args(tmp_path, "prompt.length=3"))
  assert code == 2 and "prompt.length: 2 -> 3" in err
  assert not (run_dir / "correlations.npz").exists()

  code, _, _ = jaxskill(capsys, "find", *_args(tmp_path))
  assert code == 0
  before = files.load_npz(run_dir / "correlations.npz")
  # The same metrics in another order: recomputed, never the old statistics under new names.
  reordered = ["correct", "label", "confidence", "meta_candidate_last_digit_correct",
               "meta_last_digit_only"]
  code, out, _ = jaxskill(capsys, "find", *_args(tmp_path, f"find.metrics={','.join(reordered)}"))
  assert code == 0 and "find: running (config changed: find.metrics" in out
  after = files.load_npz(run_dir / "correlations.npz")
  for name in METRICS:
    # The same float32 sums in the same batch order; only the metric's column moved. Swapped
    # metrics would differ by O(0.1): |label r - correct r| here is far above 1e-6.
    np.testing.assert_allclose(after[name], before[name], atol=1e-6, equal_nan=True)

  # More steps: training continues from its checkpoint; discovery follows the new prompt.
  code, out, _ = jaxskill(capsys, "find", *_args(tmp_path, "train.steps=4"))
  assert code == 0 and "train: running (config changed: train.steps: 2 -> 4)" in out
  summary = json.loads((run_dir / "train_summary.json").read_text())
  assert (summary["steps"], summary["resumed_from"]) == (4, 2)
  code, _, _ = jaxskill(capsys, "find", *_args(tmp_path, "train.steps=4", "name=straight"))
  assert code == 0
  straight = tmp_path / "straight"
  # Resuming is bitwise: the same programs on the same data from the same saved state.
  np.testing.assert_array_equal(np.load(run_dir / "prompt_best.npy"),
                                np.load(straight / "prompt_best.npy"))
  for name, r in files.load_npz(straight / "correlations.npz").items():
    np.testing.assert_array_equal(files.load_npz(run_dir / "correlations.npz")[name], r)

  code, _, _ = jaxskill(capsys, "verify", *_args(tmp_path, "train.steps=4"))
  assert code == 0 and (run_dir / "verify.json").exists()
  code, out, _ = jaxskill(capsys, "report", str(run_dir))
  assert code == 0 and "report.html" in out
  # config.yaml edited by hand: the directory's verification no longer belongs to it.
  saved = run_dir / "config.yaml"
  saved.write_text(saved.read_text().replace("  k: 2\n", "  k: 1\n"))
  code, _, err = jaxskill(capsys, "report", str(run_dir))
  assert code == 2 and "verify.k: 2 -> 1" in err and "verify stage is not up to date" in err


def test_train_on_a_seeded_config_trains_the_seeds(tmp_path, capsys):
  code, out, _ = jaxskill(capsys, "train", *_args(tmp_path, "find.seeds=3,4"))
  assert code == 0
  for seed in (3, 4):
    assert (tmp_path / f"demo-seed{seed}" / "prompt_best.npy").exists()
    assert f"prompt training (demo-seed{seed})" in out
  assert not (tmp_path / "demo" / "prompt_best.npy").exists()  # find never reads it
  seeded = load_config(tmp_path / "demo-seed4" / "train_config.yaml")
  assert seeded.train.seed == 4


def test_a_constant_metric_is_reported_not_crashed_on(tmp_path, capsys):
  # Every candidate right: the label and the last-digit columns are constant.
  code, out, err = jaxskill(capsys, "run", *_args(tmp_path, "task.p_correct=1.0"))
  assert code == 0, err
  assert "label: undefined (the metric is constant" in out
  result = json.loads((tmp_path / "demo" / "verify.json").read_text())
  assert result["selections"] == {}
  assert sorted(result["skipped"]) == ["label", "meta_candidate_last_digit_correct"]
  assert "label: not verified (no neuron has a defined correlation" in out
  assert "Not verified: label" in (tmp_path / "demo" / "report.html").read_text()


def test_damaged_outputs_are_recomputed_or_named(tmp_path, capsys):
  run_dir = tmp_path / "demo"
  assert jaxskill(capsys, "run", *_args(tmp_path))[0] == 0
  prompt = np.load(run_dir / "prompt_best.npy")
  verified = json.loads((run_dir / "verify.json").read_text())
  # A torn correlations.npz: discovery runs again, then verification on its result.
  data = (run_dir / "correlations.npz").read_bytes()
  (run_dir / "correlations.npz").write_bytes(data[:len(data) // 2])
  code, out, _ = jaxskill(capsys, "verify", *_args(tmp_path))
  assert code == 0 and "find: running (outputs missing or changed since it ran: correlations.npz)" in out
  assert json.loads((run_dir / "verify.json").read_text()) == verified
  # A torn prompt: training restores its last checkpoint and writes the same prompt again.
  data = (run_dir / "prompt_best.npy").read_bytes()
  (run_dir / "prompt_best.npy").write_bytes(data[:40])
  code, out, _ = jaxskill(capsys, "run", *_args(tmp_path))
  assert code == 0 and "train: running (outputs missing or changed since it ran: prompt_best.npy)" in out
  np.testing.assert_array_equal(np.load(run_dir / "prompt_best.npy"), prompt)
  # A torn verify.json under `report DIR`: an error naming the file and the command that
  # recomputes it, not a traceback.
  text = (run_dir / "verify.json").read_text()
  (run_dir / "verify.json").write_text(text[:len(text) // 2])
  code, _, err = jaxskill(capsys, "report", str(run_dir))
  assert code == 2 and "changed since it ran: verify.json); run `jaxskill run" in err
  # Nothing is written in place: no temporary file is left beside the outputs.
  assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_a_second_process_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, capsys):
  run_dir = tmp_path / "demo"
  with lock_held_by_another_process(run_dir) as holder:
    code, _, err = jaxskill(capsys, "train", *_args(tmp_path))
    assert code == 2 and f"in use by another jaxskill process (pid {holder.pid}" in err
    assert not (run_dir / "metrics.jsonl").exists()
  # The killed holder's lock file is still there, with its pid; the lock itself died with it.
  assert (run_dir / ".lock").read_text().strip() == str(holder.pid)
  code, _, err = jaxskill(capsys, "train", *_args(tmp_path))
  assert code == 0, err
  records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert len(records) == len({(r["step"], r["split"]) for r in records})


def test_bad_values_are_refused_with_the_key_named(tmp_path, capsys):
  assert jaxskill(capsys, "find", *_args(tmp_path))[0] == 0
  # The demo model has 4 x 512 neurons.
  code, _, err = jaxskill(capsys, "verify", *_args(tmp_path, "verify.k=100000"))
  assert code == 2 and "K=100000 is more than the model's 2048 neurons" in err
  code, _, err = jaxskill(capsys, "verify", *_args(tmp_path, "verify.k_list=1,1200"))
  assert code == 2 and "random sets matched per layer need more neurons" in err
  for name in ("", "/abs/path", "..", "a/b"):
    code, _, err = jaxskill(capsys, "train", *_args(tmp_path, f"name={name}"))
    assert code == 2 and "must be a plain directory name" in err, name
  assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_a_diverging_loss_stops_training_with_nothing_saved(tmp_path, capsys):
  code, _, err = jaxskill(capsys, "train", *_args(tmp_path, "train.lr=1e30", "train.steps=3",
                                                  "train.eval_every=3"))
  assert code == 2 and "the loss is not finite at step" in err and "train.lr" in err
  run_dir = tmp_path / "demo"
  assert not (run_dir / "prompt_best.npy").exists()
  assert not (run_dir / "prompt_final.npy").exists()
  assert not (run_dir / "checkpoints").exists() or not any(
      p.name.isdigit() for p in (run_dir / "checkpoints").iterdir())


def test_options_go_anywhere_among_the_overrides():
  args = cli.parse_args(["run", DEMO, "train.lr=1e-3", "--no-progress", "train.steps=3"])
  assert args.no_progress and args.overrides == ["train.lr=1e-3", "train.steps=3"]
  with pytest.raises(SystemExit):
    cli.parse_args(["run", DEMO, "train.lr=1e-3", "--no-such-option"])


def test_run_names_are_plain_directory_names():
  for name in ("", ".", "..", "/abs", "a/b", " padded"):
    with pytest.raises(RunConfigError, match="plain directory name"):
      load_config(None, [f"name={name}"])
  assert load_config(None, ["name=qwen1.5-7b-hans"]).name == "qwen1.5-7b-hans"


def test_best_dev_prompt_compares_in_float32(tmp_path, monkeypatch):
  """A dev accuracy that never improves on the untrained prompt's keeps that prompt as best.
  0.7 rounds down in float32: compared as float64 against the stored float32 best, the same
  accuracy looked like an improvement."""
  from jaxskill.runtime.context import prepare
  from jaxskill.runtime.pipeline import run
  from jaxskill.stages import train as train_lib
  monkeypatch.setattr(train_lib, "_evaluate", lambda *a, **k: {"loss": 1.0, "accuracy": 0.7})
  config = load_config(_args(tmp_path, "train.steps=4")[0], _args(tmp_path, "train.steps=4")[1:])
  run(config, until="train", progress=False)
  setup = prepare(config)
  init_key, _ = jax.random.split(jax.random.PRNGKey(config.train.seed))
  initial = train_lib.init_prompt(config.prompt, init_key,
                                  setup.params["embed_tokens"]["embedding"], setup.tokenizer)
  best = np.load(config.run_dir / "prompt_best.npy")
  np.testing.assert_array_equal(best, np.asarray(initial["embeddings"]))
  assert not np.array_equal(best, np.load(config.run_dir / "prompt_final.npy"))


def test_a_config_json_that_is_not_an_object_is_named(tmp_path, capsys):
  model_dir = tmp_path / "model"
  model_dir.mkdir()
  (model_dir / "config.json").write_text("[1, 2]")
  code, _, err = jaxskill(capsys, "train", *_args(tmp_path, f"model.path={model_dir}"))
  assert code == 2 and str(model_dir / "config.json") in err


def test_a_slow_lock_holder_does_not_block_forever():
  """The lock is taken without waiting: a held lock is an immediate, named error."""
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    with files.run_lock(d):
      with pytest.raises(files.RunLockError, match=f"pid {os.getpid()}"):
        with files.run_lock(d):
          pass
    with files.run_lock(d):  # released on exit
      pass


def test_a_prompt_left_by_a_run_without_seeds_is_not_reused(tmp_path, capsys):
  """The run directory of a seeded config keeps the prompt of an earlier unseeded run; going
  back to no seeds with other training settings must not read that prompt as theirs."""
  assert jaxskill(capsys, "train", *_args(tmp_path))[0] == 0
  seeded = _args(tmp_path, "train.lr=0.5", "find.seeds=1,2")
  assert jaxskill(capsys, "train", *seeded)[0] == 0
  code, _, err = jaxskill(capsys, "find", *_args(tmp_path, "train.lr=0.5"))
  assert code == 2 and "train.lr: 0.003 -> 0.5" in err
  code, _, err = jaxskill(capsys, "report", str(tmp_path / "demo-seed1"))
  assert code == 2 and "report the run directory of the config" in err


def test_edited_records_are_not_done(tmp_path, capsys):
  run_dir = tmp_path / "demo"
  assert jaxskill(capsys, "run", *_args(tmp_path))[0] == 0
  # A record edited by hand into something else (here a bare fingerprint, or a record without
  # the keys it was made under): that stage is simply not done, and is computed again.
  record = json.loads((run_dir / "stages.json").read_text())
  (run_dir / "stages.json").write_text(json.dumps(
      {"train": record["train"], "find": record["find"]["fingerprint"],
       "verify": {k: v for k, v in record["verify"].items() if k != "config"}}))
  code, out, err = jaxskill(capsys, "run", *_args(tmp_path))
  assert code == 0, err
  assert "== train: done already, skipped" in out
  assert "== find: running (not run yet)" in out and "== verify: running" in out
  assert "the record of 'find' is not understood" in err
  # A record edited by hand into something else: that stage is simply not done.
  prompt = np.load(run_dir / "prompt_best.npy")
  (run_dir / "stages.json").write_text(json.dumps({"train": {"state": "done"}, "find": [1]}))
  code, out, err = jaxskill(capsys, "run", *_args(tmp_path))
  assert code == 0, err
  assert "== train: running (not run yet)" in out
  np.testing.assert_array_equal(np.load(run_dir / "prompt_best.npy"), prompt)


def test_refused_input_removes_nothing(tmp_path, capsys):
  run_dir = tmp_path / "demo"
  assert jaxskill(capsys, "run", *_args(tmp_path))[0] == 0
  verified = (run_dir / "verify.json").read_text()
  code, _, err = jaxskill(capsys, "run", *_args(tmp_path, "verify.k=100000"))
  assert code == 2 and "K=100000" in err
  assert (run_dir / "verify.json").read_text() == verified
  code, out, _ = jaxskill(capsys, "run", *_args(tmp_path))
  assert code == 0 and "== verify: done already, skipped" in out


def test_an_out_dir_that_cannot_hold_runs_is_named(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  code, _, err = jaxskill(capsys, "train", *_args(blocker))
  assert code == 2 and f"cannot lock {blocker / 'demo'}" in err
  code, _, err = jaxskill(capsys, "report", str(tmp_path / "missing"))
  assert code == 2 and "no such run directory" in err


@pytest.mark.parametrize("command", ["run", "train"])
def test_a_refused_checkpoint_creates_no_run_directory(tmp_path, capsys, command):
  """A config.json with a field that changes the computation is refused before the run
  directory or its seed directories exist."""
  import shutil
  from jaxskill.model.checkpoint import DEMO_MODEL
  model_dir = tmp_path / "model"
  shutil.copytree(DEMO_MODEL, model_dir)
  d = json.loads((model_dir / "config.json").read_text())
  (model_dir / "config.json").write_text(json.dumps({**d, "use_sliding_window": True}))
  out_dir = tmp_path / "runs"
  code, _, err = jaxskill(capsys, command, *_args(out_dir, f"model.path={model_dir}",
                                                  "find.seeds=0,1"))
  assert code == 2 and str(model_dir / "config.json") in err and "use_sliding_window" in err
  assert not out_dir.exists()


def test_unread_config_fields_are_named_once(tmp_path, capsys, caplog):
  """A config.json with a key no family class reads (as transformers' GGUF loader writes) is
  accepted, and the run names it in one info line."""
  import logging
  import shutil
  from jaxskill.model.checkpoint import DEMO_MODEL
  model_dir = tmp_path / "model"
  shutil.copytree(DEMO_MODEL, model_dir)
  d = json.loads((model_dir / "config.json").read_text())
  (model_dir / "config.json").write_text(json.dumps({**d, "unk_token_id": 0}))
  with caplog.at_level(logging.INFO, logger="jaxskill"):
    code, _, _ = jaxskill(capsys, "train", *_args(tmp_path, f"model.path={model_dir}"))
  assert code == 0
  lines = [r.getMessage() for r in caplog.records if "not read by" in r.getMessage()]
  assert len(lines) == 1 and "'unk_token_id'" in lines[0], lines
