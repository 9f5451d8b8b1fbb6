"""Interventions against a reference: the same edit of `down_proj`'s input through a PyTorch
forward pre-hook in HF transformers."""

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp

import jaxskill
from jaxskill.model.interventions import neuron_edit

NEURONS = [(0, 3), (0, 17), (1, 40), (1, 79)]


def _hf_with_edit(hf, ids, per_layer):
  """per_layer: {layer: fn(input tensor) -> tensor} applied to down_proj's input."""
  hooks = []
  for layer, fn in per_layer.items():
    hooks.append(hf.model.layers[layer].mlp.down_proj.register_forward_pre_hook(
        lambda mod, args, fn=fn: (fn(args[0]),)))
  try:
    with torch.no_grad():
      return hf(torch.tensor(ids)).logits.numpy()
  finally:
    for h in hooks:
      h.remove()


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_zero_and_mean_match_hf_hooks(hf_checkpoint, mode):
  hf, path = hf_checkpoint(heads=6, kv_heads=2)
  model, params = jaxskill.load_model(path)
  c = model.config
  ids = np.random.default_rng(0).integers(0, c.vocab_size, (2, 9))
  mean = np.random.default_rng(1).standard_normal((c.num_hidden_layers,
                                                    c.intermediate_size)).astype(np.float32)
  edit = neuron_edit(c.num_hidden_layers, c.intermediate_size, NEURONS, mode, mean=mean)

  def make(layer):
    cols = [n for l, n in NEURONS if l == layer]

    def fn(a):
      a = a.clone()
      a[..., cols] = 0.0 if mode == "zero" else torch.tensor(mean[layer, cols])
      return a
    return fn

  want = _hf_with_edit(hf, ids, {0: make(0), 1: make(1)})
  got = np.asarray(model.apply({"params": params}, jnp.asarray(ids), neuron_edit=edit))
  plain = np.asarray(model.apply({"params": params}, jnp.asarray(ids)))
  # PyTorch and XLA sum in their own float32 orders: K * eps32 * scale, K ~ 600 summed
  # reduction lengths for this model (see test_parity), logits below 0.5: 3.6e-5 worst case
  # (measured 1.5e-7).
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  assert np.abs(got - plain).max() > 1e-3  # the edit changed something


def test_noise_has_the_asked_spread_and_only_where_asked(hf_checkpoint):
  _, path = hf_checkpoint(heads=6, kv_heads=2)
  model, params = jaxskill.load_model(path)
  c = model.config
  ids = jnp.asarray(np.random.default_rng(2).integers(0, c.vocab_size, (8, 64)))
  pos = jnp.tile(jnp.arange(64), (8, 1))

  def acts(edit):
    _, v = model.apply({"params": params}, ids, capture_positions=pos, neuron_edit=edit,
                       mutable=["intermediates"])
    return np.asarray(jaxskill.neuron_activations(v))  # [b, l, p, i]

  edit = neuron_edit(c.num_hidden_layers, c.intermediate_size, [(0, 5)], "noise", sigma=0.1,
                     key=jax.random.PRNGKey(0))
  clean = acts(None)
  noisy = acts(edit)
  delta = noisy - clean
  # Layer 0's other neurons are untouched; neuron 5 moves by N(0, 0.1^2) at every position.
  assert np.abs(np.delete(delta[:, 0], 5, axis=-1)).max() == 0.0
  # 512 draws from a fixed key (threefry: the same bits on every CPU): the sample std's own
  # spread is 0.1 / sqrt(2 * 512) = 3.1e-3 and the mean's 0.1 / sqrt(512) = 4.4e-3, so 0.01 is
  # 3.2 and 2.3 of those; the subtraction from the clean activations rounds at ~1e-7.
  assert abs(delta[:, 0, :, 5].std() - 0.1) < 0.01 and abs(delta[:, 0, :, 5].mean()) < 0.01
  np.testing.assert_array_equal(acts(edit), noisy)  # the key makes it reproducible


def test_bad_edits_are_refused():
  with pytest.raises(ValueError, match="outside"):
    neuron_edit(2, 10, [(2, 0)], "zero")
  with pytest.raises(ValueError, match="needs mean"):
    neuron_edit(2, 10, [(0, 0)], "mean")
  with pytest.raises(ValueError, match="needs a PRNG key"):
    neuron_edit(2, 10, [(0, 0)], "noise")
  with pytest.raises(ValueError, match="one of"):
    neuron_edit(2, 10, [(0, 0)], "ablate")


