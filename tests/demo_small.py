"""configs/demo.yaml made small enough for tests: the run that several test modules share (the
session fixture `demo_run` in conftest.py runs it once)."""

from jaxskill.config import load_config

OVERRIDES = ["task.n_train=64", "task.n_dev=16", "task.n_test=48", "train.steps=4",
             "train.batch_size=8", "train.eval_every=2", "find.batch_size=16",
             "verify.k_list=1,4", "verify.k=4", "verify.random_draws=3", "verify.batch_size=16",
             "verify.group_by=correct,last_digit_only",
             "find.metrics=label,confidence,meta_last_digit_only,meta_candidate_last_digit_correct"]


def small_demo_config(out_dir, *changes):
  """configs/demo.yaml made small, with `changes` ("key=value") replacing the same keys."""
  keys = {c.split("=")[0] for c in changes}
  kept = [o for o in OVERRIDES if o.split("=")[0] not in keys]
  return load_config("configs/demo.yaml", kept + [f"out_dir={out_dir}", *changes])
