"""Causal verification: do the neurons found matter for the task?

For each selection metric (whose top neurons, by |r| from `correlations.npz`, are tested), each
intervention mode (noise / zero / train mean, see `jaxskill.model.interventions`) and each K of the
dose-response list, the model runs the evaluation split with the prompt and
  - the top-K neurons perturbed,
  - R random sets of K neurons perturbed, drawn per layer to match the top-K's layer counts
    (never a top-K neuron), the control for "any K neurons would do that";
against the unperturbed baseline. Accuracy, confidence, loss and margin are averaged over the
split (and accuracy per group of metadata values when asked). Results go to `verify.json`; each
evaluation is appended to `verify_progress.jsonl` as it finishes, so an interrupted run resumes
where it stopped.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxskill.config import seed_runs
from jaxskill.model import capture, forward, interventions
from jaxskill.runtime import files
from jaxskill.runtime.context import encoded_split, eval_plan, load_prompt, prepare
from jaxskill.runtime.runner import JsonlLog, Runner
from jaxskill.stats import learning, significance
from jaxskill.stats.selection import neuron_scores, random_matched, top_k

log = logging.getLogger("jaxskill.stages.verify")

# The metrics every verification result reports, per example (a subset of forward.METRICS).
RESULT_METRICS = ("correct", "confidence", "loss", "margin")
PER_EXAMPLE = "correct_per_example"  # an evaluation's correctness `[n]`, in the progress log


def batch_edit(edit, batch_index):
  """`edit` with its noise keys folded with the batch index, so that batches get independent
  noise (None stays None)."""
  return None if edit is None else edit.fold_in(batch_index)


def example_metrics(prompt, params, batch, edit, *, model, kind, verbalizer, start=0):
  """`[b, len(RESULT_METRICS)]` for one batch with `edit` applied (None: no intervention;
  `batch_edit` gives each batch its own noise). start: (layer, residual) to run the layers from
  `layer` on alone (see `forward.prompted_apply`)."""
  out = forward.prompted_apply(model, params, prompt, batch, kind=kind, edit=edit, start=start)
  values = forward.metrics(out.logits, out.batch, kind, verbalizer)
  return jnp.stack([values[m] for m in RESULT_METRICS], axis=1)


def edits_metrics(prompt, params, batch, residual, edits, batch_index, *, layer: int, **kw):
  """`[e, b, len(RESULT_METRICS)]`: `example_metrics` under each of the stacked `edits` (leading
  axis e, `interventions.stack`) in one call, all leaving the layers below `layer` alone: each runs
  layers [layer, l) from `residual` (`forward.residual_at`, computed once for all of them)."""
  def one(edit):
    return example_metrics(prompt, params, batch, batch_edit(edit, batch_index),
                           start=(layer, residual), **kw)
  return jax.vmap(one)(edits)


def position_weights(batch, mean_over: str, sites: tuple[str, ...], prompt_length: int):
  """float32 `[b, t]`: 1 at the positions of the valid rows a neuron's mean is taken over
  (`verify.mean_over`): the input tokens (real, not prompt nor the tokenizer's special prefix,
  before `input_end`), find's capture sites, or every real position."""
  b, t = batch.input_ids.shape
  real = batch.attention_mask.astype(jnp.float32) * batch.valid[:, None]
  if mean_over == "all":
    return real
  if mean_over == "inputs":
    cols = jnp.arange(t)[None]
    return real * ((batch.prompt_index == -1) & (cols < batch.input_end[:, None]))
  at = capture.capture_index(batch, sites, prompt_length)  # [b, k]
  hits = (at[:, :, None] == jnp.arange(t)[None, None]).any(1)  # [b, t]
  return hits.astype(jnp.float32) * batch.valid[:, None]


