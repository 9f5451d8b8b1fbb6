"""Soft-prompt training: frozen params, learning, resume after SIGKILL, corrupt checkpoints,
1 vs 8 devices, and clear errors for bad inputs."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxskill
from jaxskill import cli
from jaxskill.config import TrainConfig, load_config
from jaxskill.runtime.context import prepare
from jaxskill.stages.train import init_prompt, make_optimizer, train, train_step

# The shipped model's sizes (the tests follow whatever scripts/make_demo_model.py built).
_DEMO = json.loads((jaxskill.DEMO_MODEL / "config.json").read_text())
H = _DEMO["hidden_size"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
  """A task the frozen demo model cannot do: is the first digit of "Q: a b" at least 5?"""
  path = tmp_path_factory.mktemp("data") / "digits.jsonl"
  rng = random.Random(0)
  with open(path, "w") as f:
    for _ in range(600):
      a, b = rng.randrange(10), rng.randrange(10)
      f.write(json.dumps({"text": f"Q: {a} {b}", "label": "1" if a >= 5 else "2",
                          "a": a}) + "\n")
  return path


def _overrides(data_file, out_dir, name, **extra):
  base = {"name": name, "out_dir": str(out_dir), "task.name": "table", "task.path": str(data_file),
          "task.input_field": "text", "task.label_field": "label", "task.labels": "1,2",
          "task.n_train": -1, "task.n_dev": -1, "task.n_test": -1, "train.steps": 60,
          "train.batch_size": 16, "train.lr": 0.01, "train.eval_every": 20, "train.log_every": 5,
          "train.checkpoint_every": 10, "data.max_length": 24, "prompt.length": 4}
  base.update(extra)
  return [f"{k}={v}" for k, v in base.items()]


def test_prompt_training_learns_a_task_the_frozen_model_fails(data_file, tmp_path):
  config = load_config(None, _overrides(data_file, tmp_path, "learn", **{"train.steps": 150}))
  summary = train(config, progress=False)
  assert summary["dev_accuracy_at_init"] <= 0.7  # majority class is ~0.5
  assert summary["best_dev_accuracy"] >= 0.95
  # The exact tests, on the step-0 and best prompts evaluated again after training: the same
  # accuracies as the loop's, and P(X >= k) for X ~ Bin(n, 1/2) summed here by hand.
  t = summary["learning_test"]
  assert summary["prompt_learned"] is True and t["chance"] == 0.5
  assert t["dev_accuracy_init"] == pytest.approx(summary["dev_accuracy_at_init"], abs=1e-6)
  assert t["dev_accuracy_best"] == pytest.approx(summary["best_dev_accuracy"], abs=1e-6)
  n, k = t["n_dev"], round(t["dev_accuracy_best"] * t["n_dev"])
  from math import comb
  assert t["p_vs_chance"] == pytest.approx(sum(comb(n, i) for i in range(k, n + 1)) / 2 ** n,
                                           rel=1e-9)
  assert t["p_vs_init"] <= 0.01 and t["discordant"]["best_only"] > t["discordant"]["init_only"]
  log = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log if r["split"] == "dev"] == [0, 20, 40, 60, 80, 100, 120, 140, 150]
  assert np.load(config.run_dir / "prompt_best.npy").shape == (4, H)


def test_model_params_frozen_and_optimizer_state_prompt_shaped(data_file, tmp_path):
  weights = jaxskill.DEMO_MODEL / "model.safetensors"
  digest = hashlib.sha256(weights.read_bytes()).hexdigest()
  config = load_config(None, _overrides(data_file, tmp_path, "frozen"))
  setup = prepare(config)
  params = setup.params
  before = jax.tree.map(np.array, params)
  optimizer = make_optimizer(TrainConfig(clip_norm=1.0, warmup_steps=2, decay="cosine", steps=5))
  prompt = {"embeddings": jnp.ones((4, H)) * 0.01}
  state = {"prompt": prompt, "opt_state": optimizer.init(prompt), "step": jnp.int32(0),
           "rng": jax.random.PRNGKey(0)}
  step = jax.jit(lambda s, p, b: train_step(s, p, b, model=setup.model, optimizer=optimizer,
                                            kind="classification",
                                            verbalizer=jnp.asarray(setup.verbalizer)))
  whole = setup.train.batch()
  for i in range(5):
    state, _ = step(state, params, whole.rows(np.arange(i * 16, (i + 1) * 16)))
  assert not np.array_equal(np.asarray(state["prompt"]["embeddings"]), 0.01)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, params), before)
  # The optimizer state holds prompt-shaped moments and scalar counters, nothing model-sized.
  for leaf in jax.tree.leaves(state["opt_state"]):
    assert leaf.shape in ((4, H), ()), leaf.shape
  assert sum(leaf.shape == (4, H) for leaf in jax.tree.leaves(state["opt_state"])) == 2
  # A full run leaves the checkpoint on disk untouched.
  train(config, progress=False)
  assert hashlib.sha256(weights.read_bytes()).hexdigest() == digest


def _run_cli(args, env=None):
  return subprocess.Popen([sys.executable, "-m", "jaxskill.cli", "train", "--no-progress", *args],
                          cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def test_sigkill_then_rerun_equals_uninterrupted(data_file, tmp_path):
  config_path = tmp_path / "cfg.yaml"
  config_path.write_text("train:\n  steps: 400\n  checkpoint_every: 20\n  eval_every: 100\n")
  args = _overrides(data_file, tmp_path, "killed")
  args = [a for a in args if not a.startswith(("train.steps", "train.checkpoint_every",
                                               "train.eval_every"))]
  proc = _run_cli([str(config_path), *args])
  ckpts = tmp_path / "killed" / "checkpoints"
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    done = [int(p.name) for p in ckpts.glob("*") if p.name.isdigit()
            and (p / "commit_success.txt").exists()] if ckpts.exists() else []
    if done and max(done) >= 60:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "training finished before it could be killed: make it longer"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (tmp_path / "killed" / "prompt_final.npy").exists()
  resumed = _run_cli([str(config_path), *args])
  out = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0, out
  summary = json.loads((tmp_path / "killed" / "train_summary.json").read_text())
  assert 60 <= summary["resumed_from"] < 400

  clean_args = [a.replace("name=killed", "name=clean") for a in args]
  clean = _run_cli([str(config_path), *clean_args])
  out = clean.communicate(timeout=300)[0]
  assert clean.returncode == 0, out
  a = np.load(tmp_path / "killed" / "prompt_final.npy")
  b = np.load(tmp_path / "clean" / "prompt_final.npy")
  assert a.tobytes() == b.tobytes()
  # The resumed log has each step once, as the clean one.
  log_a = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
  log_b = (tmp_path / "clean" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(x)["step"] for x in log_a] == [json.loads(x)["step"] for x in log_b]


def test_truncated_latest_checkpoint_is_skipped(data_file, tmp_path, caplog):
  config = load_config(None, _overrides(data_file, tmp_path, "trunc", **{"train.max_to_keep": 5}))
  train(config, progress=False)
  latest = config.run_dir / "checkpoints" / "60"
  for f in latest.rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  longer = load_config(None, _overrides(data_file, tmp_path, "trunc", **{"train.max_to_keep": 5,
                                                                          "train.steps": 80}))
  with caplog.at_level("WARNING"):
    summary = train(longer, progress=False)
  assert summary["resumed_from"] == 50  # the same run, asked for more steps: it continues
  assert any("step 60" in r.getMessage() and "cannot be restored" in r.getMessage()
             for r in caplog.records)
  reference = load_config(None, _overrides(data_file, tmp_path, "ref", **{"train.steps": 80}))
  train(reference, progress=False)
  np.testing.assert_array_equal(np.load(longer.run_dir / "prompt_final.npy"),
                                np.load(reference.run_dir / "prompt_final.npy"))


def test_resuming_with_another_config_is_refused(data_file, tmp_path, capsys):
  base = _overrides(data_file, tmp_path, "strict", **{"train.steps": 2})
  assert cli.main(["train", "--no-progress", str(REPO / "configs" / "base.yaml"), *base]) == 0
  changed = _overrides(data_file, tmp_path, "strict", **{"train.steps": 2, "train.lr": 0.5})
  assert cli.main(["train", "--no-progress", str(REPO / "configs" / "base.yaml"), *changed]) == 2
  assert "train.lr: 0.01 -> 0.5" in capsys.readouterr().err


def test_one_and_eight_devices_agree(data_file, tmp_path):
  extra = {"train.steps": 8, "train.eval_every": 100, "train.checkpoint_every": 100}
  one = load_config(None, _overrides(data_file, tmp_path, "one", **extra))
  assert len(jax.devices()) == 1
  train(one, progress=False)
  proc = _run_cli([str(REPO / "configs" / "base.yaml"), *_overrides(data_file, tmp_path, "eight",
                                                                      **extra)],
                  env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8",
                       "JAX_PLATFORMS": "cpu"})
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out
  assert json.loads((tmp_path / "eight" / "train_summary.json").read_text())["devices"] == 8
  a = np.load(tmp_path / "one" / "prompt_final.npy")
  b = np.load(tmp_path / "eight" / "prompt_final.npy")
  setup = prepare(one)
  start = init_prompt(one.prompt, jax.random.split(jax.random.PRNGKey(0))[0],
                      setup.params["embed_tokens"]["embedding"], setup.tokenizer)["embeddings"]
  assert np.abs(a - np.asarray(start)).max() > 1e-3  # training moved the prompt
  # 16 rows on one device vs 2 on each of 8: other matmul shapes, so the float32 gradients
  # differ by up to K * eps32 ~ 1e-3 of their scale (K ~ 1e4, see the cached-input test).
  # Adam passes that on as lr * 1e-8 * dg / g^2 per step, but as 2 lr where an element's |g|
  # is within the rounding and flips sign, so no float32 bound below ~2 lr * steps exists;
  # training has no float64 mode to compare in. 1e-5 is measured (3.4e-7 on an Intel Xeon).
  np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["missing_file", "empty", "bad_label", "unknown_key"])
def test_bad_inputs_give_clear_errors(data_file, tmp_path, capsys, case):
  extra = {}
  if case == "missing_file":
    extra["task.path"] = tmp_path / "nope.jsonl"
    want = ["nope.jsonl"]
  elif case == "empty":
    extra["task.path"] = tmp_path / "empty.jsonl"
    extra["task.path"].write_text("")
    want = ["empty.jsonl", "empty"]
  elif case == "bad_label":
    extra["task.path"] = tmp_path / "bad.jsonl"
    extra["task.path"].write_text(data_file.read_text()
                                  + json.dumps({"text": "Q: 1 1", "label": "7"}) + "\n")
    want = ["bad.jsonl", "'7'"]
  else:
    extra["train.learning_rate"] = 0.1
    want = ["unknown key", "learning_rate"]
  args = _overrides(data_file, tmp_path, case, **extra)
  assert cli.main(["train", "--no-progress", str(REPO / "configs" / "base.yaml"), *args]) == 2
  err = capsys.readouterr().err
  for fragment in want:
    assert fragment in err, (fragment, err)


@pytest.mark.parametrize("kind", ["classification", "generation"])
def test_cached_input_gives_the_same_loss_and_gradient(data_file, tmp_path, kind):
  """Running the input columns once without gradients (split) is exact, not an approximation."""
  from jaxskill.stages.train import loss_fn
  extra = {} if kind == "classification" else {
      "task.name": "arithmetic_generation", "task.operations": "plus", "task.digits": "2",
      "task.n_train": 16, "task.n_dev": 0, "task.n_test": 0, "data.max_length": 32}
  config = load_config(None, _overrides(data_file, tmp_path, "split", **extra))
  setup = prepare(config)
  assert setup.input_cols > 0
  rows = setup.train.batch().rows(np.arange(16))
  prompt = np.asarray(0.1 * jax.random.normal(jax.random.PRNGKey(3), (4, H)))
  grad = jax.grad(loss_fn, has_aux=True)

  def both(model, params, dtype):
    """(split, full) x (gradient, loss) with the prompt in `dtype`."""
    kw = dict(model=model, kind=kind, verbalizer=jnp.asarray(setup.verbalizer))
    batch = jax.tree.map(jnp.asarray, rows)
    p = {"embeddings": jnp.asarray(prompt, dtype)}
    out = [grad(p, params, batch, input_cols=s, **kw) for s in (setup.input_cols, 0)]
    return [(np.asarray(g["embeddings"]), float(m["loss"])) for g, m in out]

  # Both paths round differently (other matmul shapes, so other summation orders on each CPU),
  # and the rounding difference grows with the unit roundoff: |split - full| <= K * eps * scale,
  # K the summed lengths of the reductions along the forward and backward paths. Demo model
  # (hidden 128, intermediate 512, 4 layers, head_dim 32, t <= 32, vocab 283): per layer
  # q/k/v 128 + scores 32 + softmax 32 + mix 32 + o 128 + gate/up 128 + down 512 ~ 1e3, times
  # 4 layers, plus norm/lm_head/log_softmax, times 2 for the backward pass: K ~ 1e4.
  # In float32 that is 1e4 * 1.2e-7 * max|g| (~9) ~ 1e-2, too coarse to tell a wrong cache from
  # rounding (measured |split - full| = 1.3e-4 on an Intel Xeon with max|g| = 8.8, past the old
  # atol 1e-5 + rtol 1e-4). In float64 the same K gives 1e4 * 2.2e-16 * max|g| ~ 2e-11
  # (measured 1.1e-14), so float64 is the exactness check.
  with jax.enable_x64(True):
    model64, params64 = jaxskill.load_model(config.model.path, dtype=jnp.float64)
    assert jax.tree.leaves(params64)[0].dtype == jnp.float64
    (g_split, l_split), (g_full, l_full) = both(model64, params64, jnp.float64)
  assert g_full.dtype == np.float64 and np.abs(g_full).max() > 1e-4
  bound = 1e4 * np.finfo(np.float64).eps
  np.testing.assert_allclose(l_split, l_full, rtol=bound, atol=0)
  np.testing.assert_allclose(g_split, g_full, atol=bound * np.abs(g_full).max(), rtol=0)
  # The run's own dtype (float32) through the same code, to the float32 form of the same bound.
  (g32_split, l32_split), (g32_full, l32_full) = both(setup.model, setup.params, jnp.float32)
  bound32 = 1e4 * np.finfo(np.float32).eps
  np.testing.assert_allclose(l32_split, l32_full, rtol=bound32, atol=0)
  np.testing.assert_allclose(g32_split, g32_full, atol=bound32 * np.abs(g32_full).max(), rtol=0)


def test_all_checkpoints_unreadable_refuses_every_time(data_file, tmp_path, capsys):
  args = [str(REPO / "configs" / "base.yaml"),
          *_overrides(data_file, tmp_path, "allbad", **{"train.steps": 20})]
  assert cli.main(["train", "--no-progress", *args]) == 0
  for f in (tmp_path / "allbad" / "checkpoints").rglob("*"):
    if f.is_file() and f.parent.name == "d":
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
  # Asked for more steps, training must restore a checkpoint (a finished prompt alone is
  # enough for the same steps, which are then skipped).
  longer = [args[0], *_overrides(data_file, tmp_path, "allbad", **{"train.steps": 30})]
  for _ in range(2):  # the second re-run must not find an empty directory and start over
    assert cli.main(["train", "--no-progress", *longer]) == 2
    assert "refusing to restart from zero" in capsys.readouterr().err


def test_no_dev_split_and_too_few_steps(data_file, tmp_path):
  from jaxskill.config import RunConfigError
  base = {"task.n_dev": 0, "train.steps": 4, "train.checkpoint_every": 2}
  summary = train(load_config(None, _overrides(data_file, tmp_path, "nodev", **base)),
                  progress=False)
  assert summary["best_dev_accuracy"] is None and summary["n_dev"] == 0
  assert summary["prompt_learned"] is None and "no dev split" in summary["learning_test"]["reason"]
  fewer = load_config(None, _overrides(data_file, tmp_path, "nodev", **{**base,
                                                                        "train.steps": 2}))
  with pytest.raises(RunConfigError, match="checkpoints reach step 4, beyond train.steps=2"):
    train(fewer, progress=False)


def test_log_truncation(tmp_path):
  from jaxskill.stages.train import _truncate_log
  path = tmp_path / "m.jsonl"
  lines = [json.dumps({"step": s, "split": "dev"}) for s in (0, 5, 10)]
  path.write_text("\n".join(lines) + '\n{"step": 15, "spl')  # the last line cut by a crash
  _truncate_log(path, 5)
  assert path.read_text().splitlines() == lines[:2]
  _truncate_log(path, 0)  # a fresh start keeps nothing: step 0 is evaluated again
  assert path.read_text() == ""


def test_a_row_plan_without_row_0_keeps_the_layout(data_file, tmp_path):
  """Under a multi-process row plan a process may not tokenize row 0; the prompt's column
  (a static argument of the compiled step) must still be the layout's, in every process."""
  config = load_config(None, _overrides(data_file, tmp_path, "plan"))
  whole = prepare(config)
  part = prepare(config, lambda split, n: np.arange(1, min(n, 5)))
  assert part.train.present is not None and not part.train.present[0]
  assert part.train.prompt_start[0] == 0 and whole.train.prompt_start[0] > 0  # row 0 not there
  assert part.input_cols == whole.input_cols == int(whole.train.prompt_start[1]) > 0


