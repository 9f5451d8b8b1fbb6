"""Every model family against transformers' PyTorch model of that family (eager attention, float32
compute), on tiny random checkpoints written by `save_pretrained` in float32 and in bfloat16:
logits and the captured neurons (the input of each layer's down_proj), with left padding; RoPE
scaling at positions beyond `original_max_position_embeddings`; Mistral's sliding window on
inputs longer than it, in one pass and in greedy decoding; the config each family's files give."""

import numpy as np
import pytest
import torch
import jax.numpy as jnp

import jaxskill
from tests.test_parity import _hf_forward

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}
# theta 100 and head_dim 8 give wavelengths 2 pi * (1, 3.2, 10, 32) = 6.3, 20, 63, 200: with
# original_max_position_embeddings 32 (low_freq_factor 1, high 4: bounds 32 and 8), one
# frequency kept, one interpolated and two divided by `factor`; inputs of 40 tokens go past 32.
CASES = {
    "qwen2_gqa_tied": dict(family="qwen2", heads=6, kv_heads=2, tied=True),  # Qwen2.5-0.5B's shape
    "qwen3_gqa_untied": dict(family="qwen3", heads=6, kv_heads=2, head_dim=16),
    "qwen3_mha_tied": dict(family="qwen3", heads=6, kv_heads=6, tied=True, head_dim=8, theta=1e4),
    "qwen3_attention_bias": dict(family="qwen3", heads=6, kv_heads=3, head_dim=8,
                                 attention_bias=True),
    "llama2_mha": dict(family="llama", heads=6, kv_heads=6, theta=1e4),
    "llama3_gqa_tied": dict(family="llama", heads=6, kv_heads=2, tied=True, theta=100.0,
                            rope_scaling=LLAMA3, max_position_embeddings=256),
    "llama_linear_bias": dict(family="llama", heads=6, kv_heads=3, theta=1e4, attention_bias=True,
                              rope_scaling={"rope_type": "linear", "factor": 4.0}),
    "mistral_window4": dict(family="mistral", heads=6, kv_heads=2, theta=1e4, sliding_window=4),
}


def _forward(model, params, ids, mask, capture):
  logits, variables = model.apply({"params": params}, jnp.asarray(ids),
                                  attention_mask=jnp.asarray(mask),
                                  capture_positions=jnp.asarray(capture),
                                  mutable=["intermediates"])
  return np.asarray(logits), np.asarray(jaxskill.neuron_activations(variables))


