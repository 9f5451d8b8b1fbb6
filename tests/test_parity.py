"""jaxskill's Qwen2 against transformers' PyTorch Qwen2ForCausalLM (eager attention, float32)."""

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp

import jaxskill

CASES = {
    "mha_untied_theta1e6": dict(heads=6, kv_heads=6, tied=False, theta=1e6),
    "mha_tied_theta1e4": dict(heads=6, kv_heads=6, tied=True, theta=1e4),
    "gqa3_untied": dict(heads=6, kv_heads=2, tied=False, theta=1e6),
    "gqa3_tied_theta1e4": dict(heads=6, kv_heads=2, tied=True, theta=1e4),
    "mqa": dict(heads=6, kv_heads=1, tied=False, theta=1e6),
}


# Float32 rounding bound for these models (conftest: hidden 48, intermediate 80, 2 layers, 8-dim
# heads, t <= 12, vocab 97): two programs that sum in different orders differ by at most
# K * eps * scale, K the summed lengths of the reductions along the path: per layer q/k/v 48 +
# scores 8 + softmax and mix 2 x 12 + o 48 + gate/up 48 + down 80 = 256, times 2 layers, plus
# final norm 48 and lm_head 48: K ~ 600. Logits and activations here are below 1 in magnitude.
# Two jaxskill programs (other shapes, a cache, remat, unrolling) are compared in float64 (jax
# x64): K * eps64 = 600 * 2.2e-16 = 1.3e-13 per unit of scale. X64_TOL is 100x that, and still
# 1e6 below the float32 bound (7e-5), which is where a wrong mask or position would hide.
X64_TOL = 1e-11


def _batch(seed, b=3, t=11, vocab=97):
  rng = np.random.default_rng(seed)
  return rng.integers(0, vocab, size=(b, t))


def _hf_forward(hf, ids, mask, position_ids):
  """Logits and the `down_proj` inputs of every layer, through forward hooks."""
  captured = []
  hooks = [layer.mlp.down_proj.register_forward_hook(
      lambda mod, inp, out: captured.append(inp[0].detach().numpy()))
      for layer in hf.model.layers]
  try:
    with torch.no_grad():
      out = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
               position_ids=torch.tensor(position_ids))
  finally:
    for h in hooks:
      h.remove()
  return out.logits.numpy(), np.stack(captured, axis=1)  # [b, t, v], [b, l, t, i]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("padding", ["none", "left", "right"])
def test_logits_and_capture_match_hf(hf_checkpoint, case, padding):
  hf, path = hf_checkpoint(**CASES[case])
  model, params = jaxskill.load_model(path)
  ids = _batch(1)
  mask = np.ones_like(ids)
  if padding == "left":
    mask[0, :4] = 0
    mask[1, :1] = 0
  elif padding == "right":
    mask[0, -4:] = 0
    mask[2, -2:] = 0
  # Same positions on both sides; HF's forward would otherwise count pads as positions.
  position_ids = np.maximum(np.cumsum(mask, -1) - 1, 0)
  want_logits, want_acts = _hf_forward(hf, ids, mask, position_ids)

  capture = np.array([[10, 4, 7], [1, 10, 2], [0, 5, 8]])
  logits, variables = model.apply({"params": params}, jnp.asarray(ids),
                                  attention_mask=jnp.asarray(mask),
                                  capture_positions=jnp.asarray(capture),
                                  mutable=["intermediates"])
  acts = np.asarray(jaxskill.neuron_activations(variables))
  valid = mask.astype(bool)
  assert logits.dtype == jnp.float32 and logits.shape == want_logits.shape
  # PyTorch and XLA sum in their own orders in float32: 600 * 1.2e-7 * 0.9 (max |logit|) = 6.5e-5
  # worst case (measured 1.8e-7).
  np.testing.assert_allclose(np.asarray(logits)[valid], want_logits[valid], atol=1e-4, rtol=0)
  want_at = np.take_along_axis(want_acts, capture[:, None, :, None], axis=2)
  assert acts.shape == (3, hf.config.num_hidden_layers, 3, hf.config.intermediate_size)
  cap_valid = np.take_along_axis(valid, capture, axis=1)  # [b, p]
  # The path to the last layer's down_proj input is ~430 of the K reductions, over products
  # below 0.1: 430 * 1.2e-7 * 0.1 = 5e-6 worst case (measured 2.6e-8).
  np.testing.assert_allclose(acts.transpose(0, 2, 1, 3)[cap_valid],
                             want_at.transpose(0, 2, 1, 3)[cap_valid], atol=1e-5, rtol=0)


