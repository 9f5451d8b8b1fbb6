"""Soft-prompt training on a frozen model: optax AdamW on the prompt pytree only.

`train_step(state, params, batch) -> (state, metrics)` and `eval_step` are pure functions; `jit`,
shardings and donation are applied by `train` (the data axis of a device mesh splits the batch;
params and prompt are replicated). The model params enter the loss as a constant: `jax.grad`
differentiates with respect to the prompt alone, and the optimizer state is prompt-shaped.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxskill.config import (NEUTRAL_KEYS, PromptConfig, RunConfig, RunConfigError, TrainConfig,
                             config_diff, dump_config, load_config, seed_runs, to_dict)
from jaxskill.model import forward
from jaxskill.model import prompt as prompt_lib
from jaxskill.model.batch import Batch
from jaxskill.runtime import files, sharding
from jaxskill.runtime.context import Setup, prepare
from jaxskill.runtime.runner import Checkpoints, Runner
from jaxskill.stats import learning
from jaxskill.tasks import encode as data_lib

log = logging.getLogger("jaxskill.stages.train")


class TrainingDivergedError(RuntimeError):
  """The loss or the prompt's gradient stopped being finite."""


# --- pure pieces ------------------------------------------------------------------------------

def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """AdamW (article defaults: lr 1e-3, betas 0.9/0.999, weight decay 0.01), optional warmup,
  decay and global-norm clipping."""
  decay_steps = max(cfg.steps - cfg.warmup_steps, 1)
  if cfg.decay == "constant":
    after = optax.constant_schedule(cfg.lr)
  elif cfg.decay == "linear":
    after = optax.linear_schedule(cfg.lr, 0.0, decay_steps)
  else:
    after = optax.cosine_decay_schedule(cfg.lr, decay_steps)
  schedule = (optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps), after],
                                   [cfg.warmup_steps]) if cfg.warmup_steps else after)
  adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw) if cfg.clip_norm else adamw


def _values(prompt, params, batch, *, model, kind, verbalizer, input_cols) -> dict:
  """The per-example metrics `[b]` of the prompted forward (see `jaxskill.model.forward`)."""
  out = forward.prompted_apply(model, params, prompt, batch, kind=kind, start=input_cols)
  return forward.metrics(out.logits, out.batch, kind, verbalizer)


def loss_fn(prompt, params, batch, *, model, kind, verbalizer, input_cols=0):
  """Mean loss over the valid rows of `batch` (`[b, t]` rows), and {"loss", "accuracy"} scalars;
  prompt {"embeddings": `[p, h]`}; the gradient flows to the prompt alone."""
  params = jax.lax.stop_gradient(params)  # frozen: the model is a constant of the loss
  values = _values(prompt, params, batch, model=model, kind=kind, verbalizer=verbalizer,
                   input_cols=input_cols)
  valid = jnp.ones_like(values["loss"]) if batch.valid is None else batch.valid
  n = jnp.maximum(valid.sum(), 1.0)
  loss = (values["loss"] * valid).sum() / n
  return loss, {"loss": loss, "accuracy": (values["correct"] * valid).sum() / n}


def train_step(state: dict, params, batch, *, model, optimizer, kind, verbalizer, input_cols=0):
  """One AdamW step of the prompt on `batch` (`[b, t]` rows): (new state, {"loss", "accuracy",
  "grad_norm"} scalars). state: {"prompt", "opt_state", "step", "rng", ...}."""
  grad_fn = jax.grad(loss_fn, has_aux=True)
  grads, metrics = grad_fn(state["prompt"], params, batch, model=model, kind=kind,
                           verbalizer=verbalizer, input_cols=input_cols)
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["prompt"])
  metrics["grad_norm"] = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
  return dict(state, prompt=optax.apply_updates(state["prompt"], updates), opt_state=opt_state,
              step=state["step"] + 1, rng=jax.random.split(state["rng"])[0]), metrics


def eval_step(prompt, params, batch, *, model, kind, verbalizer, input_cols=0):
  """Sums over the valid rows of `batch` (`[b, t]` rows): {"loss", "correct", "n"} scalars, and
  "rows" float32 `[b]`: 1 where the prompted model answers row i right (0 on padding). One
  program for the dev evaluation and the learning test's per-example correctness."""
  values = _values(prompt, params, batch, model=model, kind=kind, verbalizer=verbalizer,
                   input_cols=input_cols)
  valid = batch.valid
  rows = values["correct"] * valid
  return {"loss": (values["loss"] * valid).sum(), "correct": rows.sum(), "n": valid.sum(),
          "rows": rows}


