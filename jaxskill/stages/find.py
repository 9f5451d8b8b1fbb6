"""Skill-neuron discovery: stream a split through the model with the trained prompt, correlate
every captured neuron with every auxiliary metric, select and aggregate, write the outputs.

Outputs in the run directory:
  correlations.npz  one array per metric, `[layers, positions, neurons]`, NaN where undefined
  neurons.csv       rank, layer, position, neuron, metric, r, n (top-K per metric by |r|, the
                    position being the one with the largest |r|)
  summary.json      sites, metrics, counts (NaN metric values excluded), selections, seed overlap
  predictivity.npz  the 2022 baseline for binary classification: dev accuracy of
                    `activation > train mean` per (layer, position, neuron), and |acc - 0.5|
  activations.npz   the top find.report_neurons of each metric on every example of the split
                    (activations_heldout.npz: on find.heldout_split), for the report
  token_activations.npz  those neurons at every token of their top and bottom
                    find.browser_examples examples: the report's neuron browser
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib
import logging
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxskill.config import FindConfig, seed_runs
from jaxskill.model import capture
from jaxskill.runtime import files
from jaxskill.runtime.context import encode_rows, encoded_split, eval_plan, load_prompt, prepare
from jaxskill.runtime.runner import Runner
from jaxskill.stats import correlator as stats
from jaxskill.stats import metric_checks, significance
from jaxskill.stats.streaming import Streaming, StatsPrograms, correlate, stats_programs
from jaxskill.stats.selection import iou, neuron_scores, top_k, top_p_per_layer
from jaxskill.tasks import encode as data_lib

log = logging.getLogger("jaxskill.stages.find")


def load_custom_metrics(specs: tuple[str, ...]) -> dict[str, capture.MetricFn]:
  """"package.module:function" -> {function name: function}."""
  out = {}
  for spec in specs:
    module, _, name = spec.partition(":")
    if not module or not name:
      raise ValueError(f"find.custom_metrics entry {spec!r}: expected 'package.module:function'")
    try:
      out[name] = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
      raise ValueError(f"find.custom_metrics entry {spec!r}: {e}") from None
  return out


def metric_names(requested: tuple[str, ...], encoded: data_lib.Encoded, kind: str,
                 custom: Mapping[str, capture.MetricFn]) -> tuple[str, ...]:
  """The metrics to correlate: `requested` (find.metrics) checked against what this task offers
  (built-ins, its numeric "meta_<column>" columns, `custom`), or all of those if none asked."""
  available = [m for m in capture.BUILTIN_METRICS
               if not (m == "label" and kind != "classification")]
  available += capture.metadata_columns(encoded.metadata) + list(custom)
  mixed = {f"meta_{k}": why for k, why in capture.mixed_columns(encoded.metadata).items()}
  if not requested:
    for name, why in mixed.items():
      log.warning("%s is not a metric: %s", name, why)
    return tuple(available)
  unknown = [m for m in requested if m not in available]
  if unknown:
    why = "".join(f"; {m} is text: {mixed[m]}" for m in unknown if m in mixed)
    raise ValueError(f"find.metrics: unknown metric(s) {unknown}; available here: "
                     f"{available}{why}")
  return tuple(requested)


def predictivity(probe: capture.Probe, params, prompt, encoded: data_lib.Encoded,
                 baseline: np.ndarray, *, runner: Runner) -> tuple[np.ndarray, int]:
  """The 2022 method (Wang et al.): accuracy of `activation > train mean` (`baseline` `[f]`) as
  a predictor of the binary label on `encoded` (the dev split), per feature. Returns (accuracy
  `[l, k, i]`, n)."""
  step = dataclasses.replace(probe, metric_names=("label",), custom={})
  counts_fn = jax.shard_map(functools.partial(stats.predictivity_counts, axis_name="data"),
                            mesh=runner.mesh, in_specs=(P("data"), P("data"), P("data"), P()),
                            out_specs=P())

  @functools.partial(jax.jit, out_shardings=runner.replicated)
  def batch_counts(prompt, params, batch, baseline):
    acts, _ = step(prompt, params, batch)
    return counts_fn(acts.reshape(acts.shape[0], -1), batch.label, batch.valid, baseline)

  prompt, baseline_dev = runner.replicate((prompt, jnp.asarray(baseline, jnp.float32)))
  params, _ = runner.place(params)
  correct, n = 0, 0
  for batch, _ in runner.batches(encoded):
    out = jax.device_get(batch_counts(prompt, params, batch, baseline_dev))
    correct, n = correct + out["correct"].astype(np.int64), n + int(out["n"])
  shape = jax.eval_shape(step, prompt, params, batch)[0].shape[1:]
  return (correct / max(n, 1)).reshape(shape), n


def top_activations(probe: capture.Probe, params, prompt, encoded: data_lib.Encoded,
                    features: list[tuple[int, int, int]], *,
                    runner: Runner) -> tuple[np.ndarray, np.ndarray]:
  """The activations of a few features (layer, position index, neuron) on every example of
  `encoded`, with the metrics: (`[n, len(features)]`, `[n, m]`), for the report's
  distributions and top-activating examples."""
  layer, pos, neuron = (jnp.asarray([f[j] for f in features], jnp.int32) for j in range(3))

  @functools.partial(jax.jit, out_shardings=runner.replicated)
  def gather(prompt, params, batch):
    acts, y = probe(prompt, params, batch)
    # float32 whatever the model's dtype: numpy cannot read bfloat16 back from an .npz
    return acts[:, layer, pos, neuron].astype(jnp.float32), y

  prompt = runner.replicate(prompt)
  params, _ = runner.place(params)
  out_a, out_y = [], []
  for batch, valid in runner.batches(encoded, encoded.batch(probe.metric_names)):
    a, y = jax.device_get(gather(prompt, params, batch))
    out_a.append(np.asarray(a)[valid])
    out_y.append(np.asarray(y)[valid])
  return np.concatenate(out_a), np.concatenate(out_y)


def token_examples(probe: capture.Probe, params, prompt, encoded: data_lib.Encoded,
                   features: list[tuple[int, int, int]], *, runner: Runner) -> np.ndarray:
  """float32 `[n, t, F]`: the neurons of `features` (layer, position index, neuron; the
  position index is not used) at every position of every row of `encoded`."""
  layers, neurons = (jnp.asarray([f[j] for f in features], jnp.int32) for j in (0, 2))

  @functools.partial(jax.jit, out_shardings=runner.replicated)
  def gather(prompt, params, batch):
    return capture.token_activations(probe, prompt, params, batch, layers, neurons)

  prompt = runner.replicate(prompt)
  params, _ = runner.place(params)
  return np.concatenate([np.asarray(jax.device_get(gather(prompt, params, batch)))[valid]
                         for batch, valid in runner.batches(encoded)])


def token_texts(tokenizer, encoded: data_lib.Encoded) -> np.ndarray:
  """str `[n, t]`: each token of each row decoded alone, "[P<j>]" for prompt slot j, "" where
  the attention mask is 0 (padding)."""
  ids = np.unique(encoded.input_ids[encoded.attention_mask > 0])
  text = {int(i): tokenizer.decode([int(i)]) for i in ids}
  out = np.full(encoded.input_ids.shape, "", dtype=object)
  for (i, j), token in np.ndenumerate(encoded.input_ids):
    if encoded.prompt_index[i, j] >= 0:
      out[i, j] = f"[P{encoded.prompt_index[i, j]}]"
    elif encoded.attention_mask[i, j]:
      out[i, j] = text[int(token)]
  return out.astype(str)


# --- outputs ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Found:
  """What find writes for one run (a seed's, or the mean over seeds): r `[m, l, k, i]` of the
  metrics `names` at the capture positions `positions`, each metric's number of examples with a
  value `counts` `[m]` (of `n_examples`), and the permutation null `null_r` `[P, m, l, k, i]`
  (None: a mean over seeds, whose r has no such test)."""
  r: np.ndarray
  names: tuple[str, ...]
  positions: tuple[str, ...]
  counts: np.ndarray
  n_examples: int
  null_r: np.ndarray | None = None


def write_outputs(out_dir: Path, found: Found, ranking: FindConfig, extra: dict) -> dict:
  """correlations.npz, neurons.csv, summary.json (with `extra`); returns the summary. With a
  null, also pvalues.npz `[l, k, i]` per metric and each metric's "significance"
  (`significance.null_summary`). ranking: the find section's top_k, top_p_per_layer, threshold
  and fdr_q."""
  r, names, position_names, counts = found.r, found.names, found.positions, found.counts
  n_examples, null_r, threshold = found.n_examples, found.null_r, ranking.threshold
  summary = {"metrics": {}, "positions": list(position_names), **extra}
  p = None if null_r is None else significance.p_values(r, np.asarray(counts)[:len(names)])
  rows = [["rank", "layer", "position", "neuron", "metric", "r", "n"]]
  for j, name in enumerate(names):
    scores, pos = neuron_scores(r[j])
    ranked = top_k(scores, ranking.top_k)
    for rank, (layer, neuron) in enumerate(ranked, 1):
      k = pos[layer, neuron]
      rows.append([rank, layer, position_names[k], neuron, name,
                   f"{r[j, layer, k, neuron]:.6f}", int(counts[j])])
    summary["metrics"][name] = {
          "n": int(counts[j]),
          "nan_excluded": int(n_examples - counts[j]),  # examples whose metric was NaN
          "undefined_neurons": int(np.isnan(scores).sum()),
          "max_abs_r": float(np.nanmax(scores)) if np.isfinite(scores).any() else None,
          "above_threshold": int(np.nansum(scores > threshold)),
          "top_k": [list(x) for x in ranked[:10]],
          "top_p_per_layer": len(top_p_per_layer(scores, ranking.top_p_per_layer)),
      }
    if p is not None:
      summary["metrics"][name]["significance"] = significance.null_summary(
          r[j], null_r[:, j], p[j], q=ranking.fdr_q,
          thresholds=tuple(sorted({*significance.THRESHOLDS, threshold})))
  summary["threshold"] = threshold
  # correlations.npz last: the stage's record of completion is the pipeline's, but a reader of
  # a half-written directory then finds no correlations rather than mismatched tables.
  files.atomic_write(out_dir / "neurons.csv", lambda f: csv.writer(f).writerows(rows), "w")
  files.write_json(out_dir / "summary.json", summary)
  if p is not None:
    files.save_npz(out_dir / "pvalues.npz", **{name: p[j] for j, name in enumerate(names)})
  files.save_npz(out_dir / "correlations.npz", **{name: r[j] for j, name in enumerate(names)})
  return summary


# --- the stage ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Find:
  """What the discovery of every seed's prompt shares: the probe, placed params, the split."""
  config: Any
  setup: Any  # setup.Setup
  runner: Runner
  params: Any
  encoded: data_lib.Encoded
  probe: capture.Probe
  programs: StatsPrograms  # correlate's, for every seed's prompt

  @classmethod
  def build(cls, config) -> "_Find":
    """Mesh, setup, placed params, the find split and the probe of `config`."""
    fc, first = config.find, seed_runs(config)[0]  # seed runs differ only in train.seed
    runner = Runner.build(first, fc.batch_size, "find.batch_size")
    setup = prepare(first, eval_plan(runner.mesh, fc.batch_size), runner.mesh)
    params, _ = runner.place(setup.params, first.train.param_sharding)
    encoded = encoded_split(setup, first, fc.split)
    custom = load_custom_metrics(fc.custom_metrics)
    probe = capture.Probe(setup.model, setup.task.kind, jnp.asarray(setup.verbalizer), fc.sites,
                          config.prompt.length,
                          metric_names(fc.metrics, encoded, setup.task.kind, custom), custom)
    c = setup.model.config
    like = runner.replicate({"embeddings": jnp.zeros((config.prompt.length, c.hidden_size),
                                                     jnp.float32)})
    programs = stats_programs(probe, params, like, encoded, runner=runner, streaming=Streaming(
        permutations=fc.permutations, permutation_seed=fc.permutation_seed))
    return cls(config, setup, runner, params, encoded, probe, programs)

  @property
  def names(self) -> tuple[str, ...]:
    """The metrics correlated, in the order of r's first axis."""
    return self.probe.metric_names

  def correlate(self, run, prompt, progress: bool):
    """`correlate` of one (seed) run's prompt, checkpointed in its find_checkpoints/."""
    fc = self.config.find
    streaming = Streaming(run.run_dir / "find_checkpoints", fc.checkpoint_every, fc.merge_every,
                          progress, fc.permutations, fc.permutation_seed)
    return correlate(self.probe, self.params, prompt, self.encoded, runner=self.runner,
                     streaming=streaming, programs=self.programs)

  def predictivity(self, run, prompt, st: dict) -> dict | None:
    """The 2022 baseline for a binary label (threshold: the train mean activation, from the
    statistics just taken): predictivity.npz of the run, and its summary."""
    task = self.setup.task
    if not (task.kind == "classification" and len(task.verbalizer) == 2
            and self.setup.dev is not None and self.config.find.split == "train"
            and "label" in self.names):
      return None
    j = self.names.index("label")
    baseline = (st["mean_x"][j] + st["ref_x"]).astype(np.float32)
    acc, n_dev = predictivity(self.probe, self.params, prompt, self.setup.dev, baseline,
                              runner=self.runner)
    Runner.write("find: predictivity.npz", lambda: files.save_npz(
        run.run_dir / "predictivity.npz", accuracy=acc, score=np.abs(acc - 0.5)))
    return {"n_dev": n_dev,
            "top_k": [list(x) for x in top_k(neuron_scores(np.abs(acc - 0.5))[0], 10)],
            "max_score": float(np.abs(acc - 0.5).max())}

  def save_activations(self, r: np.ndarray, prompt, position_names) -> None:
    """activations.npz, the report's raw material: the top few neurons of each metric (by the
    r given), on every example of the find split, with the metrics; activations_heldout.npz
    the same neurons on find.heldout_split (when the task has it and it is another split)."""
    features = []
    for j in range(len(self.names)):
      scores, pos = neuron_scores(r[j])
      for layer, neuron in top_k(scores, self.config.find.report_neurons):
        if (layer, int(pos[layer, neuron]), neuron) not in features:
          features.append((layer, int(pos[layer, neuron]), neuron))
    if not features:
      return
    fc = self.config.find
    splits = [(fc.split, self.encoded, "activations.npz")]
    held = fc.heldout_split
    if held and held != fc.split and self.setup.task.splits.get(held):
      encoded = encoded_split(self.setup, seed_runs(self.config)[0], held)
      missing = [m for m in self.names if m.startswith("meta_") and m[5:] not in encoded.metadata]
      if missing:
        log.warning("find.heldout_split=%s has no metadata %s: no activations_heldout.npz",
                    held, missing)
      else:
        splits.append((held, encoded, "activations_heldout.npz"))
    for split, encoded, name in splits:
      acts, values = top_activations(self.probe, self.params, prompt, encoded, features,
                                     runner=self.runner)
      texts = [ex.input for ex in self.setup.task.splits[split]]
      Runner.write(f"find: {name}", lambda: files.save_npz(
          self.config.run_dir / name, features=np.asarray(features, np.int32),
          activations=acts, metrics=values, metric_names=np.asarray(self.names),
          position_names=np.asarray(position_names), texts=np.asarray(texts),
          split=np.asarray(split)))
      if name == "activations.npz":
        self.save_token_activations(features, acts, prompt)

  def save_token_activations(self, features: list, acts: np.ndarray, prompt) -> None:
    """token_activations.npz, the report's token-coloured examples: for each feature, its top
    and bottom find.browser_examples examples of the find split (by `acts` `[n, F]`, its
    activations there), run again with every position captured: examples `[r]` (the rows' indices
    in the split), activations float32 `[r, t, F]` (every feature at every position of each row),
    tokens str `[r, t]` (each id decoded alone; "[P<j>]" for prompt slot j; "" off the mask),
    attention_mask and prompt_index `[r, t]`, sites int `[r, k]` (the column of each capture
    site), top and bottom `[F, e]` (example indices, largest / smallest activation first)."""
    e = min(self.config.find.browser_examples, acts.shape[0])
    if not e:
      return
    top = np.argsort(-acts, axis=0, kind="stable")[:e].T
    bottom = np.argsort(acts, axis=0, kind="stable")[:e].T
    rows = np.unique(np.concatenate([top.ravel(), bottom.ravel()]))
    split = self.config.find.split
    encoded = encode_rows(seed_runs(self.config)[0], self.setup, split, rows)
    values = token_examples(self.probe, self.params, prompt, encoded, features,
                            runner=self.runner)
    sites = np.asarray(capture.capture_index(encoded.batch(), self.probe.sites,
                                             self.probe.prompt_length))
    tokens = token_texts(self.setup.tokenizer, encoded)
    Runner.write("find: token_activations.npz", lambda: files.save_npz(
        self.config.run_dir / "token_activations.npz", features=np.asarray(features, np.int32),
        examples=rows, activations=values, tokens=tokens,
        attention_mask=encoded.attention_mask, prompt_index=encoded.prompt_index, sites=sites,
        top=top, bottom=bottom, split=np.asarray(split)))


def find(config, *, progress: bool = True) -> dict:
  """Correlates the activations under the trained prompt(s) with the metrics; returns the
  summary. The prompts must have been trained (the pipeline orders the stages)."""
  fc = config.find
  position_names = capture.site_positions(fc.sites, config.prompt.length, config.prompt.placement)
  ctx = _Find.build(config)
  runs = seed_runs(config)
  results, predictivity_summary = [], {}
  for run in runs:
    prompt = {"embeddings": jnp.asarray(load_prompt(run))}
    r, st = ctx.correlate(run, prompt, progress)
    results.append((run, r, st["n"], st["null_r"]))
    baseline = ctx.predictivity(run, prompt, st)
    if baseline is not None:
      predictivity_summary[run.name] = baseline
  n = len(ctx.encoded)
  found = [Found(r, ctx.names, tuple(position_names), counts, n, null_r)
           for _, r, counts, null_r in results]
  extra = {"split": fc.split, "examples": n, "sites": list(fc.sites),
           "seeds": list(fc.seeds or (config.train.seed,)),
           "predictivity_2022": predictivity_summary or None}
  r_all = results[0][1] if len(results) == 1 else np.nanmean(  # the mean over seeds
      np.stack([r for _, r, _, _ in results]), axis=0)
  ctx.save_activations(r_all, {"embeddings": jnp.asarray(load_prompt(runs[0]))}, position_names)
  # Every process holds the same statistics; one writes them.
  return Runner.write("find: outputs written", lambda: _write_find_outputs(
      config, found, r_all, {**extra, **metric_checks.find_checks(config, ctx.setup.task)})) or {}


def _write_find_outputs(config, found: list[Found], mean_r: np.ndarray, extra: dict) -> dict:
  """found: each seed run's (or the one run's); mean_r: r averaged over the seeds' runs (the one
  run's r for a single seed)."""
  fc = config.find
  if len(found) == 1:
    return write_outputs(config.run_dir, found[0], fc, extra)
  for run, one in zip(seed_runs(config), found):  # each seed's significance in its own directory
    write_outputs(run.run_dir, one, fc, extra)
  overlap, ranks = {}, {}
  for j, name in enumerate(found[0].names):
    scores = [neuron_scores(one.r[j])[0] for one in found]
    sets = [top_k(s, fc.top_k) for s in scores]
    overlap[name] = float(np.mean([iou(a, b) for i, a in enumerate(sets) for b in sets[i + 1:]]))
    ranks[name] = significance.rank_agreement(scores)
  counts = np.min(np.stack([one.counts for one in found]), axis=0)
  mean = dataclasses.replace(found[0], r=mean_r, counts=counts, null_r=None)
  return write_outputs(config.run_dir, mean, fc, {**extra, "seed_overlap_iou_top_k": overlap,
                                                  "seed_rank_correlation": ranks})