@pytest.mark.parametrize("file_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_family_matches_hf(hf_checkpoint, case, file_dtype):
  hf, path = hf_checkpoint(file_dtype=file_dtype, **CASES[case])
  model, params = jaxskill.load_model(path)  # float32 params, whatever the file's dtype
  assert model.config.model_type == CASES[case]["family"]
  rng = np.random.default_rng(len(case))
  t = 40  # past the llama3 case's original_max_position_embeddings and the mistral window
  ids = rng.integers(0, 97, size=(3, t))
  mask = np.ones_like(ids)
  mask[1, :5] = 0  # left padding
  mask[2, :17] = 0
  position_ids = np.maximum(np.cumsum(mask, -1) - 1, 0)
  want_logits, want_acts = _hf_forward(hf, ids, mask, position_ids)
  capture = np.array([[39, 0, 20], [5, 39, 31], [17, 30, 39]])
  logits, acts = _forward(model, params, ids, mask, capture)
  valid = mask.astype(bool)
  # Float32 rounding over these models (test_parity.py's bound, K ~ 600 reductions, with softmax
  # and mix over 40 keys instead of 12: K ~ 660): 660 * 1.2e-7 = 8e-5 of the logits' scale.
  scale = max(1.0, np.abs(want_logits[valid]).max())
  np.testing.assert_allclose(logits[valid], want_logits[valid], atol=1e-4 * scale, rtol=0)
  want_at = np.take_along_axis(want_acts, capture[:, None, :, None], axis=2)  # [b, l, k, i]
  assert acts.shape == want_at.shape
  cap_valid = np.take_along_axis(valid, capture, axis=1)
  # ~430 of those reductions lead to the last down_proj input, over products below 0.1:
  # 5e-6 worst case (test_parity.py).
  np.testing.assert_allclose(acts.transpose(0, 2, 1, 3)[cap_valid],
                             want_at.transpose(0, 2, 1, 3)[cap_valid], atol=1e-5, rtol=0)


def test_llama3_scaling_matters_beyond_original_length(hf_checkpoint):
  """The scaled case differs from the same weights without scaling (so the parity above tests
  the scaling), and a model that drops it is caught by the tolerance used there."""
  import dataclasses
  hf, path = hf_checkpoint(**CASES["llama3_gqa_tied"])
  model, params = jaxskill.load_model(path)
  assert model.config.rope_scaling.rope_type == "llama3"
  unscaled = model.clone(config=dataclasses.replace(model.config, rope_scaling=None))
  ids = np.random.default_rng(0).integers(0, 97, size=(1, 40))
  mask = np.ones_like(ids)
  want, _ = _hf_forward(hf, ids, mask, np.arange(40)[None])
  got, _ = _forward(unscaled, params, ids, mask, np.zeros((1, 1), int))
  assert np.abs(got - want).max() > 1e-3  # 10x the parity tolerance (logits of scale < 1)


@pytest.mark.parametrize("case", ["llama3_gqa_tied", "llama_linear_bias"])
def test_rope_frequencies_equal_transformers(hf_checkpoint, case):
  """The scaled RoPE frequencies against transformers' own function for the type, bit for bit
  (both float32, the same operations), and all of llama3's three bands are exercised."""
  from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
  from jaxskill.model.modules import rope_inv_freq
  hf, path = hf_checkpoint(**CASES[case])
  model, _ = jaxskill.load_model(path)
  want, _ = ROPE_INIT_FUNCTIONS[model.config.rope_scaling.rope_type](hf.config, None)
  got = np.asarray(rope_inv_freq(model.config))
  np.testing.assert_array_equal(got, want.numpy())
  plain = 1.0 / (model.config.rope_theta ** (np.arange(0, 8, 2, dtype=np.float32) / 8))
  ratio = plain / got
  if case.startswith("llama3"):  # kept, interpolated, divided, divided
    assert ratio[0] == 1 and 1 < ratio[1] < 8 and np.allclose(ratio[2:], 8, rtol=1e-6)
  else:
    np.testing.assert_allclose(ratio, 4, rtol=1e-6)


def test_mistral_window_matters_and_decodes_like_hf(hf_checkpoint):
  """The window changes the logits of inputs longer than it (so the parity above tests it), and
  greedy decoding with the cache, 20 tokens past a 7-token prompt with a window of 4, gives
  transformers' tokens."""
  import dataclasses
  hf, path = hf_checkpoint(**CASES["mistral_window4"])
  model, params = jaxskill.load_model(path)
  assert model.config.sliding_window == 4
  full = model.clone(config=dataclasses.replace(model.config, sliding_window=None))
  ids = np.random.default_rng(1).integers(0, 97, size=(2, 7))
  mask = np.ones_like(ids)
  mask[1, :3] = 0
  a = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=mask))
  b = np.asarray(full.apply({"params": params}, jnp.asarray(ids), attention_mask=mask))
  assert np.abs(a[0, 5:] - b[0, 5:]).max() > 1e-3  # positions 5, 6 see past the window
  np.testing.assert_array_equal(a[0, :4], b[0, :4])  # the first 4 see the same keys
  with torch.no_grad():
    want = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=20,
                       min_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)
  got = jaxskill.greedy_generate(model, params, jnp.asarray(ids), jnp.asarray(mask), 20)
  np.testing.assert_array_equal(np.asarray(got), want[:, 7:].numpy())


@pytest.mark.parametrize("case", ["qwen3_gqa_untied", "llama3_gqa_tied"])
def test_family_greedy_generate_matches_hf(hf_checkpoint, case):
  hf, path = hf_checkpoint(**CASES[case])
  model, params = jaxskill.load_model(path)
  ids = np.random.default_rng(2).integers(0, 97, size=(2, 30))
  mask = np.ones_like(ids)
  mask[1, :9] = 0
  with torch.no_grad():  # 30 + 10 tokens: decoding crosses the llama3 case's 32
    want = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=10,
                       min_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
  got = jaxskill.greedy_generate(model, params, jnp.asarray(ids), jnp.asarray(mask), 10)
  np.testing.assert_array_equal(np.asarray(got), want[:, 30:].numpy())