def position_moments(prompt, params, batch, *, model, mean_over: str,
                     sites: tuple[str, ...], prompt_length: int):
  """(sum `[l, i]`, sum of squares `[l, i]`, count) of the neuron activations over the batch's
  `position_weights` positions."""
  b, t = batch.input_ids.shape
  out = forward.prompted_apply(model, params, prompt, batch, kind=None,
                               capture=jnp.broadcast_to(jnp.arange(t), (b, t)))
  acts = out.activations.astype(jnp.float32)  # [b, l, t, i]
  w = position_weights(batch, mean_over, sites, prompt_length)
  return (jnp.einsum("blti,bt->li", acts, w), jnp.einsum("blti,bt->li", acts * acts, w),
          w.sum())


def group_keys(metadata: dict[str, np.ndarray], columns: tuple[str, ...], n: int) -> np.ndarray:
  """One label per example, e.g. "correct=0,last_digit_only=1"."""
  for c in columns:
    if c not in metadata:
      raise ValueError(f"verify.group_by: no metadata column {c!r}; available: "
                       f"{sorted(metadata)}")
  def text(v):
    return f"{v:g}" if isinstance(v, (int, float, np.number)) else str(v)
  return np.array([",".join(f"{c}={text(metadata[c][i])}" for c in columns) for i in range(n)])


def summarize(values: np.ndarray, groups: np.ndarray | None) -> dict:
  """values `[n, len(RESULT_METRICS)]` -> means, with accuracy per group. NaN rows (undefined
  metrics) are left out of their metric's mean."""
  out = {("accuracy" if m == "correct" else m): float(np.nanmean(values[:, j]))
         for j, m in enumerate(RESULT_METRICS)}
  if groups is not None:
    out["group_accuracy"] = {g: float(values[groups == g, 0].mean())
                             for g in sorted(set(groups.tolist()))}
  return out


def _control(results: list[dict], baseline: dict) -> dict:
  """Mean and standard deviation over the random draws, of each metric and of its drop."""
  out = {}
  for name in baseline:
    if name in ("group_accuracy", PER_EXAMPLE):
      continue
    vals = np.array([r[name] for r in results])
    out[name] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)),
                 "min": float(vals.min()), "max": float(vals.max())}
  drops = np.array([baseline["accuracy"] - r["accuracy"] for r in results])
  out["accuracy_drop"] = {"mean": float(drops.mean()), "std": float(drops.std(ddof=1)),
                          "values": drops.tolist()}
  if "group_accuracy" in baseline:
    out["group_accuracy"] = {g: float(np.mean([r["group_accuracy"][g] for r in results]))
                             for g in baseline["group_accuracy"]}
  return out


def rank_selections(correlations: dict, selection: tuple[str, ...], ks: list[int], layers: int,
                    neurons: int) -> tuple[dict, dict]:
  """({metric: its top max(ks) (layer, neuron) by |r|}, {metric: why it is skipped}).

  A metric with no defined r (constant over the examples: one label, a constant column) has no
  neurons to perturb: it is skipped with a warning, not verified on an empty set. A K that
  cannot be verified honestly is an error: more neurons than the model has or than have a
  defined r, or a top-K holding half or more of a layer, where the random sets matched per layer
  would have (almost) nothing else to draw from."""
  if max(ks) > layers * neurons:
    raise ValueError(f"verify.k / verify.k_list: K={max(ks)} is more than the model's "
                     f"{layers * neurons} neurons ({layers} layers x {neurons})")
  ranked, skipped = {}, {}
  for sel in selection:
    scores = neuron_scores(correlations[sel])[0]
    defined = int(np.isfinite(scores).sum())
    if defined == 0:
      skipped[sel] = ("no neuron has a defined correlation: the metric is constant on the "
                      "examples find used")
      log.warning("verify.selection %r skipped: %s", sel, skipped[sel])
      continue
    if defined < max(ks):
      raise ValueError(f"verify.k / verify.k_list: K={max(ks)} is more than the {defined} "
                       f"neurons with a defined correlation to {sel!r}")
    ranked[sel] = top_k(scores, max(ks))
    for k in ks:
      counts = np.bincount([layer for layer, _ in ranked[sel][:k]], minlength=layers)
      layer = int(counts.argmax())
      if 2 * counts[layer] >= neurons:
        raise ValueError(
            f"verify.k / verify.k_list: the top-{k} neurons of {sel!r} hold {counts[layer]} of "
            f"layer {layer}'s {neurons}; random sets matched per layer need more neurons outside "
            f"the top-K than in it (use a smaller K)")
  return ranked, skipped


