"""Capture sites and auxiliary metrics, computed in one forward pass with the trained prompt.

Sites (which token positions' neuron activations are read):
  prompt      the P prompt positions (infix prompts only: a prefix prompt comes before the input
              in a causal model, so its activations are the same for every example)
  last_input  the last input token
  answer      the position whose next-token logits give the answer (`answer_pos`)
Metrics (one number per example; NaN where undefined):
  label       the external label (classification)
  confidence  probability of the gold answer (classification: over the verbalizer; generation:
              the geometric mean over the answer tokens, exp(-loss))
  max_prob    the largest probability (verbalizer / first answer token)
  margin      gold probability minus the best other one (same distribution as max_prob)
  loss        cross-entropy of the gold answer (mean over answer tokens for generation)
  correct     1 if the argmax is the gold answer (all answer tokens for generation)
  entropy     of the same distribution as max_prob
plus any numeric metadata column of the task ("meta_<column>") and user functions
`fn(logits, batch) -> [b]` passed by name.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxskill import prompt as prompt_lib
from jaxskill.model import Qwen2LM, neuron_activations

SITES = ("prompt", "last_input", "answer")
BUILTIN_METRICS = ("label", "confidence", "max_prob", "margin", "loss", "correct", "entropy")
MetricFn = Callable[[jax.Array, dict], jax.Array]


def site_positions(sites: tuple[str, ...], prompt_length: int, placement: str) -> list[str]:
  """Names of the captured positions, in order, e.g. ["prompt0", ..., "last_input"]."""
  names = []
  for site in sites:
    if site not in SITES:
      raise ValueError(f"unknown capture site {site!r}; valid: {list(SITES)}")
    if site == "prompt":
      if placement != "infix":
        raise ValueError(
            "capture site 'prompt' with a prefix prompt: in a causal model the prompt comes "
            "before the input, so its activations are identical for every example and "
            "correlate with nothing; use an infix prompt or the sites last_input / answer")
      names += [f"prompt{j}" for j in range(prompt_length)]
    else:
      names.append(site)
  return names


def capture_index(batch: dict, sites: tuple[str, ...], prompt_length: int) -> jax.Array:
  """int `[b, k]` positions of the sites for each row."""
  cols = []
  for site in sites:
    if site == "prompt":
      cols.append(batch["prompt_start"][:, None] + jnp.arange(prompt_length)[None])
    elif site == "last_input":
      cols.append((batch["input_end"] - 1)[:, None])
    else:
      cols.append(batch["answer_pos"][:, None])
  return jnp.concatenate(cols, axis=1)


def builtin_metrics(logits: jax.Array, batch: dict, kind: str, verbalizer: jax.Array) -> dict:
  """name -> `[b]` float32. logits: `[b, v]` at answer_pos (classification) or `[b, t, v]`."""
  if kind == "classification":
    logp = jax.nn.log_softmax(logits[:, verbalizer], axis=-1)  # [b, c]
    gold = batch["label"]
    gold_logp = jnp.take_along_axis(logp, gold[:, None], axis=-1)[:, 0]
    correct = jnp.argmax(logp, -1) == gold
    label = gold.astype(jnp.float32)
  else:
    logp_all = jax.nn.log_softmax(logits, axis=-1)  # [b, t, v]
    mask = batch["loss_mask"].astype(jnp.float32)
    tok = jnp.take_along_axis(logp_all, batch["targets"][..., None], axis=-1)[..., 0]
    gold_logp = (tok * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
    correct = jnp.all((jnp.argmax(logp_all, -1) == batch["targets"]) | (mask == 0), axis=-1)
    logp = jnp.take_along_axis(logp_all, batch["answer_pos"][:, None, None], axis=1)[:, 0]
    label = jnp.full(gold_logp.shape, jnp.nan)
  p = jnp.exp(logp)
  gold_p = jnp.exp(gold_logp)
  if kind == "classification":
    others = jnp.where(jax.nn.one_hot(batch["label"], p.shape[-1]) > 0, -jnp.inf, p)
    margin = gold_p - others.max(-1)
  else:
    first_gold = jnp.take_along_axis(batch["targets"], batch["answer_pos"][:, None], axis=1)
    gold_first = jnp.take_along_axis(p, first_gold, axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(first_gold[:, 0], p.shape[-1]) > 0, -jnp.inf, p)
    margin = gold_first - others.max(-1)
  entropy = -(p * jnp.where(p > 0, logp, 0.0)).sum(-1)
  return {"label": label, "confidence": gold_p, "max_prob": p.max(-1), "margin": margin,
          "loss": -gold_logp, "correct": correct.astype(jnp.float32), "entropy": entropy}


def capture_step(prompt, params, batch, *, model: Qwen2LM, kind: str, verbalizer: jax.Array,
                 sites: tuple[str, ...], prompt_length: int, metric_names: tuple[str, ...],
                 custom: Mapping[str, MetricFn] = ()):
  """One forward pass: (activations `[b, l, k, i]`, metrics `[b, m]` in `metric_names` order).

  `batch` holds the encoded arrays plus "meta_<column>" float arrays for metadata metrics.
  """
  embeds = model.apply({"params": params}, batch["input_ids"], method=model.embed)
  embeds = prompt_lib.insert_prompt(embeds, prompt, batch["prompt_index"])
  positions = capture_index(batch, sites, prompt_length)
  logits_positions = batch["answer_pos"][:, None] if kind == "classification" else None
  logits, variables = model.apply({"params": params}, inputs_embeds=embeds,
                                  attention_mask=batch["attention_mask"],
                                  capture_positions=positions, logits_positions=logits_positions,
                                  mutable=["intermediates"])
  if kind == "classification":
    logits = logits[:, 0]
  values = builtin_metrics(logits, batch, kind, verbalizer)
  for name, fn in dict(custom).items():
    values[name] = fn(logits, batch).astype(jnp.float32)
  columns = [values[name] if name in values else batch[name].astype(jnp.float32)
             for name in metric_names]
  return neuron_activations(variables), jnp.stack(columns, axis=1)


def metadata_columns(metadata: Mapping[str, np.ndarray]) -> list[str]:
  """Numeric metadata columns usable as metrics, as "meta_<column>"."""
  return [f"meta_{k}" for k, v in sorted(metadata.items()) if v.dtype != object]