def init_prompt(cfg: PromptConfig, key, embedding, tokenizer) -> prompt_lib.Prompt:
  """The untrained prompt {"embeddings": `[p, h]` float32} (`embedding`: the `[v, h]` table). The
  prompt is trained in float32 whatever the model's dtype (it is cast when inserted)."""
  embedding = jnp.asarray(embedding, jnp.float32)
  if cfg.init == "random":
    return prompt_lib.init_random(key, cfg.length, embedding.shape[1], cfg.init_std)
  if cfg.init == "vocab":
    # Only rows of real tokens: checkpoints pad the table (Qwen1.5: 151936 rows, ~151646 tokens)
    # with rows that were never trained.
    return prompt_lib.init_from_vocab(key, embedding[:min(len(tokenizer), embedding.shape[0])],
                                      cfg.length)
  ids = tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"]
  return prompt_lib.init_from_text(ids, embedding, cfg.length)


# --- the run ------------------------------------------------------------------------------------

# Keys a re-run may change and still continue the same run: how it logs and checkpoints, and
# (under a constant learning rate, where the schedule does not depend on it) its length.
_RESUMABLE_CHANGES = {f"train.{key}" for key in NEUTRAL_KEYS["train"]}


def trained_config_path(run_dir: Path) -> Path | None:
  """The config a run directory's prompt was trained under (train_config.yaml), or None if it
  trained nothing."""
  path = run_dir / "train_config.yaml"
  return path if path.exists() else None


def check_resume_config(run_dir: Path, config: RunConfig) -> None:
  """Refuses (RunConfigError naming each changed key, old and new value) to continue a run
  directory trained under other settings, so that a continued run is the run a straight one
  would have been; only keys that log, checkpoint or lengthen it may change."""
  saved = trained_config_path(run_dir)
  if saved is None:
    return
  old, new = to_dict(load_config(saved)), to_dict(config)
  # Later stages and the process layout are not training's concern; out_dir and name are what
  # found this directory.
  for key in ("find", "verify", "distributed", "out_dir", "name"):
    old.pop(key), new.pop(key)
  diffs = config_diff(old, new)
  resumable = _RESUMABLE_CHANGES | ({"train.steps"} if config.train.decay == "constant" else set())
  extend = [d for d in diffs if d.split(":")[0] in resumable]
  diffs = [d for d in diffs if d not in extend]
  if extend and not diffs:
    log.warning("%s: continuing this run with %s", saved, "; ".join(extend))
  if diffs:
    note = (" (the learning-rate schedule decays over train.steps, so more steps is another "
            "run)" if any(d.startswith("train.steps:") for d in diffs) else "")
    raise RunConfigError(f"{saved}: this run directory was trained with other settings "
                         f"({'; '.join(diffs)}){note}; use another run name (name=...) or "
                         "remove the directory")


def _evaluate(eval_fn, prompt, params, batches) -> dict:
  """{"loss", "accuracy"} of `prompt` over the (placed batch, valid rows) of `batches`."""
  totals = {"loss": 0.0, "correct": 0.0, "n": 0.0}
  for batch, _ in batches:
    sums = eval_fn(prompt, params, batch)
    for k in totals:
      totals[k] += float(sums[k])
  return {"loss": totals["loss"] / totals["n"], "accuracy": totals["correct"] / totals["n"]}


def _count_truncated(encoded: data_lib.Encoded) -> int:
  if jax.process_count() == 1 or encoded.truncated is None:
    return encoded.n_truncated
  from jax.experimental import multihost_utils
  return int(np.asarray(multihost_utils.process_allgather(encoded.truncated)).any(0).sum())


def _append_jsonl(path: Path, record: dict) -> None:
  if sharding.is_writer():  # a line cut by a kill is dropped on resume (`_truncate_log`)
    files.append_jsonl(path, [record])


def _truncate_log(path: Path, step: int) -> None:
  """Drops log lines past the restored step (all of them for a fresh start): they will be
  written again, identically. A line cut short by a crash is dropped too."""
  if not path.exists() or not sharding.is_writer():
    return
  keep = []
  for line, record in files.read_jsonl(path):
    try:
      record_step = int(record["step"])
    except (KeyError, TypeError, ValueError):
      log.warning("%s: dropping an incomplete line %r", path, line[:80])
      continue
    if step > 0 and record_step <= step:
      keep.append(line)
  files.write_text(path, "".join(line + "\n" for line in keep))


