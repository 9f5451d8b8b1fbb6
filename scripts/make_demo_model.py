"""Builds the demo checkpoint shipped in `jaxskill/assets/demo_model` (no download needed).

A small Qwen2-architecture model with its own byte-level BPE tokenizer (digits split one by one,
as Qwen's tokenizer does), trained on BIG-bench-style arithmetic text, exported in HF format.
For now the weights are random (seeded); training the model organism is a later stage.

  python scripts/make_demo_model.py [--out DIR] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxskill
from jaxskill.model.config import QwenConfig

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "jaxskill" / "assets" / "demo_model"
EOS = "<|endoftext|>"


def arithmetic_corpus(n: int, seed: int) -> list[str]:
  """Texts of the built-in arithmetic tasks (generation and yes/no verification), so that the
  tokenizer has their words (" yes", " no", " plus", ...) as single tokens."""
  from jaxskill.tasks import arithmetic_generation, arithmetic_verification
  texts = []
  for digits in (1, 2, 3):  # 1-digit operations have 100 problems at most: ask each size apart
    kw = dict(digits=(digits,), n_train=min(n, 80 * 4), n_dev=0, n_test=0, seed=seed)
    for task in (arithmetic_generation(**kw), arithmetic_verification(**kw)):
      texts += [ex.input + ex.answer for ex in task.splits["train"]]
  return texts


def build_tokenizer(corpus: list[str], vocab_size: int):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(corpus, trainer)
  return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args(argv)

  tokenizer = build_tokenizer(arithmetic_corpus(2000, args.seed), vocab_size=320)
  eos = tokenizer.convert_tokens_to_ids(EOS)
  config = QwenConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=256,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      rope_theta=1e4, tie_word_embeddings=True, max_position_embeddings=256,
                      bos_token_id=None, eos_token_id=eos, pad_token_id=eos)
  model = jaxskill.Qwen2LM(config)
  params = model.init(jax.random.PRNGKey(args.seed), jnp.zeros((1, 8), jnp.int32))["params"]
  args.out.mkdir(parents=True, exist_ok=True)
  tokenizer.save_pretrained(args.out)
  jaxskill.export_hf(args.out, params, config)
  print(f"wrote {args.out} ({sum(p.stat().st_size for p in args.out.iterdir()) / 1e6:.2f} MB)")


if __name__ == "__main__":
  main()