@pytest.mark.parametrize("case", ["qwen3_attention_bias", "llama3_gqa_tied", "mistral_window4"])
def test_mean_ablation_matches_hf_hooks(hf_checkpoint, case):
  """An intervention is the same for every family: neurons set to given values at every position
  in jaxskill (`neuron_edit`, mode mean) equal transformers with a forward pre-hook that writes
  those values into each layer's down_proj input."""
  from jaxskill.model import interventions
  hf, path = hf_checkpoint(**CASES[case])
  model, params = jaxskill.load_model(path)
  L, I = model.config.num_hidden_layers, model.config.intermediate_size
  chosen = [(0, 3), (0, 41), (1, 7), (1, 79)]
  mean = np.random.default_rng(3).normal(size=(L, I)).astype(np.float32)
  edit = interventions.neuron_edit(L, I, chosen, "mean", mean=mean)
  ids = np.random.default_rng(4).integers(0, 97, size=(2, 20))
  mask = np.ones_like(ids)
  mask[1, :6] = 0

  def hook(layer):
    def pre(module, args):
      a = args[0].clone()
      for l, n in chosen:
        if l == layer:
          a[..., n] = float(mean[l, n])
      return (a,)
    return pre

  hooks = [layer.mlp.down_proj.register_forward_pre_hook(hook(i))
           for i, layer in enumerate(hf.model.layers)]
  try:
    want, _ = _hf_forward(hf, ids, mask, np.maximum(np.cumsum(mask, -1) - 1, 0))
  finally:
    for h in hooks:
      h.remove()
  got = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=mask,
                               neuron_edit=edit))
  plain = np.asarray(model.apply({"params": params}, jnp.asarray(ids), attention_mask=mask))
  valid = mask.astype(bool)
  scale = max(1.0, np.abs(want[valid]).max())
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-4 * scale, rtol=0)  # as above
  assert np.abs(plain[valid] - want[valid]).max() > 1e-3  # the edit changed the logits