def _check_finite(pending: list, cfg: TrainConfig) -> None:
  """Raises TrainingDivergedError at the first of `pending`'s steps whose loss or gradient norm
  is not finite; the caller has saved nothing of those steps."""
  if not pending:
    return
  values = np.asarray(jax.device_get([(loss, norm) for _, loss, norm in pending]), np.float64)
  bad = ~np.isfinite(values).all(axis=1)
  if bad.any():
    i = int(np.argmax(bad))
    found = (f"train: the loss is not finite at step {pending[i][0]} (loss {values[i, 0]}, "
             f"gradient norm {values[i, 1]}); stopped, and no prompt of that step was saved")
    if pending[i][0] == 1:  # the untrained prompt's loss: no update has happened yet
      raise TrainingDivergedError(
          f"{found}. This is the untrained prompt's loss, before any update, so the learning "
          "rate is not the cause: the model's weights or its dtype give non-finite values on "
          "this data (a damaged or float16-overflowing checkpoint? try model.dtype=float32)")
    raise TrainingDivergedError(
        f"{found} (the last checkpoint is kept). Lower train.lr (now {cfg.lr:g}) or set "
        f"train.clip_norm, under another run name (name=...) or after removing the run "
        "directory")


def _write_outputs(run_dir: Path, state: dict, setup: Setup, **facts) -> dict:
  """prompt_final.npy, prompt_best.npy and train_summary.json (process 0, every process waiting
  for them); the summary (without the dev accuracy at init, read from the log, elsewhere).
  facts["learned"]: `learning.learning_test`'s (or `no_dev_split`'s) two keys."""
  final = np.asarray(state["prompt"]["embeddings"])
  has_best = float(state["best_dev"]) >= 0  # -1: no dev split, so no best to choose
  best = np.asarray(state["best_prompt"]["embeddings"]) if has_best else final
  summary = {
      "steps": facts["steps"], "resumed_from": facts["resumed_from"],
      "best_dev_accuracy": float(state["best_dev"]) if has_best else None,
      "dev_accuracy_at_init": None,
      **facts["learned"],
      "n_train": len(setup.train), "n_dev": len(setup.dev) if setup.dev is not None else 0,
      # Over the rows every process tokenized (in several processes: the rows the run fed).
      "truncated": {"train": _count_truncated(setup.train),
                    "dev": _count_truncated(setup.dev) if setup.dev is not None else 0},
      "devices": facts["devices"], "seconds": facts["seconds"],
  }

  def write() -> dict:
    files.save_npy(run_dir / "prompt_final.npy", final)
    files.save_npy(run_dir / "prompt_best.npy", best)
    records = [r for _, r in files.read_jsonl(run_dir / "metrics.jsonl") if r is not None]
    out = dict(summary, dev_accuracy_at_init=next(
        (r["accuracy"] for r in records if r["split"] == "dev" and r["step"] == 0), None))
    files.write_json(run_dir / "train_summary.json", out)
    return out
  return Runner.write("train: outputs written", write) or summary


def train(config: RunConfig, *, progress: bool = True) -> dict:
  """Trains (or resumes) the soft prompt of `config`; returns the summary also written to
  `run_dir/train_summary.json`, with "prompt_learned" and "learning_test"
  (`jaxskill.stats.learning`:
  the best prompt against the untrained one and chance on dev). Run dir: train_config.yaml,
  metrics.jsonl, checkpoints/, prompt_final.npy, prompt_best.npy (the prompt with the best dev
  accuracy)."""
  return _train(config, progress, None)[0]


def train_seeds(config: RunConfig, *, progress: bool = True) -> list[dict]:
  """`train` of each run of `seed_runs(config)` (one per find.seeds entry), which differ only in
  train.seed: the model is loaded, the splits encoded and the steps compiled once for all of
  them (in several processes, where the rows a process feeds depend on the seed, each seed
  encodes its own)."""
  loop, out = None, []
  for run in seed_runs(config):
    summary, loop = _train(run, progress, loop)
    out.append(summary)
  return out


