"""A tiny random checkpoint laid out like a real Qwen1.5 one (e.g. Qwen/Qwen1.5-0.5B on the hub).

`tests/conftest.py` builds checkpoints the way the installed transformers writes them; users have
files written by transformers 4.37 with Qwen's byte-level BPE tokenizer. This module reproduces
that layout at toy size so the loaders and the CLI are tested on what users really have:

- `config.json` in the 4.37 layout: top-level `rope_theta`, `sliding_window` 32768 next to
  `use_sliding_window: false`, `max_window_layers`, `torch_dtype: bfloat16`, bos = eos = the id of
  `<|endoftext|>`, no `pad_token_id`, no `rope_scaling`, `transformers_version: 4.37.0`; and
  `vocab_size` larger than the tokenizer (Qwen pads the embedding to 151936 rows for ~151646
  tokens).
- `model.safetensors` with every tensor in bfloat16.
- `tokenizer.json`, `tokenizer_config.json`, `vocab.json`, `merges.txt`: a byte-level BPE with
  Qwen's pre-tokenizer (digits split one per token), `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`
  appended after the BPE vocabulary, no bos token, eos = pad = `<|endoftext|>`.
- `generation_config.json` as Qwen1.5's base models ship it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# Qwen's pre-tokenizer pattern (tokenizer.json of every Qwen1.5 checkpoint); `\p{N}` alone is what
# splits numbers into single digits.
PRETOKENIZE_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                     r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen1.5's own chat template, so that a chat-aware code path sees the real string.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Words the corpus makes single tokens with their leading space, as in Qwen's vocabulary; " yes"
# and " no" are the arithmetic and HANS tasks' verbalizers.
COMMON_WORDS = (" yes", " no", " the", " What", " is", " plus", " minus", " times", " doctor",
                " actor", " premise", " hypothesis", " entail")

_NAMES = ("doctor", "actor", "lawyer", "student", "artist", "banker", "author", "judge",
          "senator", "scientist", "secretary", "tourist", "manager", "president", "athlete")
_VERBS = ("saw", "helped", "called", "thanked", "advised", "recommended", "believed", "avoided",
          "supported", "contacted", "stopped", "encouraged", "introduced", "mentioned")
_ENGLISH = (
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April, and the "
    "clocks were striking thirteen. A language model reads a sequence of tokens and predicts the "
    "next one. People often ask whether the answer is right, and the model says yes or no. "
    "When the weather is good we walk to the river and talk about the work of the week. "
    "There is no reason to think that the result would be different if we tried it again. "
    "She said that the book on the table was hers, but nobody believed her at first. "
    "Numbers such as 2024, 3.14 and 1,000,000 appear in text all the time.")


def corpus(seed: int = 0) -> list[str]:
  """Arithmetic verification prompts, HANS-like premise/hypothesis pairs and plain English."""
  rng = random.Random(seed)
  texts = []
  ops = (("plus", lambda a, b: a + b), ("minus", lambda a, b: a - b),
         ("times", lambda a, b: a * b))
  for _ in range(400):
    name, op = rng.choice(ops)
    a, b = rng.randrange(100), rng.randrange(100)
    right = op(a, b)
    shown = right if rng.random() < 0.5 else right + rng.choice((-10, -1, 1, 10))
    verdict = "yes" if shown == right else "no"
    texts.append(f"Q: What is {a} {name} {b}?\nA: {shown}\nCorrect? {verdict}")
  for _ in range(300):
    x, y = rng.sample(_NAMES, 2)
    v = rng.choice(_VERBS)
    if rng.random() < 0.5:
      premise, hypothesis, verdict = f"The {x} {v} the {y}.", f"The {y} {v} the {x}.", "no"
    else:
      premise, hypothesis, verdict = f"The {x} near the {y} {v} me.", f"The {x} {v} me.", "yes"
    texts.append(f"Premise: {premise}\nHypothesis: {hypothesis}\n"
                 f"Does the premise entail the hypothesis? {verdict}")
  texts += [_ENGLISH] * 20
  return texts


def build_tokenizer(vocab_size: int = 600, seed: int = 0, texts: tuple[str, ...] = (),
                    specials: tuple[str, ...] = SPECIAL_TOKENS):
  """A `tokenizers.Tokenizer` with Qwen's byte-level BPE pipeline, trained on `corpus()` and
  `texts`, with the `specials` appended after the learned vocabulary (ids len(bpe) ..
  len(bpe) + len(specials) - 1)."""
  from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
  from tokenizers import processors, trainers
  from tokenizers.models import BPE

  tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                      fuse_unk=False, byte_fallback=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
  tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                            use_regex=False)
  tok.decoder = decoders.ByteLevel()
  # The full 256-byte alphabet, as in GPT-2/Qwen, so that no input is ever out of vocabulary.
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                special_tokens=[])
  tok.train_from_iterator(corpus(seed) + list(texts), trainer)
  # Special tokens go after training so they are not in vocab.json and take the last ids, as in
  # Qwen (151643..151645).
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=False,
                                     rstrip=False, single_word=False) for t in specials])
  return tok


def _special_entry(content: str) -> dict:
  return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
          "single_word": False, "special": True}


def _save_tokenizer(tok, path: Path) -> dict[str, int]:
  """Writes the tokenizer files; returns the special tokens' ids."""
  from transformers import Qwen2TokenizerFast

  hf_tok = Qwen2TokenizerFast(tokenizer_object=tok, bos_token=None, eos_token=ENDOFTEXT,
                              pad_token=ENDOFTEXT, unk_token=None, add_prefix_space=False,
                              model_max_length=32768, clean_up_tokenization_spaces=False,
                              errors="replace", split_special_tokens=False)
  hf_tok.save_pretrained(path)
  # transformers 5 writes only tokenizer.json and tokenizer_config.json; the hub files also have
  # the slow tokenizer's vocab.json and merges.txt ("#version: 0.2" header, no special tokens).
  tok.model.save(str(path))
  ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}

  # tokenizer.json: transformers 5 re-serialises the pipeline with its own defaults (decoder
  # ByteLevel(add_prefix_space=true, ...), prefix/suffix null); Qwen's hub file has the pipeline
  # built above, predates `ignore_merges`, and stores merges as "a b" strings (unambiguous here:
  # byte-level tokens never contain a space).
  tj = json.loads((path / "tokenizer.json").read_text())
  ours = json.loads(tok.to_str())
  for key in ("normalizer", "pre_tokenizer", "post_processor"):
    tj[key] = ours[key]
  # The Python binding of the decoder ignores these flags, so they are written here.
  tj["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                   "use_regex": False}
  model = tj["model"]
  model.pop("ignore_merges", None)
  model.update(dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
               fuse_unk=False, byte_fallback=False)
  model["merges"] = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  (path / "tokenizer.json").write_text(json.dumps(tj, indent=2, ensure_ascii=False))

  # tokenizer_config.json in the 4.37 layout: transformers 5 writes "backend": "tokenizers" and
  # leaves out added_tokens_decoder, additional_special_tokens and the chat template.
  config = {
      "add_prefix_space": False,
      "added_tokens_decoder": {str(ids[t]): _special_entry(t) for t in SPECIAL_TOKENS},
      "additional_special_tokens": [IM_START, IM_END],
      "bos_token": None,
      "chat_template": CHAT_TEMPLATE,
      "clean_up_tokenization_spaces": False,
      "eos_token": ENDOFTEXT,
      "errors": "replace",
      "model_max_length": 32768,
      "pad_token": ENDOFTEXT,
      "split_special_tokens": False,
      "tokenizer_class": "Qwen2Tokenizer",
      "unk_token": None,
  }
  (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
  for extra in ("special_tokens_map.json", "chat_template.jinja", "added_tokens.json"):
    (path / extra).unlink(missing_ok=True)  # not in Qwen1.5's repository
  return ids


# Keys of Qwen1.5's config.json, in the order the hub file has them (alphabetical, as 4.37 wrote).
_LEGACY_KEYS = (
    "architectures", "attention_dropout", "bos_token_id", "eos_token_id", "hidden_act",
    "hidden_size", "initializer_range", "intermediate_size", "max_position_embeddings",
    "max_window_layers", "model_type", "num_attention_heads", "num_hidden_layers",
    "num_key_value_heads", "rms_norm_eps", "rope_theta", "sliding_window", "tie_word_embeddings",
    "torch_dtype", "transformers_version", "use_cache", "use_sliding_window", "vocab_size")


def legacy_config(written: dict, *, eos_id: int, theta: float) -> dict:
  """The config transformers wrote, normalised to the 4.37 layout of Qwen1.5's config.json.

  transformers 5 writes `dtype` (not `torch_dtype`), `rope_parameters: {rope_theta, rope_type}`
  (not top-level `rope_theta`), `layer_types`, `sliding_window: null` and `pad_token_id: null`;
  4.37 wrote none of those nestings, and Qwen's files have `sliding_window` set though unused.
  """
  d = dict(written)
  rope = d.pop("rope_parameters", None) or {}
  # Refuse to drop anything that changes the computation: only default RoPE may be flattened.
  assert rope.get("rope_type", "default") == "default", rope
  assert set(rope) <= {"rope_type", "rope_theta"}, rope
  assert d.pop("rope_scaling", None) is None
  d["rope_theta"] = float(rope.get("rope_theta", d.get("rope_theta", theta)))
  assert d["rope_theta"] == theta, (d["rope_theta"], theta)
  assert all(t == "full_attention" for t in d.pop("layer_types", None) or ())
  assert not d.get("use_sliding_window")
  d.pop("dtype", None)
  d.pop("pad_token_id", None)  # Qwen1.5 has none; the tokenizer's pad is <|endoftext|>
  d.update(
      architectures=["Qwen2ForCausalLM"], model_type="qwen2", torch_dtype="bfloat16",
      transformers_version="4.37.0", use_cache=True, use_sliding_window=False,
      sliding_window=32768, max_position_embeddings=32768,
      max_window_layers=d["num_hidden_layers"], bos_token_id=eos_id, eos_token_id=eos_id,
      hidden_act="silu", attention_dropout=0.0)
  extra = sorted(set(d) - set(_LEGACY_KEYS))
  assert not extra, f"transformers wrote config keys this normaliser does not know: {extra}"
  return {k: d[k] for k in _LEGACY_KEYS}


def make_qwen15_like_checkpoint(path, *, layers=2, hidden=48, intermediate=80, heads=6,
                                kv_heads=2, tied=False, extra_rows=37, seed=0,
                                bpe_vocab: int = 600, texts: tuple[str, ...] = (),
                                vocab_size: int | None = None) -> Path:
  """Writes a tiny random Qwen1.5-layout checkpoint into `path` (created if needed): a BPE of
  `bpe_vocab` tokens trained on `corpus()` and `texts`, and an embedding of `vocab_size` rows
  (default: the tokenizer's size + `extra_rows`; Qwen1.5's is 151936)."""
  import torch
  from tests.conftest import make_hf_model

  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  tok = build_tokenizer(bpe_vocab, seed=seed, texts=texts)
  ids = _save_tokenizer(tok, path)
  n_tokens = tok.get_vocab_size(with_added_tokens=True)
  eos_id = ids[ENDOFTEXT]
  theta = 1e6

  model = make_hf_model(vocab=vocab_size or n_tokens + extra_rows, hidden=hidden, intermediate=intermediate,
                        layers=layers, heads=heads, kv_heads=kv_heads, theta=theta, tied=tied,
                        seed=seed, max_position_embeddings=32768, rms_norm_eps=1e-6,
                        initializer_range=0.02, bos_token_id=eos_id, eos_token_id=eos_id)
  model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)

  written = json.loads((path / "config.json").read_text())
  (path / "config.json").write_text(
      json.dumps(legacy_config(written, eos_id=eos_id, theta=theta), indent=2) + "\n")
  # Qwen1.5 base models' generation_config.json.
  (path / "generation_config.json").write_text(json.dumps({
      "bos_token_id": eos_id, "do_sample": False, "eos_token_id": eos_id,
      "max_new_tokens": 2048, "transformers_version": "4.37.0"}, indent=2) + "\n")
  return path