def selections(config, correlations: dict, kind: str) -> tuple[dict, dict]:
  """`rank_selections` of verify.selection (default: the task's label or correctness), each
  checked to be among the correlated metrics."""
  vc = config.verify
  selection = vc.selection or (("label",) if kind == "classification" else ("correct",))
  for name in selection:
    if name not in correlations:
      raise ValueError(f"verify.selection: {name!r} is not among the metrics of "
                       f"{config.run_dir / 'correlations.npz'}: {sorted(correlations)}")
  layers, _, neurons = next(iter(correlations.values())).shape
  return rank_selections(correlations, selection, sorted(set(vc.k_list) | {vc.k}), layers,
                         neurons)


def check_inputs(config) -> None:
  """Raises for a verify config that cannot run on this run's correlations (before anything of
  an earlier verification is removed)."""
  from jaxskill.tasks import build_task
  path = config.run_dir / "correlations.npz"
  if path.exists():
    selections(config, files.load_npz(path), build_task(config.task).kind)


def verify(config, *, progress: bool = True) -> dict:
  """Runs the verification of `config` on its trained prompt and found neurons (the pipeline
  runs training and discovery first); returns the results written to `run_dir/verify.json`."""
  from jaxskill.config import to_dict
  vc = config.verify
  corr_path = config.run_dir / "correlations.npz"
  if not corr_path.exists():
    raise FileNotFoundError(f"{corr_path}: not found; run `jaxskill find` (or `jaxskill run`) "
                            "with this config first")
  correlations = files.load_npz(corr_path)
  runner = Runner.build(config, vc.batch_size, "verify.batch_size")
  setup = prepare(config, eval_plan(runner.mesh, vc.batch_size), runner.mesh)
  ranked_by, skipped = selections(config, correlations, setup.task.kind)
  prompt_run = seed_runs(config)[0]  # with several seeds: the first seed's prompt
  prompt = runner.replicate({"embeddings": jnp.asarray(load_prompt(prompt_run))})
  params, _ = runner.place(setup.params, config.train.param_sharding)
  evaluate, n = _evaluator(config, setup, runner, prompt, params)
  needs_stats = "mean" in vc.modes or ("noise" in vc.modes and vc.noise_scale == "neuron_std")
  neuron = _neuron_stats(config, setup, runner, prompt, params) if needs_stats else {}
  c = setup.model.config
  jobs, random_sets = _jobs(vc, ranked_by, c.intermediate_size)
  specs, plan = dict(jobs), passes(jobs, vc.edits_per_pass or auto_edits_per_pass())
  widths = pass_widths(plan)
  how = {k: v for k, v in to_dict(vc).items() if k != "edits_per_pass"}  # same results for any
  job_log = JsonlLog(config.run_dir / "verify_progress.jsonl", [keys for _, keys in plan],
                     files.digest(np.asarray(prompt["embeddings"]).tobytes(),
                                  corr_path.read_bytes(), how, to_dict(config.task)))

  def make_edit(spec):
    mode, neurons, draw = spec
    scale = neuron.get("std") if vc.noise_scale == "neuron_std" else None
    return interventions.neuron_edit(
        c.num_hidden_layers, c.intermediate_size, neurons, mode, sigma=vc.sigma,
        mean=neuron.get("mean"), scale=scale,
        key=jax.random.PRNGKey(vc.seed * 1000 + draw) if mode == "noise" else None)

  def run_pass(i: int, finished: dict, saving: bool) -> tuple[dict, None]:
    """Evaluates pass i unless a resumed run has all its jobs; finished: {job key: results}.
    A pass is run whole even when some of its jobs are done, so that every job is computed by
    the same program (and rounded the same) as in an uninterrupted run."""
    layer, keys = plan[i]
    if any(key not in finished for key in keys):
      edits = [None if specs[key] is None else make_edit(specs[key]) for key in keys]
      finished = {**dict(zip(keys, evaluate(edits, layer, widths.get(layer)))), **finished}
    return finished, None
  results_by_key = runner.loop(run_pass, job_log.restore(), total=len(plan), desc="verify",
                               progress=progress, checkpoints=job_log)
  results = _results(vc, results_by_key, ranked_by, random_sets, skipped, n=n,
                     prompt=prompt_run.run_dir / "prompt_best.npy",
                     untrained=learning.untrained_prompt([prompt_run.run_dir]))
  Runner.write("verify: outputs written",
               lambda: files.write_json(config.run_dir / "verify.json", results))
  return results