# The smallest config.json of each family: what every file has; the rest is left to defaults.
# 32 query heads: transformers' Qwen classes default a missing num_key_value_heads to 32.
_MINIMAL = dict(vocab_size=97, hidden_size=128, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=32, rope_theta=1e4)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama", "mistral"])
def test_missing_fields_read_as_transformers_reads_them(family):
  """A field a config.json leaves out means what transformers' class for the family makes of it
  (Qwen2 and Qwen3: 32 key/value heads, Qwen3's head_dim 128; Mistral: 8 key/value heads and a
  4096 window; Llama: key/value heads = query heads; no window, head_dim = hidden / heads but
  for Qwen3)."""
  import transformers
  from tests.conftest import HF_CLASSES
  ours = jaxskill.Architecture.from_hf_dict({"model_type": family, **_MINIMAL})
  hf = getattr(transformers, HF_CLASSES[family][0])(**_MINIMAL)
  assert ours.head_dim == (getattr(hf, "head_dim", None) or 128 // 32)
  assert ours.num_key_value_heads == hf.num_key_value_heads
  assert ours.sliding_window == getattr(hf, "sliding_window", None)
  assert ours.rms_norm_eps == hf.rms_norm_eps
  assert ours.tie_word_embeddings == hf.tie_word_embeddings
  assert ours.qkv_bias == getattr(hf, "attention_bias", family == "qwen2")  # Qwen2: always
  assert ours.rope_scaling is None


@pytest.mark.parametrize("hub", ["Qwen/Qwen2.5-0.5B", "Qwen/Qwen3-0.6B-Base",
                                 "meta-llama/Llama-3.2-1B", "mistralai/Mistral-7B-v0.1"])
def test_published_configs_parse(hub):
  """The hub's config.json of each family parses field by field into what transformers reads
  from it, and the presets of those sizes are the same configs."""
  import transformers
  from tests.family_like import HUB_CONFIGS
  d = HUB_CONFIGS[hub]
  ours = jaxskill.Architecture.from_hf_dict(d, source=hub)
  hf = transformers.AutoConfig.for_model(d["model_type"], **{
      k: v for k, v in d.items() if k not in ("model_type", "architectures")})
  assert (ours.num_hidden_layers, ours.intermediate_size, ours.hidden_size) == (
      hf.num_hidden_layers, hf.intermediate_size, hf.hidden_size)
  assert ours.head_dim == (getattr(hf, "head_dim", None) or hf.hidden_size
                           // hf.num_attention_heads)
  assert ours.num_key_value_heads == hf.num_key_value_heads
  assert ours.sliding_window == (hf.sliding_window if d["model_type"] == "mistral" else None)
  assert ours.rope_theta == hf.rope_parameters["rope_theta"]
  scaling = ours.rope_scaling
  if hf.rope_parameters["rope_type"] == "default":
    assert scaling is None
  else:
    assert {k: v for k, v in hf.rope_parameters.items() if k != "rope_theta"} == {
        "rope_type": scaling.rope_type, "factor": scaling.factor,
        "low_freq_factor": scaling.low_freq_factor, "high_freq_factor": scaling.high_freq_factor,
        "original_max_position_embeddings": scaling.original_max_position_embeddings}
  preset = {"Qwen/Qwen2.5-0.5B": "qwen2.5-0.5b", "Qwen/Qwen3-0.6B-Base": "qwen3-0.6b",
            "meta-llama/Llama-3.2-1B": "llama-3.2-1b"}.get(hub)
  if preset:
    p = jaxskill.PRESETS[preset]
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
                  "rms_norm_eps", "tie_word_embeddings", "model_type", "qkv_bias", "o_bias",
                  "qk_norm", "rope_scaling", "sliding_window"):
      assert getattr(p, field) == getattr(ours, field), (preset, field)


@pytest.mark.parametrize("change,fragments", [
    (dict(model_type="llama", mlp_bias=True), ["'mlp_bias' is true", "not supported"]),
    (dict(model_type="qwen3", use_sliding_window=True), ["'use_sliding_window' is true"]),
    (dict(model_type="mistral", rope_parameters={"rope_type": "yarn", "rope_theta": 1e4,
                                                 "factor": 4.0}), ["RoPE type 'yarn'"]),
    (dict(model_type="qwen2", use_sliding_window=True), ["'use_sliding_window' is true"]),
    (dict(model_type="llama", rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                            "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                                            "original_max_position_embeddings": 64}),
     ["high_freq_factor=1.0 must exceed low_freq_factor=4.0"]),
    (dict(model_type="llama", rope_scaling={"rope_type": "llama3", "factor": 8.0}),
     ["'llama3' takes the keys", "high_freq_factor"]),
    (dict(model_type="mistral", sliding_window=0), ["'sliding_window'", "positive integer", "0"]),
    (dict(model_type="qwen3", head_dim=7), ["head_dim=7", "even"]),
    (dict(model_type="qwen2", num_attention_heads=6, hidden_size=48),
     ["num_attention_heads=6", "num_key_value_heads=32"]),  # transformers' default, not 6
])
def test_family_fields_are_refused_by_name(change, fragments):
  with pytest.raises(jaxskill.ArchitectureError) as info:
    jaxskill.Architecture.from_hf_dict({**_MINIMAL, **change}, source="x/config.json")
  msg = str(info.value)
  assert msg.startswith("x/config.json: ")
  for fragment in fragments:
    assert fragment in msg, (fragment, msg)



@pytest.mark.parametrize("case", sorted(CASES))
def test_config_round_trips_and_transformers_reads_it(hf_checkpoint, case):
  """`to_hf_dict` (what convert and export write) reads back as the same config, and
  transformers reads it as the family's model with the same RoPE and window."""
  import transformers
  hf, path = hf_checkpoint(**CASES[case])
  c = jaxskill.Architecture.from_json_file(path / "config.json")
  d = c.to_hf_dict()
  assert jaxskill.Architecture.from_hf_dict(d) == c
  back = transformers.AutoConfig.for_model(d["model_type"], **{
      k: v for k, v in d.items() if k not in ("model_type", "architectures")})
  assert back.rope_parameters == hf.config.rope_parameters
  assert getattr(back, "sliding_window", None) == getattr(hf.config, "sliding_window", None)
  assert getattr(back, "head_dim", None) == getattr(hf.config, "head_dim", None)