def _train(config: RunConfig, progress: bool, like: "_Loop | None") -> tuple[dict, "_Loop"]:
  """(`train`'s summary, the loop it ran): like, the loop of another seed run, or None."""
  cfg, run_dir = config.train, config.run_dir
  check_resume_config(run_dir, config)
  runner = like.runner if like is not None else Runner.build(config, cfg.batch_size,
                                                             "train.batch_size")
  rows = _row_plan(cfg, runner)
  # Before the config is written: a bad config leaves no run behind.
  setup = like.setup if like is not None and rows is None else prepare(config, rows, runner.mesh)
  Runner.write("train: run dir ready", lambda: (run_dir.mkdir(parents=True, exist_ok=True),
                                                dump_config(config, run_dir / "train_config.yaml")))
  loop = _Loop.build(config, setup, runner, like)
  with Checkpoints(run_dir / "checkpoints", every=cfg.checkpoint_every,
                   max_to_keep=cfg.max_to_keep, async_save=cfg.async_checkpoint) as ckpt:
    start, state = _restore(ckpt, loop.initial_state(), cfg, run_dir)
    _truncate_log(loop.log_path, start)
    t0 = time.perf_counter()
    if start == 0 and setup.dev is not None:  # the untrained prompt: the baseline to beat
      state, _ = loop.dev(state, 0)
    state = runner.loop(loop.step, state, total=cfg.steps, start=start, desc=f"train {config.name}",
                        progress=progress, checkpoints=ckpt)
  learned = loop.learning_test(state)
  return _write_outputs(run_dir, state, setup, steps=cfg.steps, resumed_from=start,
                        devices=runner.mesh.shape["data"], seconds=time.perf_counter() - t0,
                        learned=learned), loop


def _row_plan(cfg: TrainConfig, runner: Runner):
  """Multi-process runs: each process tokenizes only the rows it feeds (None: all rows)."""
  if jax.process_count() == 1:
    return None
  local = runner.local
  return lambda split, n: (
      data_lib.train_rows(n, cfg.batch_size, cfg.steps, cfg.seed, local) if split == "train"
      else data_lib.eval_rows(n, cfg.batch_size, local))


def _restore(ckpt: Checkpoints, state: dict, cfg: TrainConfig, run_dir: Path) -> tuple[int, dict]:
  """(step, state) of the newest readable checkpoint, or (0, state) for a fresh run."""
  start, state = ckpt.restore(state)
  if start > cfg.steps:
    raise RunConfigError(f"{run_dir}: checkpoints reach step {start}, beyond train.steps="
                         f"{cfg.steps}; ask for at least {start} steps or another run name")
  if start:
    log.info("resuming %s from step %d", run_dir, start)
  return start, state