def test_left_padding_equals_unpadded(hf_checkpoint):
  """Default position_ids make a left-padded row compute exactly what the bare row computes."""
  _, path = hf_checkpoint(**CASES["gqa3_untied"])
  ids = _batch(2, b=1, t=8)
  padded = np.concatenate([np.zeros((1, 3), ids.dtype), ids], 1)
  mask = np.concatenate([np.zeros((1, 3)), np.ones((1, 8))], 1).astype(np.int32)
  with jax.enable_x64(True):  # 11 vs 8 columns: other matmul shapes, other summation orders
    model, params = jaxskill.load_model(path, dtype=jnp.float64)
    bare = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
    left = np.asarray(model.apply({"params": params}, jnp.asarray(padded),
                                  attention_mask=jnp.asarray(mask)))
  assert bare.dtype == np.float64
  np.testing.assert_allclose(left[:, 3:], bare, atol=X64_TOL, rtol=0)


def test_inputs_embeds_equals_input_ids(hf_checkpoint):
  _, path = hf_checkpoint(**CASES["mha_tied_theta1e4"])
  model, params = jaxskill.load_model(path)
  ids = jnp.asarray(_batch(3))
  embeds = model.apply({"params": params}, ids, method=model.embed)
  np.testing.assert_array_equal(np.asarray(model.apply({"params": params}, ids)),
                                np.asarray(model.apply({"params": params}, inputs_embeds=embeds)))


def test_no_capture_without_mutable(hf_checkpoint):
  _, path = hf_checkpoint(**CASES["mqa"])
  model, params = jaxskill.load_model(path)
  ids = jnp.asarray(_batch(4))
  pos = jnp.zeros((3, 2), jnp.int32)
  logits, variables = model.apply({"params": params}, ids, capture_positions=pos,
                                  mutable=["intermediates"])
  plain = model.apply({"params": params}, ids, capture_positions=pos)
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(logits))
  # Without the mutable collection the program holds no gather: nothing is paid.
  hlo = jax.jit(lambda p, i: model.apply({"params": p}, i, capture_positions=pos)).lower(
      params, ids).as_text()
  hlo_cap = jax.jit(lambda p, i: model.apply({"params": p}, i, capture_positions=pos,
                                             mutable=["intermediates"])).lower(params, ids).as_text()
  assert hlo.count("gather") < hlo_cap.count("gather")


def test_logits_positions(hf_checkpoint):
  _, path = hf_checkpoint(**CASES["gqa3_untied"])
  pos = np.array([[10, 0], [3, 3], [5, 9]])
  with jax.enable_x64(True):  # the lm_head matmul over 6 rows instead of 33: another order
    model, params = jaxskill.load_model(path, dtype=jnp.float64)
    ids = jnp.asarray(_batch(5))
    full = np.asarray(model.apply({"params": params}, ids))
    some = np.asarray(model.apply({"params": params}, ids, logits_positions=jnp.asarray(pos)))
  assert full.dtype == np.float64
  np.testing.assert_allclose(some, np.take_along_axis(full, pos[:, :, None], 1), atol=X64_TOL,
                             rtol=0)


@pytest.mark.parametrize("case", ["gqa3_untied", "mha_tied_theta1e4"])
def test_greedy_generate_matches_hf(hf_checkpoint, case):
  hf, path = hf_checkpoint(**CASES[case])
  model, params = jaxskill.load_model(path)
  ids = _batch(6, b=2, t=7)
  mask = np.ones_like(ids)
  mask[1, :3] = 0  # the second prompt is 4 tokens, left padded
  with torch.no_grad():
    want = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=20,
                       min_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
  want = want[:, 7:].numpy()
  got = jaxskill.greedy_generate(model, params, jnp.asarray(ids), jnp.asarray(mask), 20)
  np.testing.assert_array_equal(np.asarray(got), want)


def test_bfloat16_close_to_float32(hf_checkpoint):
  """bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 2e-3 per op). Over 2 layers the
  errors compound to a few 1e-2 on logits of scale ~1; we bound the max abs error by 0.1 and the
  mean by 0.02, and require the same argmax almost everywhere, which is what decoding needs."""
  _, path = hf_checkpoint(**CASES["gqa3_untied"])
  m32, p32 = jaxskill.load_model(path, dtype=jnp.float32)
  m16, p16 = jaxskill.load_model(path, dtype=jnp.bfloat16)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
  ids = jnp.asarray(_batch(7, b=4, t=16))
  l32 = np.asarray(m32.apply({"params": p32}, ids))
  l16 = np.asarray(m16.apply({"params": p16}, ids))
  assert l16.dtype == np.float32
  err = np.abs(l16 - l32)
  scale = np.abs(l32).max()
  assert err.max() < 0.1 * max(scale, 1.0), (err.max(), scale)
  assert err.mean() < 0.02 * max(scale, 1.0)
  assert (l16.argmax(-1) == l32.argmax(-1)).mean() > 0.9


