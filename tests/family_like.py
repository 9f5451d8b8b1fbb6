"""Tiny random checkpoints laid out like the published ones of each family: the hub's
config.json with its fields and values (written down here, since tests cannot download) and only
the sizes made tiny, bfloat16 safetensors written by transformers' `save_pretrained`, and a
tokenizer with the family's special tokens and BOS behaviour (Qwen: none added, eos = pad =
<|endoftext|>; Llama 3: <|begin_of_text|> added to every text, no pad; Mistral: <s> added, no pad).
The tokenizer is tests/qwen15_like.py's byte-level BPE trained on a small corpus: Llama 3's is a
byte-level BPE too; Mistral's real one is SentencePiece, of which only the specials are kept here.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.qwen15_like import ENDOFTEXT, _save_tokenizer, build_tokenizer

# config.json of the published checkpoints (the hub ids of configs/<family>/*.yaml).
HUB_CONFIGS = {
    "Qwen/Qwen2.5-0.5B": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
        "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
        "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
        "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": True,
        "use_mrope": False, "use_sliding_window": False, "vocab_size": 151936},
    "Qwen/Qwen3-0.6B-Base": {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3072,
        "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen3",
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.51.0", "use_cache": True, "use_sliding_window": False,
        "vocab_size": 151936},
    "meta-llama/Llama-3.2-1B": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256},
    "mistralai/Mistral-7B-v0.1": {
        "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000},
}

# Per hub id: (BOS, EOS) special tokens of its tokenizer (BOS None: nothing is added) and the tiny
# sizes. head_dim differs from hidden / heads where the real one does (Qwen3: 128 vs 64).
_TINY = {
    "Qwen/Qwen2.5-0.5B": dict(specials=(None, ENDOFTEXT), heads=6, kv_heads=2),
    "Qwen/Qwen3-0.6B-Base": dict(specials=(None, ENDOFTEXT), heads=6, kv_heads=2, head_dim=16),
    "meta-llama/Llama-3.2-1B": dict(specials=("<|begin_of_text|>", "<|end_of_text|>"), heads=6,
                                    kv_heads=2, head_dim=8),
    "mistralai/Mistral-7B-v0.1": dict(specials=("<s>", "</s>"), heads=6, kv_heads=2),
}
# Mistral's 4096-token window never binds on the tasks' short inputs; the tiny one does.
TINY_WINDOW = 12


def make_family_checkpoint(path, hub_id: str, *, layers=2, hidden=48, intermediate=80,
                           seed=0) -> Path:
  """Writes a tiny random checkpoint laid out like `hub_id`'s into `path` (created if needed)."""
  import torch
  import transformers
  from tests.conftest import make_hf_model

  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  tiny = _TINY[hub_id]
  bos, eos = tiny["specials"]
  ids = _tokenizer(path, bos, eos, seed)
  d = dict(HUB_CONFIGS[hub_id])
  d.update(vocab_size=ids["size"] + 37, hidden_size=hidden, intermediate_size=intermediate,
           num_hidden_layers=layers, num_attention_heads=tiny["heads"],
           num_key_value_heads=tiny["kv_heads"], bos_token_id=ids.get(bos, ids[eos]),
           eos_token_id=ids[eos])
  if "head_dim" in d:
    d["head_dim"] = tiny["head_dim"]
  if "max_window_layers" in d:
    d["max_window_layers"] = layers
  if d["model_type"] == "mistral":
    d["sliding_window"] = TINY_WINDOW
  hf_config = {k: v for k, v in d.items()
               if k not in ("architectures", "torch_dtype", "transformers_version")}
  model = make_hf_model(
      family=d["model_type"], vocab=d["vocab_size"], hidden=hidden, intermediate=intermediate,
      layers=layers, heads=tiny["heads"], kv_heads=tiny["kv_heads"], theta=d["rope_theta"],
      tied=d["tie_word_embeddings"], seed=seed,
      **{k: v for k, v in hf_config.items() if k not in _MAKE_ARGS})
  assert type(model).__name__ == d["architectures"][0]
  model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
  # The hub's layout, not transformers 5's (rope_parameters, dtype, layer_types).
  (path / "config.json").write_text(json.dumps(d, indent=2) + "\n")
  (path / "generation_config.json").write_text(json.dumps({
      "bos_token_id": d["bos_token_id"], "eos_token_id": d["eos_token_id"],
      "transformers_version": d["transformers_version"]}, indent=2) + "\n")
  assert transformers.AutoConfig.from_pretrained(path).model_type == d["model_type"]
  return path


_MAKE_ARGS = {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "rope_theta", "tie_word_embeddings"}


def _tokenizer(path: Path, bos: str | None, eos: str, seed: int) -> dict:
  """Writes the tokenizer files: Qwen's (tests/qwen15_like.py) when `bos` is None, else a
  `PreTrainedTokenizerFast` whose post-processor puts `bos` before every text, as Llama 3's
  tokenizer.json does. Returns the specials' ids and "size" (tokens with specials)."""
  from tokenizers import processors
  from transformers import PreTrainedTokenizerFast
  if bos is None:
    tok = build_tokenizer(600, seed=seed)
    ids = _save_tokenizer(tok, path)
  else:
    tok = build_tokenizer(600, seed=seed, specials=(bos, eos))
    ids = {t: tok.token_to_id(t) for t in (bos, eos)}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, ids[bos])])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos,
                                     model_max_length=131072, clean_up_tokenization_spaces=False)
    hf_tok.save_pretrained(path)
  return {**ids, "size": tok.get_vocab_size(with_added_tokens=True)}