def test_edits_compose_and_vmap_like_separate_runs(hf_checkpoint):
  """An edit is a pytree: a vmap over stacked edits (`stack`, and `stack_uniform`'s padded mix of
  modes) gives each edit's own forward, and a Chain
  of edits equals their composition written out by hand (zero, then mean: the mean wins where
  both touch a neuron, as a `[l, i]` arithmetic reference says)."""
  from jaxskill.model.interventions import Chain, NeuronEdit, stack, stack_uniform
  _, path = hf_checkpoint(heads=6, kv_heads=2)
  model, params = jaxskill.load_model(path)
  c = model.config
  L, I = c.num_hidden_layers, c.intermediate_size
  ids = jnp.asarray(np.random.default_rng(3).integers(0, c.vocab_size, (2, 9)))
  mean = np.random.default_rng(4).standard_normal((L, I)).astype(np.float32)

  def logits(edit):
    return model.apply({"params": params}, ids, neuron_edit=edit)

  edits = [neuron_edit(L, I, NEURONS[:2], "zero"), neuron_edit(L, I, NEURONS[1:], "mean",
                                                                mean=mean)]
  together = jax.vmap(logits)(stack(edits))
  for j, edit in enumerate(edits):
    # The same program per edit, batched: only the order of independent rows changes, and XLA
    # on the CPU computes a batched row exactly as a single one here (measured 0.0); the bound
    # is the float32 one of a reordered dot, K ~ 600 summed lengths * eps32 * |logits| < 0.5.
    np.testing.assert_allclose(np.asarray(together[j]), np.asarray(logits(edit)),
                               atol=600 * np.finfo(np.float32).eps * 0.5, rtol=0)
  # One structure and count for every mode (what verify stacks): a zero edit given noise_std 0
  # and the identity padding give their own forwards, within the same bound.
  noisy = neuron_edit(L, I, NEURONS[2:], "noise", sigma=0.5, key=jax.random.PRNGKey(7))
  mixed = [*edits, noisy]
  uniform = jax.vmap(logits)(stack_uniform(mixed, 5))
  assert uniform.shape[0] == 5
  for j, edit in enumerate([*mixed, None, None]):
    np.testing.assert_allclose(np.asarray(uniform[j]), np.asarray(logits(edit)),
                               atol=600 * np.finfo(np.float32).eps * 0.5, rtol=0)
  with pytest.raises(ValueError, match="3 edits for a width of 2"):
    stack_uniform(mixed, 2)
  # keep/add composed by hand: a -> (a k1 + d1) k2 + d2
  e1, e2 = edits
  assert e1.noise_std is None and e1.key is None  # zero and mean draw no noise
  by_hand = NeuronEdit(e1.keep * e2.keep, e1.add * e2.keep + e2.add)
  np.testing.assert_array_equal(np.asarray(logits(Chain((e1, e2)))),
                                np.asarray(logits(by_hand)))
  assert np.abs(np.asarray(logits(Chain((e1, e2)))) - np.asarray(logits(e1))).max() > 1e-4


@pytest.mark.parametrize("mode", ["zero", "mean", "noise"])
def test_resuming_at_the_lowest_edited_layer_equals_the_whole_forward(hf_checkpoint, mode):
  """`forward.residual_at` + `prompted_apply(start=(layer, residual))`, vmapped over edits whose
  neurons lie
  at or above layer L (what verify runs), against each edit's whole forward, in float64 (the
  two paths are the same arithmetic on other program shapes: a few eps64 of |logits|), with
  a prompt inserted and left padding; MHA and GQA."""
  from jaxskill.model import forward
  from jaxskill.model.batch import Batch
  from jaxskill.model.interventions import stack
  for kv_heads in (6, 2):
    _, path = hf_checkpoint(layers=3, heads=6, kv_heads=kv_heads)
    with jax.enable_x64(True):
      model, params = jaxskill.load_model(path, dtype=jnp.float64)
      c = model.config
      L, I, b, t = c.num_hidden_layers, c.intermediate_size, 3, 10
      rng = np.random.default_rng(5)
      mask = np.ones((b, t), np.int32)
      mask[0, :3] = 0
      index = np.full((b, t), -1, np.int32)
      index[:, 4:6] = [0, 1]
      zeros = np.zeros(b, np.int32)
      batch = jax.tree.map(jnp.asarray, Batch(
          input_ids=rng.integers(0, c.vocab_size, (b, t)).astype(np.int32),
          attention_mask=mask, prompt_index=index, answer_pos=zeros + t - 1, label=zeros,
          targets=np.zeros((b, t), np.int32), loss_mask=np.zeros((b, t), np.int32),
          input_end=zeros + 4, prompt_start=zeros + 4))
      prompt = {"embeddings": jnp.asarray(rng.standard_normal((2, c.hidden_size)))}
      mean = rng.standard_normal((L, I))
      for start in (1, 2):
        edits = [neuron_edit(L, I, [(start, j), (L - 1, 2 * j)], mode, mean=mean, sigma=0.5,
                             key=jax.random.PRNGKey(j)) for j in range(3)]

        def run(edit, resume=0):
          return forward.prompted_apply(model, params, prompt, batch, kind="generation",
                                        edit=edit, start=resume).logits
        residual = forward.residual_at(model, params, prompt, batch, start)
        together = jax.vmap(lambda e: run(e, (start, residual)))(stack(edits))
        for j, edit in enumerate(edits):
          whole = np.asarray(run(edit))
          np.testing.assert_allclose(np.asarray(together[j]), whole, rtol=0,
                                     atol=100 * np.finfo(np.float64).eps * np.abs(whole).max())
        assert np.abs(np.asarray(together[0] - together[1])).max() > 1e-6  # edits differ