def test_scan_unroll_does_not_change_results(hf_checkpoint):
  _, path = hf_checkpoint(**CASES["gqa3_untied"])
  with jax.enable_x64(True):  # another loop structure may fuse, so sum, in another order
    model, params = jaxskill.load_model(path, dtype=jnp.float64)
    ids = jnp.asarray(_batch(8))
    unrolled = jaxskill.CausalLM(model.config, dtype=jnp.float64, param_dtype=jnp.float64,
                                scan_unroll=2)
    a = np.asarray(unrolled.apply({"params": params}, ids))
    b = np.asarray(model.apply({"params": params}, ids))
  assert a.dtype == b.dtype == np.float64
  np.testing.assert_allclose(a, b, atol=X64_TOL, rtol=0)


def test_remat_gives_same_values_and_gradients(hf_checkpoint):
  """remat trades memory for compute in the backward pass; values and gradients must not move."""
  _, path = hf_checkpoint(**CASES["gqa3_untied"])
  # Recomputation may be fused, so summed, differently from the saved forward: float64, where the
  # backward pass (twice the reductions, 2K) rounds at 2 * 600 * 2.2e-16 = 2.6e-13 of the scale.
  with jax.enable_x64(True):
    model, params = jaxskill.load_model(path, dtype=jnp.float64)
    remat_model, _ = jaxskill.load_model(path, dtype=jnp.float64, remat=True)
    ids = jnp.asarray(_batch(9))
    embeds = model.apply({"params": params}, ids, method=model.embed)

    def loss(m, e):
      return jnp.mean(m.apply({"params": params}, inputs_embeds=e) ** 2)

    v0, g0 = jax.value_and_grad(lambda e: loss(model, e))(embeds)
    v1, g1 = jax.value_and_grad(lambda e: loss(remat_model, e))(embeds)
    v0, g0, v1, g1 = float(v0), np.asarray(g0), float(v1), np.asarray(g1)
  assert g0.dtype == np.float64 and np.abs(g0).max() > 0
  np.testing.assert_allclose(v1, v0, rtol=X64_TOL, atol=0)
  np.testing.assert_allclose(g1, g0, atol=X64_TOL * np.abs(g0).max(), rtol=0)


# Mistral with a window of 4 (tests/test_families.py's case): cached keys are then also limited
# by their position, which the cache must carry over (from its mask) like the one pass does.
PREFILL_CASES = {**CASES, "mistral_window4": dict(family="mistral", heads=6, kv_heads=2,
                                                  theta=1e4, sliding_window=4)}


@pytest.mark.parametrize("case", ["gqa3_untied", "mha_tied_theta1e4", "mistral_window4"])
def test_prefill_then_rest_equals_one_pass(hf_checkpoint, case):
  """A cache of the first s0 columns plus a pass over the rest gives the one-pass logits, with
  padding on both sides (the infix training layout)."""
  _, path = hf_checkpoint(**PREFILL_CASES[case])
  ids = _batch(10, b=3, t=12)
  mask = np.ones((3, 12), np.int32)
  mask[0, :4] = 0  # left padding inside the cached part
  mask[1, -3:] = 0  # right padding after it
  # The cached pass runs other matmul shapes than the one pass, so other summation orders:
  # compared in float64 (see X64_TOL).
  with jax.enable_x64(True):
    model, params = jaxskill.load_model(path, dtype=jnp.float64)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    full = np.asarray(model.apply({"params": params}, ids, attention_mask=mask))
    assert full.dtype == np.float64
    for s0 in (1, 5, 11):
      cache = model.apply({"params": params}, ids[:, :s0], attention_mask=mask[:, :s0],
                          method=model.prefill)
      assert cache["k"].shape == (2, 3, s0, model.config.num_key_value_heads,
                                  model.config.head_dim)
      rest = np.asarray(model.apply({"params": params}, ids[:, s0:], attention_mask=mask[:, s0:],
                                    past=cache))
      valid = np.asarray(mask[:, s0:]).astype(bool)
      np.testing.assert_allclose(rest[valid], full[:, s0:][valid], atol=X64_TOL, rtol=0)


def test_greedy_generate_right_padding_equals_left(hf_checkpoint):
  _, path = hf_checkpoint(**CASES["gqa3_untied"])
  model, params = jaxskill.load_model(path)
  ids = _batch(11, b=1, t=5)
  left = np.concatenate([np.zeros((1, 3), ids.dtype), ids], 1)
  right = np.concatenate([ids, np.zeros((1, 3), ids.dtype)], 1)
  mask_left = np.concatenate([np.zeros((1, 3)), np.ones((1, 5))], 1).astype(np.int32)
  mask_right = mask_left[:, ::-1].copy()
  a = jaxskill.greedy_generate(model, params, jnp.asarray(left), jnp.asarray(mask_left), 6)
  b = jaxskill.greedy_generate(model, params, jnp.asarray(right), jnp.asarray(mask_right), 6)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
