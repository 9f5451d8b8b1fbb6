"""The forward pass with the soft prompt, and the metrics of its answer: the one code path that
training, discovery, verification and the neuron mean all run.

Shapes: b batch rows, t tokens per row, h hidden size, v vocabulary, c verbalizer words, l layers,
k captured positions per row, i neurons per layer.

`prompted_apply(model, params, prompt, batch, kind=..., capture=..., edit=..., start=...)`:
  1. embed the batch's tokens and put the prompt vectors in their slots (`prompt_index`);
  2. run the frozen model, with an optional neuron intervention (`edit`, see
     `jaxskill.model.interventions`) and the neuron activations read at `capture` positions;
  3. return the answer's logits: `[b, v]` at `answer_pos` (classification) or `[b, q, v]` at
     the answer's q = `answer_budget` tokens (generation, whose loss runs over them; the other
     t - q positions' logits, most of the LM head's work at a large vocabulary, are never
     computed), with the batch cut to the same window (`Batch.window`).
`metrics(logits, batch, kind, verbalizer)`: every built-in per-example metric of those logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int

from jaxskill.model import prompt as prompt_lib
from jaxskill.model import CausalLM, layer_range, neuron_activations
from jaxskill.model.batch import Batch

# The built-in per-example metrics of `metrics` (NaN where undefined), which discovery offers:
#   label       the external label (classification)
#   confidence  probability of the gold answer (classification: over the verbalizer; generation:
#               the geometric mean over the answer tokens, exp(-loss))
#   max_prob    the largest probability (verbalizer / first answer token)
#   margin      gold probability minus the best other one (same distribution as max_prob)
#   loss        cross-entropy of the gold answer (mean over answer tokens for generation)
#   correct     1 if the gold answer has the largest logit (the argmax; generation: at every
#               answer token, where a tie for the largest counts as right)
#   entropy     of the same distribution as max_prob
METRICS = ("label", "confidence", "max_prob", "margin", "loss", "correct", "entropy")


class Output(NamedTuple):
  """What `prompted_apply` returns."""
  logits: Float[Array, "b *q v"] | None  # `[b, v]` (classification), `[b, q, v]` (generation)
  activations: Float[Array, "b l k i"] | None  # at the `capture` positions, or None
  batch: Batch  # the batch the logits line up with: for generation the answer's window
  # `[b, q]` (or the columns from `input_cols` on, `[b, t - input_cols]`, when q is unknown)


def prompted_embeds(model: CausalLM, params, prompt, batch: Batch) -> Float[Array, "b t h"]:
  """The model's input `[b, t, h]`: the batch's token embeddings with the prompt vectors in
  their slots (`prompt_index`)."""
  embeds = model.apply({"params": params}, batch.input_ids, method=model.embed)
  return prompt_lib.insert_prompt(embeds, prompt, batch.prompt_index)


def residual_at(model: CausalLM, params, prompt, batch: Batch,
                layer: int) -> Float[Array, "b t h"]:
  """The residual stream `[b, t, h]` entering `layer` (0: the prompted embeddings), with no
  intervention: what every edit that leaves layers [0, layer) alone shares, and
  `prompted_apply(..., start=(layer, it))` continues from."""
  embeds = prompted_embeds(model, params, prompt, batch)
  if layer == 0:
    return embeds.astype(model.dtype)
  sub, sub_params = layer_range(model, params, 0, layer)
  return sub.apply({"params": sub_params}, embeds, batch.attention_mask, method=sub.hidden)


def prompted_apply(model: CausalLM, params, prompt, batch: Batch, *, kind: str | None,
                   capture: Int[ArrayLike, "b k"] | None = None, edit: Callable | None = None,
                   start: int | tuple[int, Float[Array, "b t h"]] = 0) -> Output:
  """The model on `batch` with `prompt` inserted.

  prompt: {"embeddings": `[p, h]`}; batch: `[b, t]` rows (see `jaxskill.model.batch`).
  kind: the task's ("classification": logits `[b, v]` at answer_pos; "generation": `[b, q, v]`
    over the answer window), or None when only the activations matter (no logits; the LM head
    runs at one position).
  capture: int `[b, k]` positions whose neuron activations are returned.
  edit: a neuron intervention applied in every layer's MLP at every position (a pytree with a
    leading layer axis, e.g. `jaxskill.model.interventions.NeuronEdit`).
  start: where the forward begins. An int: the column where the prompt starts in every row
    (infix layout; 0: the whole row). The columns before it cannot depend on the prompt: they
    run once as a constant cache, so a gradient with respect to the prompt only differentiates
    the t - start columns after it. A pair (layer, the `residual_at` that layer): layers
    [layer, l) alone, from that residual. Exact when `edit` leaves the layers below alone (its
    layers below `layer` are not applied); captured activations are then those of layers
    [layer, l).
  """
  chex.assert_rank(batch.input_ids, 2)
  chex.assert_equal_shape([batch.input_ids, batch.attention_mask, batch.prompt_index])
  chex.assert_shape(prompt["embeddings"], (None, model.config.hidden_size))
  past = None
  if isinstance(start, tuple):
    layer, embeds = start
    model, params = layer_range(model, params, layer)
    edit = None if edit is None else jax.tree.map(lambda x: x[layer:], edit)
  else:
    if start:
      past = jax.lax.stop_gradient(model.apply(
          {"params": params}, batch.input_ids[:, :start],
          attention_mask=batch.attention_mask[:, :start], method=model.prefill))
      batch = batch.after(start)
    embeds = prompted_embeds(model, params, prompt, batch)
  at, window = None, batch  # logits at every position
  if kind is None:
    at = jnp.zeros((embeds.shape[0], 1), jnp.int32)
  elif kind == "classification":
    at = batch.answer_pos[:, None]
  elif batch.answer_budget:
    window = batch.window(batch.answer_pos, batch.answer_budget)
    at = batch.answer_pos[:, None] + jnp.arange(batch.answer_budget)[None]
  out = model.apply({"params": params}, inputs_embeds=embeds,
                    attention_mask=batch.attention_mask, past=past, neuron_edit=edit,
                    capture_positions=capture, logits_positions=at,
                    mutable=["intermediates"] if capture is not None else False)
  values, acts = (out[0], neuron_activations(out[1])) if capture is not None else (out, None)
  if kind is None:
    values = None
  elif kind == "classification":
    values = values[:, 0]
  return Output(values, acts, window)


def metrics(logits: Float[ArrayLike, "b *q v"], batch: Batch, kind: str,
            verbalizer: Int[ArrayLike, "c"]) -> dict[str, Float[Array, "b"]]:
  """name -> `[b]` float32 for each of METRICS. logits: `[b, v]` at answer_pos
  (classification) or `[b, t', v]` lined up with `batch`'s columns (generation: `Output`'s
  logits and batch)."""
  if kind == "classification":
    logp = jax.nn.log_softmax(logits[:, verbalizer], axis=-1)  # [b, c]
    gold = batch.label
    gold_logp = jnp.take_along_axis(logp, gold[:, None], axis=-1)[:, 0]
    correct = jnp.argmax(logp, -1) == gold
    label = gold.astype(jnp.float32)
  else:
    # log_softmax at the gold tokens alone, without the `[b, q, v]` array of every token's:
    # (x_gold - max) - log sum exp(x - max), the terms jax.nn.log_softmax computes. A token is
    # right when its logit is the largest (the argmax over the vocabulary, a slow variadic
    # reduce on a CPU, is not needed; only an exact tie between floats can tell them apart).
    top = jax.lax.stop_gradient(logits.max(-1))  # [b, q]
    log_sum = jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1))
    gold_x = jnp.take_along_axis(logits, batch.targets[..., None], axis=-1)[..., 0]
    tok = (gold_x - top) - log_sum
    mask = batch.loss_mask.astype(jnp.float32)
    gold_logp = (tok * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
    correct = jnp.all((gold_x >= top) | (mask == 0), axis=-1)
    first = jnp.take_along_axis(logits, batch.answer_pos[:, None, None], axis=1)[:, 0]
    logp = jax.nn.log_softmax(first, axis=-1)  # [b, v]: the first answer token's
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