def auto_edits_per_pass() -> int:
  """`verify.edits_per_pass` 0: 2 on a CPU, 8 on an accelerator (see VerifyConfig)."""
  return 2 if jax.default_backend() == "cpu" else 8


def passes(jobs: list, per_pass: int) -> list[tuple[int | None, list[str]]]:
  """The jobs in passes over the split: [(layer, job keys)]. layer None: one job, the whole
  forward (the baseline; every job when per_pass is 1, the reference path). Otherwise up to
  `per_pass` jobs whose lowest perturbed layer is `layer` (of every mode:
  `interventions.stack_uniform` gives their edits one structure), sizes balanced; ordered by layer, so that the residuals cached per
  layer are needed one layer at a time."""
  if per_pass == 1:
    return [(None, [key]) for key, _ in jobs]
  groups: dict[int, list[str]] = {}
  for key, spec in jobs:
    if spec is not None:
      groups.setdefault(min(layer for layer, _ in spec[1]), []).append(key)
  passes = [(None, [key]) for key, spec in jobs if spec is None]
  for layer, keys in sorted(groups.items()):
    parts = -(-len(keys) // per_pass)
    passes += [(layer, [str(key) for key in part]) for part in np.array_split(keys, parts)]
  return passes


def pass_widths(plan: list) -> dict[int, int]:
  """{layer: the most edits of its passes}: every pass of a layer padded to it runs one
  compiled program (a resumed run's too), at most one padded edit per pass (`passes` balances
  the sizes)."""
  widths: dict[int, int] = {}
  for layer, keys in plan:
    if layer is not None:
      widths[layer] = max(widths.get(layer, 0), len(keys))
  return widths


def _evaluator(config, setup, runner: Runner, prompt, params):
  """(`evaluator` of the verify split, its number of examples)."""
  vc = config.verify
  encoded = encoded_split(setup, config, vc.split)
  groups = group_keys(encoded.metadata, vc.group_by, len(encoded)) if vc.group_by else None
  return evaluator(setup.model, setup.task.kind, setup.verbalizer, runner, encoded, prompt,
                   params, groups), len(encoded)


def evaluator(model, kind: str, verbalizer, runner: Runner, encoded, prompt, params,
              groups: np.ndarray | None = None):
  """evaluate(edits, layer) -> [`summarize` of `encoded` under each edit] (with each example's
  correctness). layer None: one edit (or None) through the whole forward; else edits that leave
  the layers below `layer` alone, run together from the residual entering it, which is
  computed once per batch and kept while the passes of that layer run (`passes`); `width`: the
  count the edits are padded to (`pass_widths`: one program per layer), None their own."""
  kw = dict(model=model, kind=kind, verbalizer=jnp.asarray(verbalizer))
  metrics_fn = jax.jit(lambda prompt, params, batch, edit, index: example_metrics(
      prompt, params, batch, batch_edit(edit, index), **kw), out_shardings=runner.replicated)
  batched_fn = jax.jit(functools.partial(edits_metrics, **kw), static_argnames="layer",
                       out_shardings=runner.replicated)
  residual_fn = jax.jit(functools.partial(forward.residual_at, model), static_argnames="layer")
  batches = list(runner.batches(encoded))  # placed once, run under every edit
  residuals: dict[int, list] = {}

  def rows_under(edits: list, layer: int | None, width: int | None) -> np.ndarray:
    """`[e, n, len(RESULT_METRICS)]` over the real rows of every batch."""
    if layer is None:
      (edit,) = edits
      edit = None if edit is None else runner.replicate(edit)
      return np.concatenate([np.asarray(metrics_fn(prompt, params, b, edit, i))[v]
                             for i, (b, v) in enumerate(batches)])[None]
    if layer not in residuals:  # a new layer's group: the last one's residuals are let go
      residuals.clear()
      residuals[layer] = [residual_fn(params, prompt, b, layer=layer) for b, _ in batches]
    stacked = runner.replicate(interventions.stack_uniform(edits, width or len(edits)))
    return np.concatenate([np.asarray(batched_fn(prompt, params, b, r, stacked, i,
                                                 layer=layer))[:len(edits), v]
                           for i, ((b, v), r) in enumerate(zip(batches, residuals[layer]))], 1)

  def evaluate(edits: list, layer: int | None, width: int | None = None) -> list[dict]:
    # Per example, for the bootstrap over examples (kept in verify_progress.jsonl only).
    return [{**summarize(rows, groups), PER_EXAMPLE: rows[:, 0].tolist()}
            for rows in rows_under(edits, layer, width)]
  return evaluate


def _neuron_stats(config, setup, runner: Runner, prompt, params) -> dict:
  """{"mean", "std"}: float32 `[l, i]`, every neuron's train-split mean and standard deviation
  with the prompt, over the positions of `verify.mean_over` (neuron_stats.npz: computed once per
  verification). The sums are float32 per batch and float64 across batches; the variance is
  E[a^2] - E[a]^2, whose float32 rounding (~1e-7 E[a^2]) is far below the variance of
  activations that vary at all."""
  path = config.run_dir / "neuron_stats.npz"
  if path.exists():
    return files.load_npz(path)
  vc, c = config.verify, setup.model.config
  moments_fn = jax.jit(functools.partial(
      position_moments, model=setup.model, mean_over=vc.mean_over,
      sites=config.find.sites, prompt_length=config.prompt.length),
      out_shardings=runner.replicated)
  total, squares, count = (np.zeros((c.num_hidden_layers, c.intermediate_size)),
                           np.zeros((c.num_hidden_layers, c.intermediate_size)), 0.0)
  for b, _ in runner.batches(setup.train):
    s, s2, n = moments_fn(prompt, params, b)
    total, squares = total + np.asarray(s, np.float64), squares + np.asarray(s2, np.float64)
    count += float(n)
  mean = total / count
  out = {"mean": mean.astype(np.float32),
         "std": np.sqrt(np.maximum(squares / count - mean * mean, 0.0)).astype(np.float32)}
  Runner.write("verify: neuron_stats.npz", lambda: files.save_npz(path, **out))
  return out


def _jobs(vc, ranked_by: dict, num_neurons: int) -> tuple[list, dict]:
  """([(key, (mode, neurons, draw) or None for the baseline)], {(metric, K): random draws})."""
  jobs, random_sets = [("baseline", None)], {}
  for sel, ranked in ranked_by.items():
    for k in sorted(set(vc.k_list) | {vc.k}):
      chosen = ranked[:k]
      draws = [random_matched(chosen, num_neurons, np.random.default_rng([vc.seed, k, d]))
               for d in range(vc.random_draws)]
      random_sets[sel, k] = draws
      for mode in vc.modes:
        jobs.append((f"{sel}|{mode}|{k}|top", (mode, chosen, 0)))
        jobs += [(f"{sel}|{mode}|{k}|random{d}", (mode, draw, d + 1))
                 for d, draw in enumerate(draws)]
  return jobs, random_sets


def _results(vc, results_by_key: dict, ranked_by: dict, random_sets: dict, skipped: dict, *, n: int,
             prompt: Path, untrained: bool | None = None) -> dict:
  """verify.json: the baseline, and per selection, mode and K the top-K against its controls.
  untrained: the prompt did not learn (True), did (False), was not tested (None); every row
  carries it beside its verdict, which on an untrained prompt says nothing about the skill."""
  ks = sorted(set(vc.k_list) | {vc.k})
  baseline = _public(results_by_key["baseline"])
  results = {"split": vc.split, "n": n, "prompt": str(prompt),
             "metrics": [("accuracy" if m == "correct" else m) for m in RESULT_METRICS],
             "modes": list(vc.modes), "sigma": vc.sigma, "mean_over": vc.mean_over,
             "noise_scale": vc.noise_scale, "k": vc.k, "k_list": ks,
             "random_draws": vc.random_draws, "group_by": list(vc.group_by),
             "verdict_rule": significance.VERDICT_RULE,
             "baseline": baseline, "selections": {}, "skipped": skipped,
             "untrained_prompt": untrained}
  for sel, ranked in ranked_by.items():
    per_sel = {"neurons": [list(x) for x in ranked[:max(ks)]], "modes": {}}
    for mode in vc.modes:
      per_sel["modes"][mode] = {str(k): _row(
          results_by_key[f"{sel}|{mode}|{k}|top"],
          [results_by_key[f"{sel}|{mode}|{k}|random{d}"] for d in range(vc.random_draws)],
          results_by_key["baseline"], layers=sorted({layer for layer, _ in ranked[:k]}),
          draws=random_sets[sel, k], seed=vc.seed, untrained=untrained) for k in ks}
    results["selections"][sel] = per_sel
  return results


def _public(result: dict) -> dict:
  """An evaluation's results as verify.json shows them (without the per-example vector)."""
  return {k: v for k, v in result.items() if k != PER_EXAMPLE}


def _row(top: dict, randoms: list[dict], baseline: dict, *, layers, draws, seed: int,
         untrained: bool | None = None) -> dict:
  """One (selection, mode, K) entry: the top-K's metrics, the random sets' spread, the drop,
  its empirical p-value against the random drops, bootstrap intervals and the verdict."""
  control = _control(randoms, baseline)
  drop = baseline["accuracy"] - top["accuracy"]
  mean_drop, std = control["accuracy_drop"]["mean"], control["accuracy_drop"]["std"]
  p = significance.empirical_p(drop, np.asarray(control["accuracy_drop"]["values"]))
  row = {"top": _public(top), "random": control, "accuracy_drop": drop,
         "random_accuracy_drop_mean": mean_drop, "random_accuracy_drop_std": std,
         "drop_ratio": (drop / mean_drop) if mean_drop > 0 else None,
         # How far outside the random spread: (top drop - mean random drop) / random std.
         "drop_z": (drop - mean_drop) / std if std > 0 else None,
         "layers": layers, "random_neurons": [[list(x) for x in draw] for draw in draws],
         "p_empirical": p}
  if PER_EXAMPLE in top and PER_EXAMPLE in baseline:  # (older progress logs lack them)
    row.update(significance.bootstrap_drops(
        np.asarray(baseline[PER_EXAMPLE]), np.asarray(top[PER_EXAMPLE]),
        np.asarray([r[PER_EXAMPLE] for r in randoms]), seed=seed))
    row["verdict"] = significance.verdict(p, row["difference_95"], len(randoms))
    row["untrained_prompt"] = untrained
  return row