@dataclasses.dataclass(frozen=True)
class _Loop:
  """One training run's compiled steps, placed params and data feed; `step` is the loop body."""
  config: RunConfig
  setup: Setup
  runner: Runner
  params: Any  # placed on the mesh
  optimizer: optax.GradientTransformation
  step_fn: Callable  # (state, params, batch) -> (state, metrics)
  eval_fn: Callable  # (prompt, params, batch) -> sums and correct rows `[b]`
  local: np.ndarray  # the rows of each batch this process feeds
  whole: Batch  # every train row, on the host
  pending: list  # (step, loss, gradient norm) of the steps not yet checked to be finite

  @classmethod
  def build(cls, config: RunConfig, setup: Setup, runner: Runner,
            like: "_Loop | None" = None) -> "_Loop":
    """Params placed in train.param_sharding, the optimizer and the compiled steps. like: the
    loop of a run that differs only in train.seed (a seed run), whose compiled steps (and
    placed params, for the same setup) are this one's."""
    if like is not None:
      if setup is like.setup:
        return dataclasses.replace(like, config=config, pending=[])
      params = runner.place(setup.params, config.train.param_sharding)[0]
      return dataclasses.replace(like, config=config, setup=setup, params=params,
                                 whole=setup.train.batch(), pending=[])
    cfg, replicated, sharded = config.train, runner.replicated, runner.sharded
    params, param_shardings = runner.place(setup.params, cfg.param_sharding)
    optimizer = make_optimizer(cfg)
    statics = dict(model=setup.model, kind=setup.task.kind,
                   verbalizer=jnp.asarray(setup.verbalizer), input_cols=setup.input_cols)
    step_fn = jax.jit(functools.partial(train_step, optimizer=optimizer, **statics),
                      in_shardings=(replicated, param_shardings, sharded),
                      out_shardings=(replicated, replicated))
    eval_fn = jax.jit(functools.partial(eval_step, **statics),
                      in_shardings=(replicated, param_shardings, sharded), out_shardings=replicated)
    return cls(config, setup, runner, params, optimizer, step_fn, eval_fn, runner.local,
               setup.train.batch(), [])

  @property
  def log_path(self) -> Path:
    """metrics.jsonl: one line per logged train step and dev evaluation."""
    return self.config.run_dir / "metrics.jsonl"

  def _keys(self) -> tuple:
    """(the untrained prompt's key, the training rng) of train.seed."""
    return tuple(jax.random.split(jax.random.PRNGKey(self.config.train.seed)))

  def untrained_prompt(self) -> prompt_lib.Prompt:
    """The step-0 prompt of train.seed (the same every time it is made)."""
    return init_prompt(self.config.prompt, self._keys()[0],
                       self.setup.params["embed_tokens"]["embedding"], self.setup.tokenizer)

  def initial_state(self) -> dict:
    """The untrained prompt, its optimizer state and the best-so-far record (none yet: -1)."""
    prompt, rng = self.untrained_prompt(), self._keys()[1]
    return self.runner.replicate({
        "prompt": prompt, "opt_state": self.optimizer.init(prompt), "step": jnp.int32(0),
        "rng": rng, "best_prompt": jax.tree.map(jnp.copy, prompt),
        "best_dev": jnp.float32(-1.0)})

  def dev(self, state: dict, step: int) -> tuple[dict, dict]:
    """Evaluates the prompt on the dev split, logs it, and keeps it if it is the best yet."""
    dev = _evaluate(self.eval_fn, state["prompt"], self.params, self.runner.batches(self.setup.dev))
    _append_jsonl(self.log_path, {"step": step, "split": "dev", **dev})
    # Both in float32, as best_dev is kept: a float64 accuracy equal to the best would
    # otherwise count as better than its float32 rounding.
    if np.float32(dev["accuracy"]) > np.float32(state["best_dev"]):
      state = dict(state, best_prompt=jax.tree.map(jnp.copy, state["prompt"]),
                   best_dev=self.runner.replicate(jnp.float32(dev["accuracy"])))
    return state, dev

  def dev_correct(self, prompt) -> np.ndarray:
    """bool `[n_dev]`: which dev examples the prompted model answers right, in split order."""
    prompt = self.runner.replicate(prompt)
    return np.concatenate([
        np.asarray(self.eval_fn(prompt, self.params, batch)["rows"])[valid] > 0
        for batch, valid in self.runner.batches(self.setup.dev)])

  def learning_test(self, state: dict) -> dict:
    """`learning.learning_test` of the best prompt against the untrained one and chance, both
    evaluated anew here (so that a resumed run tests the same prompts as a straight one)."""
    if self.setup.dev is None or float(state["best_dev"]) < 0:
      return learning.no_dev_split()
    task = self.setup.task
    chance = 1.0 / len(task.verbalizer) if task.kind == "classification" else None
    out = learning.learning_test(self.dev_correct(self.untrained_prompt()),
                                 self.dev_correct(state["best_prompt"]), chance)
    (log.info if out["prompt_learned"] else log.warning)(
        "train: prompt learned: %s (%s)", out["prompt_learned"], learning.describe(out))
    return out

  def step(self, i: int, state: dict, saving: bool) -> tuple[dict, dict | None]:
    """Training step i, with the log and dev evaluation at their cadence (the loop body)."""
    cfg, setup = self.config.train, self.setup
    idx = data_lib.batch_indices(len(setup.train), cfg.batch_size, i, cfg.seed)[self.local]
    setup.train.check_rows(idx, "train: ")
    state, metrics = self.step_fn(state, self.params, self.runner.put(self.whole.rows(idx)))
    done, note = i + 1, None
    self.pending.append((done, metrics["loss"], metrics["grad_norm"]))
    last = done == cfg.steps
    if last or saving or any(done % n == 0 for n in (cfg.log_every, cfg.eval_every)):
      _check_finite(self.pending, cfg)  # before anything of these steps is logged or saved
      self.pending.clear()
    if done % cfg.log_every == 0 or last:
      record = {"step": done, "split": "train", **{k: float(v) for k, v in metrics.items()}}
      _append_jsonl(self.log_path, record)
      note = {"loss": f"{record['loss']:.4f}", "acc": f"{record['accuracy']:.3f}"}
    if setup.dev is not None and (done % cfg.eval_every == 0 or last):
      state, dev = self.dev(state, done)
      note = {"loss": f"{dev['loss']:.4f}", "dev_acc": f"{dev['accuracy']:.3f}"}
    return state, note
