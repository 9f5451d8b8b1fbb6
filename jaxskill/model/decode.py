"""Greedy decoding without a KV cache: each step re-runs the forward pass on a fixed-size buffer.

O(new_tokens * length) work, but one compiled program for any prompt of a given padded shape;
decoding is a check and a demo here, not the hot path (the method reads teacher-forced passes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxskill.model.modules import CausalLM


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens"))
def greedy_generate(model: CausalLM, params, input_ids: jax.Array, attention_mask: jax.Array,
                    max_new_tokens: int, eos_token_id: int = -1, pad_token_id: int = 0):
  """Appends `max_new_tokens` greedy tokens to padded prompts.

  Args:
    input_ids, attention_mask: int `[b, t]`, padded on the left or the right (new tokens go after
      column t - 1 either way; masked pads in between are skipped by the positions).
    eos_token_id: a row that emits it gets `pad_token_id` afterwards (-1: never stop).
  Returns: int `[b, max_new_tokens]`, the new tokens only.
  """
  b, t = input_ids.shape
  ids = jnp.concatenate([input_ids, jnp.full((b, max_new_tokens), pad_token_id, input_ids.dtype)],
                        axis=1)
  mask = jnp.concatenate([attention_mask.astype(jnp.int32),
                          jnp.zeros((b, max_new_tokens), jnp.int32)], axis=1)

  # The first token follows each row's last real token (not column t - 1 if right padded).
  last_real = jnp.max(jnp.where(attention_mask > 0, jnp.arange(t), -1), axis=1)

  def step(i, carry):
    """Writes new token i of every row at column t + i. carry: ids int and mask int32
    `[b, t + max_new_tokens]`, done bool `[b]`."""
    ids, mask, done = carry
    cur = t + i
    read = jnp.where(i == 0, last_real, cur - 1)[:, None]
    logits = model.apply({"params": params}, ids, attention_mask=mask, logits_positions=read)
    token = jnp.argmax(logits[:, 0], axis=-1).astype(ids.dtype)
    token = jnp.where(done, pad_token_id, token)
    done = done | (token == eos_token_id)
    return ids.at[:, cur].set(token), mask.at[:, cur].set(1), done

  ids, _, _ = jax.lax.fori_loop(0, max_new_tokens, step, (ids, mask, jnp.zeros((b,), bool)))
  return ids[:, t:]
