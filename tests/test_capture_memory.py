"""Capture memory depends on the number of captured positions K, not on the sequence length T.

Measured on the compiled programs (XLA's memory analysis): the extra bytes a capturing forward
needs over a plain one stay flat from T=64 to T=1024, and stay far below what keeping every
position would cost ([layers, batch, T, neurons] floats: 16 MiB at T=1024 here).
"""

import jax
import jax.numpy as jnp
import pytest

import jaxskill
from jaxskill.model.architecture import Architecture

CONFIG = Architecture(128, 64, 512, 4, 4, 2, 1e4)
B, K = 2, 4


def _extra_bytes(t):
  model = jaxskill.CausalLM(CONFIG)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
  ids = jax.ShapeDtypeStruct((B, t), jnp.int32)
  pos = jax.ShapeDtypeStruct((B, K), jnp.int32)

  def capture(p, i, q):
    return model.apply({"params": p}, i, capture_positions=q, logits_positions=q,
                       mutable=["intermediates"])

  def plain(p, i, q):
    return model.apply({"params": p}, i, logits_positions=q)

  stats = [jax.jit(f).lower(params, ids, pos).compile().memory_analysis() for f in (capture, plain)]
  if any(s is None for s in stats):
    pytest.skip("this backend gives no memory analysis")
  cap, base = ((s.temp_size_in_bytes + s.output_size_in_bytes) for s in stats)
  return cap - base, stats[0].output_size_in_bytes - stats[1].output_size_in_bytes


def test_capture_memory_flat_in_sequence_length():
  captured_bytes = B * CONFIG.num_hidden_layers * K * CONFIG.intermediate_size * 4
  extra_short, out_short = _extra_bytes(64)
  extra_long, out_long = _extra_bytes(1024)
  all_positions_long = B * CONFIG.num_hidden_layers * 1024 * CONFIG.intermediate_size * 4
  # The returned activations are [b, l, K, i] floats at any length (plus a few bytes of the
  # output tuple's bookkeeping).
  assert out_short == out_long
  assert captured_bytes <= out_long <= captured_bytes + 64
  # Extra working memory: a small multiple of the captured bytes, not a function of T.
  assert extra_long <= 8 * captured_bytes, (extra_long, captured_bytes)
  assert extra_short <= 8 * captured_bytes, (extra_short, captured_bytes)
  assert extra_long < all_positions_long / 16


def test_out_of_range_positions_give_nan_not_a_neighbour():
  """JAX's default gather clamps an index past the end to the last position, which would pass
  another token's activations off as the one asked for; capture and logits give NaN instead."""
  import numpy as np
  t = 10
  # float64: the logits at two positions come from an lm_head matmul over 4 rows instead of 20,
  # which may sum the 128 hidden terms in another order: up to 128 * eps * sum |h w| (~20 here),
  # 3e-4 in float32 but 6e-13 in float64.
  with jax.enable_x64(True):
    model, params = jaxskill.load_model("demo", dtype=jnp.float64)
    ids = jnp.arange(2 * t, dtype=jnp.int32).reshape(2, t) % 50
    every = jnp.tile(jnp.arange(t), (2, 1))
    full_logits, v = model.apply({"params": params}, ids, capture_positions=every,
                                 mutable=["intermediates"])
    full = np.asarray(jaxskill.neuron_activations(v))  # [b, l, t, i]
    pos = jnp.array([[t - 1, t], [0, t + 5]])  # the second column is past the end
    logits, v = model.apply({"params": params}, ids, capture_positions=pos, logits_positions=pos,
                            mutable=["intermediates"])
    acts = np.asarray(jaxskill.neuron_activations(v))
    logits, full_logits = np.asarray(logits), np.asarray(full_logits)
  assert logits.dtype == np.float64
  np.testing.assert_array_equal(acts[0, :, 0], full[0, :, t - 1])
  np.testing.assert_array_equal(acts[1, :, 0], full[1, :, 0])
  np.testing.assert_allclose(logits[:, 0], full_logits[[0, 1], [t - 1, 0]], atol=1e-11, rtol=0)
  assert np.isnan(acts[:, :, 1]).all() and np.isnan(logits[:, 1]).all()
