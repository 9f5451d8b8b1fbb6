"""The soft prompt: its own pytree `{"embeddings": [p, h]}`, separate from the model params.

Where it sits is decided per token by `prompt_index` (`jaxskill.tasks.encode` builds it):
position t of row
b holds prompt vector `prompt_index[b, t]`, or the token embedding where that is -1. So prefix and
infix placements, left or right padding, all go through one function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Prompt = dict  # {"embeddings": Array[p, h]}


def init_random(key: jax.Array, length: int, hidden: int, std: float,
                dtype=jnp.float32) -> Prompt:
  """{"embeddings": `[p, h]`} in `dtype`, p = `length`, drawn from N(0, std^2)."""
  return {"embeddings": (std * jax.random.normal(key, (length, hidden))).astype(dtype)}


def init_from_vocab(key: jax.Array, embedding: jax.Array, length: int) -> Prompt:
  """p = `length` rows of the embedding table `[v, h]`, sampled without replacement (with it
  only when p > v): {"embeddings": `[p, h]`} in the table's dtype."""
  rows = jax.random.choice(key, embedding.shape[0], (length,),
                           replace=length > embedding.shape[0])
  return {"embeddings": jnp.asarray(embedding)[rows]}


def init_from_text(token_ids: list[int], embedding: jax.Array, length: int) -> Prompt:
  """The embeddings of a text's tokens, repeated or cut to p = `length` (as PEFT's TEXT init
  does): embedding `[v, h]` -> {"embeddings": `[p, h]`} in its dtype."""
  if not token_ids:
    raise ValueError("prompt.init_text tokenizes to no tokens")
  ids = np.resize(np.asarray(token_ids), length)  # np.resize repeats the sequence cyclically
  return {"embeddings": jnp.asarray(embedding)[ids]}


def insert_prompt(embeds: jax.Array, prompt: Prompt, prompt_index: jax.Array) -> jax.Array:
  """embeds `[b, t, h]`, prompt `[p, h]`, prompt_index int `[b, t]` (-1: keep the token) ->
  `[b, t, h]` in embeds' dtype."""
  vectors = prompt["embeddings"].astype(embeds.dtype)[jnp.maximum(prompt_index, 0)]  # [b, t, h]
  return jnp.where((prompt_index >= 0)[..., None], vectors, embeds)
