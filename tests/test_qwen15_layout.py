"""A checkpoint laid out like a real Qwen1.5 one (tests/qwen15_like.py): its traits, and that
transformers and jaxskill read it into the same model and the same token ids."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxskill
from tests.qwen15_like import (COMMON_WORDS, ENDOFTEXT, IM_END, IM_START,
                               make_qwen15_like_checkpoint)

U32 = 2.0**-24  # unit roundoff of float32

TEXTS = [
    "Q: What is 12 plus 47?\nA: 59\nCorrect? yes",
    "Premise: The doctor near the actor danced.\nHypothesis: The actor danced.\n"
    "Does the premise entail the hypothesis? no",
    f"{IM_START}user\nWhat is 305 times 18?{IM_END}\n{IM_START}assistant\n5490{ENDOFTEXT}",
    "Numbers such as 2024 appear in text.",
]


@pytest.fixture(scope="module")
def qwen15(tmp_path_factory):
  """Factory: tied -> checkpoint directory, built once per module and variant."""
  cache = {}

  def build(tied=False):
    if tied not in cache:
      cache[tied] = make_qwen15_like_checkpoint(tmp_path_factory.mktemp("qwen15"), tied=tied)
    return cache[tied]

  return build


def _auto_tokenizer(path):
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(str(path))


def _hf_model(path, dtype):
  from transformers import AutoModelForCausalLM
  return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype,
                                              attn_implementation="eager").eval()


# --- (a) the directory has the traits of a real Qwen1.5 checkpoint ---------------------------

def test_config_is_in_the_transformers_4_37_layout(qwen15):
  path = qwen15()
  config = json.loads((path / "config.json").read_text())
  tokenizer = _auto_tokenizer(path)
  eos = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
  assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
  assert config["rope_theta"] == 1e6 and isinstance(config["rope_theta"], float)
  assert config["sliding_window"] == 32768 and config["use_sliding_window"] is False
  assert config["max_window_layers"] == config["num_hidden_layers"]
  assert config["torch_dtype"] == "bfloat16" and config["transformers_version"] == "4.37.0"
  assert config["bos_token_id"] == config["eos_token_id"] == eos
  assert config["tie_word_embeddings"] is False and config["use_cache"] is True
  assert config["hidden_act"] == "silu" and config["attention_dropout"] == 0.0
  assert config["rms_norm_eps"] == 1e-6 and config["initializer_range"] == 0.02
  # What transformers 5 writes instead, and Qwen1.5's files do not have.
  for newer in ("rope_parameters", "rope_scaling", "dtype", "layer_types", "pad_token_id"):
    assert newer not in config, newer
  gen = json.loads((path / "generation_config.json").read_text())
  assert gen == {"bos_token_id": eos, "do_sample": False, "eos_token_id": eos,
                 "max_new_tokens": 2048, "transformers_version": "4.37.0"}


@pytest.mark.parametrize("tied", [False, True])
def test_every_tensor_is_bfloat16_under_hf_names(qwen15, tied):
  from safetensors import safe_open
  path = qwen15(tied)
  config = json.loads((path / "config.json").read_text())
  want = {"model.embed_tokens.weight", "model.norm.weight"} | ({"lm_head.weight"} if not tied
                                                               else set())
  for i in range(config["num_hidden_layers"]):
    p = f"model.layers.{i}."
    want |= {p + f"self_attn.{x}_proj.{k}" for x in "qkv" for k in ("weight", "bias")}
    want |= {p + "self_attn.o_proj.weight", p + "input_layernorm.weight",
             p + "post_attention_layernorm.weight"}
    want |= {p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")}
  with safe_open(path / "model.safetensors", framework="pt") as f:
    assert set(f.keys()) == want
    for name in f.keys():
      assert f.get_tensor(name).dtype == torch.bfloat16, name
    rows = f.get_tensor("model.embed_tokens.weight").shape[0]
  assert rows == config["vocab_size"]


def test_tokenizer_files_and_special_tokens(qwen15):
  path = qwen15()
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
               "generation_config.json"):
    assert (path / name).is_file(), name
  tc = json.loads((path / "tokenizer_config.json").read_text())
  assert tc["tokenizer_class"] == "Qwen2Tokenizer" and tc["bos_token"] is None
  assert tc["eos_token"] == tc["pad_token"] == ENDOFTEXT and tc["add_prefix_space"] is False
  assert tc["model_max_length"] == 32768
  tokenizer = _auto_tokenizer(path)
  assert tokenizer.eos_token == tokenizer.pad_token == ENDOFTEXT and tokenizer.bos_token is None
  # As in Qwen: the specials are not in vocab.json and take the last ids, in this order.
  vocab = json.loads((path / "vocab.json").read_text())
  specials = [tokenizer.convert_tokens_to_ids(t) for t in (ENDOFTEXT, IM_START, IM_END)]
  assert specials == [len(vocab), len(vocab) + 1, len(vocab) + 2] == [
      int(k) for k in tc["added_tokens_decoder"]]
  assert len(tokenizer) == len(vocab) + 3
  assert (path / "merges.txt").read_text().startswith("#version: 0.2\n")


def test_embedding_has_more_rows_than_the_tokenizer(qwen15):
  path = qwen15()
  config = json.loads((path / "config.json").read_text())
  assert config["vocab_size"] == len(_auto_tokenizer(path)) + 37


def test_digits_are_single_tokens_and_common_words_are_one_token(qwen15):
  tokenizer = _auto_tokenizer(qwen15())
  ids = tokenizer("Q: What is 12 plus 470?").input_ids
  tokens = tokenizer.convert_ids_to_tokens(ids)
  assert tokens[-5:] == ["Ġ", "4", "7", "0", "?"]  # Qwen splits every digit, even after a space
  assert tokenizer.convert_ids_to_tokens(tokenizer("2024").input_ids) == ["2", "0", "2", "4"]
  for word in COMMON_WORDS:
    assert len(tokenizer(word).input_ids) == 1, word
  # Byte-level: no unknown tokens, and decoding gives back the text exactly.
  for text in TEXTS + ["naïve café ☃\t\r\n  x"]:
    assert tokenizer.decode(tokenizer(text).input_ids) == text


# --- (b) transformers loads it --------------------------------------------------------------

def test_transformers_loads_the_directory(qwen15):
  path = qwen15()
  hf = _hf_model(path, "auto")
  tokenizer = _auto_tokenizer(path)
  assert type(hf).__name__ == "Qwen2ForCausalLM"
  assert next(hf.parameters()).dtype == torch.bfloat16
  assert hf.config.vocab_size == len(tokenizer) + 37
  rope = getattr(hf.config, "rope_parameters", None) or {"rope_theta": hf.config.rope_theta}
  assert rope["rope_theta"] == 1e6
  assert type(tokenizer).__name__.startswith("Qwen2Tokenizer")


# --- (c) jaxskill computes the same logits ----------------------------------------------------

def _batch(path, padding_side):
  tokenizer = _auto_tokenizer(path)
  tokenizer.padding_side = padding_side
  enc = tokenizer(TEXTS, padding=True, return_tensors="np")
  ids, mask = enc["input_ids"], enc["attention_mask"]
  assert (mask == 0).any()  # the rows differ in length, so padding is exercised
  # jaxskill's default positions; HF would otherwise count left pads as positions.
  return ids, mask, np.maximum(np.cumsum(mask, -1) - 1, 0)


def _hf_logits_and_scale(hf, ids, mask, positions):
  """Logits, and S = max over positions and vocab of sum_i |h_i| |W_vi|: the size of the
  terms the last dot product (normed hidden state h times the lm_head rows W) adds up."""
  captured = []
  hook = hf.lm_head.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))
  try:
    with torch.no_grad():
      logits = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  position_ids=torch.tensor(positions)).logits
  finally:
    hook.remove()
  h = captured[0].double().abs().numpy()[mask.astype(bool)]
  w = hf.lm_head.weight.detach().double().abs().numpy()
  return logits.double().numpy(), float((h @ w.T).max())


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_float32_logits_match_transformers(qwen15, tied, padding_side):
  path = qwen15(tied)
  ids, mask, positions = _batch(path, padding_side)
  # Both sides read the same bfloat16 weights, which float32 holds exactly, so they compute
  # one function and differ only by float32 rounding. Tolerance (first order): a length-n dot
  # product rounds by at most n*u*sum|a_i b_i| (Higham, Accuracy and Stability, eq. 3.5). The
  # logits are a length-H dot product of the normed hidden state with lm_head rows: at most
  # H*u*S with S from `_hf_logits_and_scale`. The hidden state carries each layer's rounding as
  # a relative error (the final RMSNorm fixes its scale), at most (H + I)*u per layer for its
  # length-H projections and length-I down_proj, if residual adds, softmax and silu pass
  # relative errors with gain <= 1 (true at this init scale). Two independent roundings:
  #   tol = 2 * (H + L*(H + I)) * u * S = 608 u S here (~3.6e-5 S).
  # Observed: ~1.5e-7 with S ~ 1; a wrong RoPE base, bias, norm or transpose moves logits by
  # 1e-3 or more.
  config = json.loads((path / "config.json").read_text())
  H, I, L = (config[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers"))
  want, S = _hf_logits_and_scale(_hf_model(path, torch.float32), ids, mask, positions)
  tol = 2 * (H + L * (H + I)) * U32 * S

  model, params = jaxskill.load_model(path, dtype=jnp.float32)
  assert model.config.vocab_size == config["vocab_size"]
  assert model.config.eos_token_ids == (config["eos_token_id"],)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
  assert logits.dtype == jnp.float32 and logits.shape == want.shape
  valid = mask.astype(bool)
  err = np.abs(np.asarray(logits, np.float64)[valid] - want[valid]).max()
  assert err <= tol, (err, tol, S)


def test_float64_logits_match_transformers(qwen15):
  """jaxskill runs float64 models (wide() keeps sums in float64), so the comparison can go
  below float32 rounding; jax's x64 mode is switched on only inside this test."""
  path = qwen15()
  # Right padding: with left padding, transformers' float64 mask value (finfo(float64).min)
  # becomes -inf in its float32 softmax, a pad query that sees no key turns NaN, and 0 * NaN in
  # the next layer spreads it to every row. No real row meets a pad key here.
  ids, mask, positions = _batch(path, "right")
  # transformers' Qwen2 stays float32 in places even for a float64 model: RMSNorm statistics
  # (`.to(torch.float32)`, 2L+1 norms), the eager softmax (`dtype=torch.float32`, L of them)
  # and the RoPE tables (float32 on both sides, equal up to an ulp of libm). Each rounds a
  # relative quantity once or a few times, say <= 4u, and passes it on with gain <= 1 as above:
  #   tol = (3L + 2) * 4u * S = 32 u S here (~1.9e-6 S); float64 rounding itself is ~1e-15.
  # Observed: ~5e-8 with S ~ 1.
  L = json.loads((path / "config.json").read_text())["num_hidden_layers"]
  want, S = _hf_logits_and_scale(_hf_model(path, torch.float64), ids, mask, positions)
  tol = (3 * L + 2) * 4 * U32 * S
  with jax.enable_x64(True):
    model, params = jaxskill.load_model(path, dtype=jnp.float64)
    assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(params))
    logits = model.apply({"params": params}, jnp.asarray(ids), attention_mask=jnp.asarray(mask))
    assert logits.dtype == jnp.float64
    logits = np.asarray(logits)
  valid = mask.astype(bool)
  err = np.abs(logits[valid] - want[valid]).max()
  assert err <= tol, (err, tol, S)


# --- (d) jaxskill tokenizes as transformers does ---------------------------------------------

def test_jaxskill_tokenizer_gives_the_same_ids(qwen15):
  path = qwen15()
  ours, ref = jaxskill.load_tokenizer(path), _auto_tokenizer(path)
  assert ours(TEXTS).input_ids == ref(TEXTS).input_ids
  for side in ("left", "right"):
    ours.padding_side = ref.padding_side = side
    a, b = ours(TEXTS, padding=True), ref(TEXTS, padding=True)
    assert a.input_ids == b.input_ids and a.attention_mask == b.attention_mask
  assert ours.eos_token_id == ours.pad_token_id == ref.convert_tokens_to_ids(ENDOFTEXT)
  assert ours.bos_token_id is None