def test_answer_window_logits_equal_every_position(data_file, tmp_path):
  """Generation computes logits only at the answer's q tokens (`Batch.answer_budget`): every
  metric and the prompt's gradient are those of the logits at every position."""
  from jaxskill.model import forward
  from jaxskill.stages.train import loss_fn
  extra = {"task.name": "arithmetic_generation", "task.operations": "plus,minus",
           "task.digits": "2", "task.n_train": 16, "task.n_dev": 0, "task.n_test": 0,
           "data.max_length": 32}
  config = load_config(None, _overrides(data_file, tmp_path, "split", **extra))
  setup = prepare(config)
  windowed = jax.tree.map(jnp.asarray, setup.train.batch().rows(np.arange(16)))
  assert 0 < windowed.answer_budget < windowed.input_ids.shape[1] // 2
  every = windowed.replace(answer_budget=0)  # the path before the window: all t positions
  prompt = 0.1 * jax.random.normal(jax.random.PRNGKey(3), (4, H))
  with jax.enable_x64(True):  # exactness: float64, where both paths round far below 1e-10
    model, params = jaxskill.load_model(config.model.path, dtype=jnp.float64)
    p = {"embeddings": jnp.asarray(prompt, jnp.float64)}
    kw = dict(model=model, kind="generation", verbalizer=jnp.asarray(setup.verbalizer))
    for cols in (0, setup.input_cols):
      out = [forward.prompted_apply(model, params, p, b, kind="generation", start=cols)
             for b in (windowed, every)]
      assert out[0].logits.shape[1] == windowed.answer_budget
      assert out[1].logits.shape[1] == windowed.input_ids.shape[1] - cols
      a, b = (forward.metrics(o.logits, o.batch, "generation", kw["verbalizer"]) for o in out)
      for name in forward.METRICS:
        np.testing.assert_allclose(np.asarray(a[name]), np.asarray(b[name]), rtol=1e-12,
                                   atol=1e-12, err_msg=name)
      grads = [jax.grad(loss_fn, has_aux=True)(p, params, b, input_cols=cols, **kw)[0]
               for b in (windowed, every)]
      np.testing.assert_allclose(grads[0]["embeddings"], grads[1]["embeddings"], rtol=0,
                                 atol=1e-12 * float(np.abs(grads[1]["embeddings"]).max()))
