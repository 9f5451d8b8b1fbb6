"""The forward pass with the soft prompt, and the metrics of its answer: the one code path that
training, discovery, verification and the neuron mean all run.

Shapes: b batch rows, t tokens per row, h hidden size, v vocabulary, c verbalizer words, l layers,
k captured positions per row, i neurons per layer.

`prompted_apply(model, params, prompt, batch, kind=..., capture=..., edit=..., input_cols=...)`:
  1. embed the batch's tokens and put the prompt vectors in their slots (`prompt_index`);
  2. run the frozen model, with an optional neuron intervention (`edit`, see
     `jaxskill.interventions`) and the neuron activations read at `capture` positions;
  3. return the answer's logits: `[b, v]` at `answer_pos` (classification) or `[b, t, v]`
     (generation, whose loss runs over the answer tokens).
`metrics(logits, batch, kind, verbalizer)`: every built-in per-example metric of those logits.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from jaxskill import prompt as prompt_lib
from jaxskill.batch import Batch
from jaxskill.model import Qwen2LM, neuron_activations

# The built-in per-example metrics of `metrics` (NaN where undefined), which discovery offers:
#   label       the external label (classification)
#   confidence  probability of the gold answer (classification: over the verbalizer; generation:
#               the geometric mean over the answer tokens, exp(-loss))
#   max_prob    the largest probability (verbalizer / first answer token)
#   margin      gold probability minus the best other one (same distribution as max_prob)
#   loss        cross-entropy of the gold answer (mean over answer tokens for generation)
#   correct     1 if the argmax is the gold answer (all answer tokens for generation)
#   entropy     of the same distribution as max_prob
METRICS = ("label", "confidence", "max_prob", "margin", "loss", "correct", "entropy")


class Output(NamedTuple):
  """What `prompted_apply` returns."""
  logits: jax.Array | None  # `[b, v]` (classification) or `[b, t - input_cols, v]` (generation)
  activations: jax.Array | None  # `[b, l, k, i]` at the `capture` positions, or None
  batch: Batch  # the batch the logits line up with (columns from `input_cols` on)


def prompted_apply(model: Qwen2LM, params, prompt, batch: Batch, *, kind: str,
                   capture: jax.Array | None = None, edit: Callable | None = None,
                   input_cols: int = 0, logits: bool = True) -> Output:
  """The model on `batch` with `prompt` inserted.

  prompt: {"embeddings": `[p, h]`}; batch: `[b, t]` rows (see `jaxskill.batch`).
  capture: int `[b, k]` positions whose neuron activations are returned.
  edit: a neuron intervention applied in every layer's MLP at every position (a pytree with a
    leading layer axis, e.g. `jaxskill.interventions.NeuronEdit`).
  input_cols: the column where the prompt starts in every row (infix layout), or 0. The
    columns before it cannot depend on the prompt: they run once as a constant cache, so a
    gradient with respect to the prompt only differentiates the t - input_cols columns after it.
  logits: False when only the activations matter (the LM head then runs at one position).
  """
  chex.assert_rank(batch.input_ids, 2)
  chex.assert_equal_shape([batch.input_ids, batch.attention_mask, batch.prompt_index])
  chex.assert_shape(prompt["embeddings"], (None, model.config.hidden_size))
  past = None
  if input_cols:
    past = jax.lax.stop_gradient(model.apply(
        {"params": params}, batch.input_ids[:, :input_cols],
        attention_mask=batch.attention_mask[:, :input_cols], method=model.prefill))
    batch = batch.after(input_cols)
  embeds = model.apply({"params": params}, batch.input_ids, method=model.embed)
  embeds = prompt_lib.insert_prompt(embeds, prompt, batch.prompt_index)
  at = None  # every position
  if not logits:
    at = jnp.zeros((embeds.shape[0], 1), jnp.int32)
  elif kind == "classification":
    at = batch.answer_pos[:, None]
  out = model.apply({"params": params}, inputs_embeds=embeds,
                    attention_mask=batch.attention_mask, past=past, neuron_edit=edit,
                    capture_positions=capture, logits_positions=at,
                    mutable=["intermediates"] if capture is not None else False)
  values, acts = (out[0], neuron_activations(out[1])) if capture is not None else (out, None)
  if not logits:
    values = None
  elif kind == "classification":
    values = values[:, 0]
  return Output(values, acts, batch)


def metrics(logits: jax.Array, batch: Batch, kind: str, verbalizer: jax.Array) -> dict:
  """name -> `[b]` float32 for each of METRICS. logits: `[b, v]` at answer_pos
  (classification) or `[b, t, v]` (generation)."""
  if kind == "classification":
    logp = jax.nn.log_softmax(logits[:, verbalizer], axis=-1)  # [b, c]
    gold = batch.label
    gold_logp = jnp.take_along_axis(logp, gold[:, None], axis=-1)[:, 0]
    correct = jnp.argmax(logp, -1) == gold
    label = gold.astype(jnp.float32)
  else:
    logp_all = jax.nn.log_softmax(logits, axis=-1)  # [b, t, v]
    mask = batch.loss_mask.astype(jnp.float32)
    tok = jnp.take_along_axis(logp_all, batch.targets[..., None], axis=-1)[..., 0]
    gold_logp = (tok * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
    correct = jnp.all((jnp.argmax(logp_all, -1) == batch.targets) | (mask == 0), axis=-1)
    logp = jnp.take_along_axis(logp_all, batch.answer_pos[:, None, None], axis=1)[:, 0]
    label = jnp.full(gold_logp.shape, jnp.nan)
  p = jnp.exp(logp)
  gold_p = jnp.exp(gold_logp)
  if kind == "classification":
    others = jnp.where(jax.nn.one_hot(batch.label, p.shape[-1]) > 0, -jnp.inf, p)
    margin = gold_p - others.max(-1)
  else:
    first_gold = jnp.take_along_axis(batch.targets, batch.answer_pos[:, None], axis=1)
    gold_first = jnp.take_along_axis(p, first_gold, axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(first_gold[:, 0], p.shape[-1]) > 0, -jnp.inf, p)
    margin = gold_first - others.max(-1)
  entropy = -(p * jnp.where(p > 0, logp, 0.0)).sum(-1)
  return {"label": label, "confidence": gold_p, "max_prob": p.max(-1), "margin": margin,
          "loss": -gold_logp, "correct": correct.astype(jnp.float32), "entropy": entropy}
