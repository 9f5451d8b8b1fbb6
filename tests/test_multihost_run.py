"""Two processes under jax.distributed (localhost, CPU, gloo; 2 devices each) run the whole
pipeline from the CLI - prompt training, discovery, verification, report - into one shared run
directory, and get what one process with 4 devices gets."""

import json
import os
import subprocess
import sys

import numpy as np

from tests.test_multihost import _env, _free_port

ARGS = ["run", "--no-progress", "configs/base.yaml", "name=mh", "task.operations=plus,minus",
        "task.digits=2", "task.n_train=32", "task.n_dev=8", "task.n_test=16", "train.steps=4",
        "train.batch_size=8", "train.eval_every=2", "train.checkpoint_every=2",
        "data.max_length=40", "prompt.length=4", "find.batch_size=8",
        "find.metrics=label,confidence,meta_last_digit_only", "verify.k_list=1,4", "verify.k=4",
        "verify.random_draws=2", "verify.modes=zero,noise", "verify.batch_size=8"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(out_dir, env):
  return subprocess.Popen([sys.executable, "-m", "jaxskill.cli", *ARGS, f"out_dir={out_dir}"],
                          env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def test_two_processes_run_the_pipeline_like_one(tmp_path):
  one = _cli(tmp_path / "one", _env(4))
  out = one.communicate(timeout=600)[0]
  assert one.returncode == 0, out[-3000:]
  port = _free_port()
  procs = [_cli(tmp_path / "two", {**_env(2), "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                                   "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, text in zip(procs, outs):
    assert p.returncode == 0, text[-3000:]
  # Each process tokenized only its share. Training: 4 steps x 4 of the 8 rows of a batch
  # within the first epoch of 32, so 16 disjoint rows each; streamed splits: half of each batch.
  for i, text in enumerate(outs):
    for rows, n, split in ((16, 32, "train"), (4, 8, "dev"), (8, 16, "test")):
      assert f"process {i} of 2 tokenized {rows} of the {n} {split} rows" in text, text[-3000:]
  assert "tokenized" not in out  # one process: every row, no plan
  a, b = tmp_path / "one" / "mh", tmp_path / "two" / "mh"
  # 4 devices with 2 rows each in both runs: the same per-device programs, so only the order
  # in which the 4 partial sums are all-reduced differs, <= 3 u (u = 6e-8) of their summed
  # magnitudes. Adam moves an element by ~lr * 1e-8 * dg / g^2 for that (measured 0 here).
  np.testing.assert_allclose(np.load(b / "prompt_best.npy"), np.load(a / "prompt_best.npy"),
                             atol=1e-5, rtol=0)
  ra, rb = np.load(a / "correlations.npz"), np.load(b / "correlations.npz")
  assert sorted(ra.files) == sorted(rb.files)
  # The same activations; float32 statistics summed in another order across the devices:
  # each run within r_rounding_bound(8, 1) = 3.4e-6 of the exact r (test_stats), so <= 6.7e-6
  # apart (measured 1.2e-7).
  for name in ra.files:
    np.testing.assert_allclose(rb[name], ra[name], atol=1e-5, rtol=0, err_msg=name)
  log = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log if r["split"] == "dev"] == [0, 2, 4]  # one writer, no repeats
  va, vb = (json.loads((d / "verify.json").read_text()) for d in (a, b))
  assert vb["baseline"]["accuracy"] == va["baseline"]["accuracy"]
  for mode in ("zero", "noise"):
    row_a, row_b = (v["selections"]["label"]["modes"][mode]["4"] for v in (va, vb))
    # at most one of the 16 test predictions may flip, for an answer tied to float32 rounding
    assert abs(row_a["top"]["accuracy"] - row_b["top"]["accuracy"]) <= 1 / 16
  assert (b / "report.html").exists()


def test_two_processes_resume_training_from_their_orbax_checkpoint(tmp_path):
  """Both processes restore the step-4 checkpoint and continue to step 6: the same prompt as
  one process that trained 6 steps straight."""
  base = ["train", "--no-progress", "configs/base.yaml", "name=res", "task.operations=plus",
          "task.digits=2", "task.n_train=32", "task.n_dev=8", "task.n_test=0",
          "train.batch_size=8", "train.eval_every=2", "train.checkpoint_every=2",
          "train.async_checkpoint=false", "data.max_length=40", "prompt.length=4"]

  def launch(out_dir, steps, env):
    return subprocess.Popen([sys.executable, "-m", "jaxskill.cli", *base, f"out_dir={out_dir}",
                             f"train.steps={steps}"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  def both(steps):
    port = _free_port()
    procs = [launch(tmp_path / "two", steps, {
        **_env(2), "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, outs):
      assert p.returncode == 0, text[-3000:]
    return outs

  both(4)
  outs = both(6)
  assert "resumed from 4" in outs[0]
  one = launch(tmp_path / "one", 6, _env(4))
  text = one.communicate(timeout=600)[0]
  assert one.returncode == 0, text[-3000:]
  # As in the test above: the same per-device programs, only the all-reduce order differs.
  np.testing.assert_allclose(np.load(tmp_path / "two" / "res" / "prompt_final.npy"),
                             np.load(tmp_path / "one" / "res" / "prompt_final.npy"),
                             atol=1e-5, rtol=0)
