"""Causal verification: do the neurons found matter for the task?

For each selection metric (whose top neurons, by |r| from `correlations.npz`, are tested), each
intervention mode (noise / zero / train mean, see `jaxskill.interventions`) and each K of the
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
import hashlib
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxskill import files, forward, interventions, sharding
from jaxskill import data as data_lib
from jaxskill.config import seed_runs
from jaxskill.selection import neuron_scores, random_matched, top_k
from jaxskill.setup import encoded_split, eval_plan, load_prompt, prepare

log = logging.getLogger("jaxskill.verify")

METRICS = ("correct", "confidence", "loss", "margin")  # per example, from forward.metrics


def example_metrics(prompt, params, batch, edit, batch_index, *, model, kind, verbalizer):
  """`[b, len(METRICS)]` for one batch with `edit` applied (None: no intervention). The noise
  key is folded with the batch index so that batches get independent noise."""
  if edit is not None:
    edit = dict(edit, key=jax.vmap(lambda k: jax.random.fold_in(k, batch_index))(edit["key"]))
  out = forward.prompted_apply(model, params, prompt, batch, kind=kind, edit=edit)
  values = forward.metrics(out.logits, batch, kind, verbalizer)
  return jnp.stack([values[m] for m in METRICS], axis=1)


def position_mean(prompt, params, batch, *, model, kind):
  """(sum over the batch's real tokens of the neuron activations `[l, i]`, token count)."""
  b, t = batch["input_ids"].shape
  out = forward.prompted_apply(model, params, prompt, batch, kind=kind, logits=False,
                               capture=jnp.broadcast_to(jnp.arange(t), (b, t)))
  acts = out.activations.astype(jnp.float32)  # [b, l, t, i]
  w = batch["attention_mask"].astype(jnp.float32) * batch["valid"][:, None]
  return jnp.einsum("blti,bt->li", acts, w), w.sum()


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
  """values `[n, len(METRICS)]` -> means, with accuracy per group. NaN rows (undefined
  metrics) are left out of their metric's mean."""
  out = {("accuracy" if m == "correct" else m): float(np.nanmean(values[:, j]))
         for j, m in enumerate(METRICS)}
  if groups is not None:
    out["group_accuracy"] = {g: float(values[groups == g, 0].mean())
                             for g in sorted(set(groups.tolist()))}
  return out


def _read_progress(path: Path, fingerprint: str) -> dict:
  """Finished evaluations of this same verification (same prompt, correlations and verify
  config); records of an earlier one are ignored."""
  done, keep = {}, []
  if path.exists():
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
      try:
        record = json.loads(line)
        ours = record.get("fingerprint") == fingerprint
        if ours:
          done[record["key"]] = record["result"]
      except (json.JSONDecodeError, AttributeError, KeyError):
        continue  # a line cut short by an interruption: evaluated again
      keep.append(line)
    if sharding.is_writer():  # without the cut line, so the next record starts cleanly
      files.write_text(path, "".join(line + "\n" for line in keep))
  return done


def _fingerprint(*parts) -> str:
  h = hashlib.sha256()
  for part in parts:
    h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
  return h.hexdigest()[:16]


def _control(results: list[dict], baseline: dict) -> dict:
  """Mean and standard deviation over the random draws, of each metric and of its drop."""
  out = {}
  for name in baseline:
    if name == "group_accuracy":
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
  mesh = sharding.make_mesh(config.train.data_parallel, config.train.model_parallel)
  if vc.batch_size % mesh.shape["data"]:
    raise ValueError(f"verify.batch_size={vc.batch_size} is not divisible by the "
                     f"{mesh.shape['data']} devices of the data axis")
  setup = prepare(config, eval_plan(mesh, vc.batch_size))
  ranked_by, skipped = selections(config, correlations, setup.task.kind)
  prompt_run = seed_runs(config)[0]  # with several seeds: the first seed's prompt
  prompt = jax.device_put({"embeddings": jnp.asarray(load_prompt(prompt_run))},
                          NamedSharding(mesh, P()))
  params, _ = sharding.place_params(setup.params, mesh, config.train.param_sharding)
  evaluate, n = _evaluator(config, setup, mesh, prompt, params)
  mean = _neuron_mean(config, setup, mesh, prompt, params) if "mean" in vc.modes else None
  progress_path = config.run_dir / "verify_progress.jsonl"
  fingerprint = _fingerprint(np.asarray(prompt["embeddings"]).tobytes(), corr_path.read_bytes(),
                             to_dict(vc), to_dict(config.task))
  done = _read_progress(progress_path, fingerprint)
  sharding.barrier("verify: progress read")
  c = setup.model.config
  jobs, random_sets = _jobs(vc, ranked_by, c.intermediate_size)

  def edit_of(spec):
    mode, neurons, draw = spec
    return jax.device_put(interventions.neuron_edit(
        c.num_hidden_layers, c.intermediate_size, neurons, mode, sigma=vc.sigma, mean=mean,
        key=jax.random.PRNGKey(vc.seed * 1000 + draw) if mode == "noise" else None),
        NamedSharding(mesh, P()))
  _run_jobs(jobs, done, lambda spec: evaluate(None if spec is None else edit_of(spec)),
            progress_path, fingerprint, progress)
  results = _results(vc, done, ranked_by, random_sets, skipped, n=n,
                     prompt=prompt_run.run_dir / "prompt_best.npy")
  if sharding.is_writer():
    files.write_json(config.run_dir / "verify.json", results)
  sharding.barrier("verify: outputs written")
  return results


def _evaluator(config, setup, mesh, prompt, params):
  """(evaluate(edit) -> `summarize` of the verify split with `edit`, number of examples)."""
  vc = config.verify
  encoded = encoded_split(setup, config, vc.split)
  groups = group_keys(encoded.metadata, vc.group_by, len(encoded)) if vc.group_by else None
  metrics_fn = jax.jit(functools.partial(example_metrics, model=setup.model,
                                         kind=setup.task.kind,
                                         verbalizer=jnp.asarray(setup.verbalizer)),
                       out_shardings=NamedSharding(mesh, P()))
  local = sharding.local_rows(mesh, vc.batch_size)  # each process feeds only its rows
  batches = [sharding.put_local(b, mesh, vc.batch_size)
             for b in data_lib.eval_batches(encoded, vc.batch_size, local=local)]
  valid = [data_lib.global_valid(len(encoded), vc.batch_size, start)
           for start in range(0, len(encoded), vc.batch_size)]

  def evaluate(edit) -> dict:
    rows = [np.asarray(metrics_fn(prompt, params, b, edit, i))[v]
            for i, (b, v) in enumerate(zip(batches, valid))]
    return summarize(np.concatenate(rows), groups)
  return evaluate, len(encoded)


def _neuron_mean(config, setup, mesh, prompt, params) -> np.ndarray:
  """The train-split mean of every neuron `[l, i]` over all real positions, with the prompt
  (neuron_mean.npy: computed once per verification)."""
  path = config.run_dir / "neuron_mean.npy"
  if path.exists():
    return files.load_npy(path)
  vc, c = config.verify, setup.model.config
  mean_fn = jax.jit(functools.partial(position_mean, model=setup.model, kind=setup.task.kind),
                    out_shardings=NamedSharding(mesh, P()))
  local = sharding.local_rows(mesh, vc.batch_size)
  total, count = np.zeros((c.num_hidden_layers, c.intermediate_size)), 0.0
  for b in data_lib.eval_batches(setup.train, vc.batch_size, local=local):
    s, n = mean_fn(prompt, params, sharding.put_local(b, mesh, vc.batch_size))
    total, count = total + np.asarray(s, np.float64), count + float(n)
  mean = (total / count).astype(np.float32)
  if sharding.is_writer():
    files.save_npy(path, mean)
  return mean


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


def _run_jobs(jobs, done: dict, evaluate, progress_path: Path, fingerprint: str,
              progress: bool) -> None:
  """Evaluates the jobs not in `done` (filled in), each appended to the progress log as it
  finishes, so that an interruption loses at most the evaluation under way."""
  from tqdm.auto import tqdm
  bar = tqdm(total=len(jobs), initial=sum(key in done for key, _ in jobs), disable=not progress,
             desc="verify")
  for key, spec in jobs:
    if key in done:
      continue
    done[key] = evaluate(spec)
    if sharding.is_writer():
      with open(progress_path, "a") as f:
        f.write(json.dumps({"key": key, "fingerprint": fingerprint, "result": done[key]})
                + "\n")
    bar.update(1)
  bar.close()


def _results(vc, done: dict, ranked_by: dict, random_sets: dict, skipped: dict, *, n: int,
             prompt: Path) -> dict:
  """verify.json: the baseline, and per selection, mode and K the top-K against its controls."""
  ks = sorted(set(vc.k_list) | {vc.k})
  baseline = done["baseline"]
  results = {"split": vc.split, "n": n, "prompt": str(prompt),
             "metrics": [("accuracy" if m == "correct" else m) for m in METRICS],
             "modes": list(vc.modes), "sigma": vc.sigma, "k": vc.k, "k_list": ks,
             "random_draws": vc.random_draws, "group_by": list(vc.group_by),
             "baseline": baseline, "selections": {}, "skipped": skipped}
  for sel, ranked in ranked_by.items():
    per_sel = {"neurons": [list(x) for x in ranked[:max(ks)]], "modes": {}}
    for mode in vc.modes:
      per_sel["modes"][mode] = {str(k): _row(
          done[f"{sel}|{mode}|{k}|top"],
          [done[f"{sel}|{mode}|{k}|random{d}"] for d in range(vc.random_draws)], baseline,
          layers=sorted({layer for layer, _ in ranked[:k]}), draws=random_sets[sel, k])
          for k in ks}
    results["selections"][sel] = per_sel
  return results


def _row(top: dict, randoms: list[dict], baseline: dict, *, layers, draws) -> dict:
  """One (selection, mode, K) entry: the top-K's metrics, the random sets' spread, the drop."""
  control = _control(randoms, baseline)
  drop = baseline["accuracy"] - top["accuracy"]
  mean_drop, std = control["accuracy_drop"]["mean"], control["accuracy_drop"]["std"]
  return {"top": top, "random": control, "accuracy_drop": drop,
          "random_accuracy_drop_mean": mean_drop, "random_accuracy_drop_std": std,
          "drop_ratio": (drop / mean_drop) if mean_drop > 0 else None,
          # How far outside the random spread: (top drop - mean random drop) / random std.
          "drop_z": (drop - mean_drop) / std if std > 0 else None,
          "layers": layers, "random_neurons": [[list(x) for x in draw] for draw in draws]}
