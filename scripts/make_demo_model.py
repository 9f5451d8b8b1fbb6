"""Builds the model organism shipped in `jaxskill/assets/demo_model` (no download needed).

A small Qwen2-architecture LM with its own byte-level BPE tokenizer (digits split one by one, as
Qwen's tokenizer does), trained from scratch in JAX on BIG-bench-style arithmetic text
(1- and 2-digit plus and minus):
  generation     "Q: What is 12 plus 7?\\nA: 19"
  verification   "Q: What is 12 plus 7?\\nA: 18\\nCorrect? no"  (wrong candidates differ in the
                 last digit or elsewhere, half each; as many right as wrong candidates)
then exported in HF format (transformers loads it). A deterministic 10% of the problems, and every
dev/test problem of configs/demo.yaml, never appear in training; the held-out exact-match
accuracy of 2-digit addition (greedy answer followed by EOS) is printed and written to
`organism.json` next to the weights.

  python scripts/make_demo_model.py [--out DIR] [--seed 0] [--steps 3000]   # ~15-20 min, 2 cores
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxskill
from jaxskill.model.architecture import Architecture
from jaxskill.tasks import arithmetic as arith

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "jaxskill" / "assets" / "demo_model"
EOS = "<|endoftext|>"
OPERATIONS = ("plus", "minus")
DIGITS = (1, 2)


def all_problems() -> list[tuple[str, int, int]]:
  """Every (operation, a, b) of the 1- and 2-digit plus / minus subtasks (as the task module
  defines them: the larger operand has exactly n digits)."""
  out = []
  for op in OPERATIONS:
    for a in range(100):
      for b in range(100):
        out.append((op, a, b))
  return out


def held_out(problem: tuple[str, int, int]) -> bool:
  """A fixed 10% of problems, by a hash that does not depend on the seed."""
  return zlib.crc32(repr(problem).encode()) % 10 == 0


def demo_eval_problems() -> set[tuple[str, int, int]]:
  """The dev and test problems of configs/demo.yaml's task: kept out of training so that the
  demo's held-out numbers are about unseen problems."""
  from jaxskill.config import load_config
  from jaxskill.tasks import build_task
  task = build_task(load_config(ROOT / "configs" / "demo.yaml", []).task)
  return {(ex.metadata["operation"], ex.metadata["a"], ex.metadata["b"])
          for split in ("dev", "test") for ex in task.splits.get(split, ())}


def texts_for(problem, rng: random.Random) -> list[str]:
  """Three copies of the generation text (the arithmetic is the hard part to learn) and four
  verification texts (2 right, 1 wrong in the last digit only, 1 wrong elsewhere)."""
  op, a, b = problem
  truth = arith.evaluate(op, a, b)
  q = f"{arith.question(op, a, b)}\nA:"
  verify = lambda c, ok: f"{q} {c}\nCorrect? {'yes' if ok else 'no'}"  # noqa: E731
  return [f"{q} {truth}"] * 3 + [
      verify(truth, True), verify(truth, True),
      verify(arith.wrong_last_digit(truth, rng), False),
      verify(arith.wrong_elsewhere(truth, rng), False)]


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


def encode(tokenizer, texts: list[str], length: int) -> tuple[np.ndarray, np.ndarray]:
  """(ids `[n, length]` right-padded with EOS, loss mask `[n, length]`). The loss covers what
  the model should produce: the answer and EOS of a generation text, the yes / no and EOS of a
  verification text. Operands and candidates are data (random digits, wrong candidates), not
  predictions."""
  eos = tokenizer.convert_tokens_to_ids(EOS)
  a_colon = tokenizer("\nA:", add_special_tokens=False)["input_ids"]
  ids = np.full((len(texts), length), eos, np.int32)
  mask = np.zeros((len(texts), length), np.float32)
  for row, text in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
    seq = text + [eos]
    if len(seq) > length:
      raise ValueError(f"text {texts[row]!r} has {len(seq)} tokens > {length}")
    ids[row, :len(seq)] = seq
    if "Correct?" in texts[row]:
      start = len(seq) - 2  # " yes" / " no", then EOS
    else:
      start = next(i for i in range(len(seq)) if seq[i:i + len(a_colon)] == a_colon)
      start += len(a_colon)
    mask[row, start:len(seq)] = 1.0  # mask[j]: the loss of predicting token j from j - 1
  return ids, mask


def loss_fn(params, model, ids, mask):
  logits = model.apply({"params": params}, ids[:, :-1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  tok = -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
  m = mask[:, 1:]
  return (tok * m).sum() / m.sum()


def exact_match(params, model, ids, mask) -> np.ndarray:
  """1 per row when every masked token is the argmax given the tokens before it: greedy
  decoding would produce exactly the answer and then EOS."""
  logits = model.apply({"params": params}, ids[:, :-1])
  hit = (jnp.argmax(logits, -1) == ids[:, 1:]) | (mask[:, 1:] == 0)
  return jnp.all(hit, axis=-1)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--steps", type=int, default=3000)
  ap.add_argument("--batch-size", type=int, default=64)
  ap.add_argument("--lr", type=float, default=2e-3)
  ap.add_argument("--hidden", type=int, default=128)
  ap.add_argument("--intermediate", type=int, default=512)
  ap.add_argument("--layers", type=int, default=4)
  args = ap.parse_args(argv)
  t_start = time.perf_counter()

  rng = random.Random(args.seed)
  excluded = demo_eval_problems()
  problems = all_problems()
  train_problems = [p for p in problems if not held_out(p) and p not in excluded]
  test_problems = [p for p in problems if held_out(p) and p not in excluded]
  corpus = [t for p in train_problems for t in texts_for(p, rng)]
  tokenizer = build_tokenizer(corpus, vocab_size=320)
  eos = tokenizer.convert_tokens_to_ids(EOS)
  length = 28
  train_ids, train_mask = encode(tokenizer, corpus, length)
  test_texts = {"plus2": [], "minus2": [], "verify": []}
  for p in test_problems:
    t = texts_for(p, rng)
    if p[0] == "plus" and max(p[1:]) >= 10:
      test_texts["plus2"].append(t[0])
    if p[0] == "minus" and max(p[1:]) >= 10:
      test_texts["minus2"].append(t[0])
    test_texts["verify"] += t[4:]  # one right, two wrong
  tests = {k: encode(tokenizer, v, length) for k, v in test_texts.items()}
  ids, mask = tests["verify"]  # verification is scored on the yes / no token alone
  last = (ids != eos).sum(1) - 1
  tests["verify"] = (ids, (np.arange(length)[None] == last[:, None]).astype(np.float32))
  print(f"{len(train_problems)} training problems ({len(corpus)} texts), "
        f"{len(test_problems)} held out ({len(test_texts['plus2'])} 2-digit additions)")

  config = Architecture(vocab_size=len(tokenizer), hidden_size=args.hidden,
                      intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1e4,
                      tie_word_embeddings=True, max_position_embeddings=256,
                      bos_token_id=None, eos_token_id=eos, pad_token_id=eos)
  model = jaxskill.CausalLM(config)
  key = jax.random.PRNGKey(args.seed)
  params = model.init(key, jnp.zeros((1, 8), jnp.int32))["params"]
  schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(200, args.steps // 10),
                                                args.steps, args.lr * 0.05)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0),
                          optax.adamw(schedule, b1=0.9, b2=0.98, weight_decay=0.1))
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, ids, mask):
    loss, grads = jax.value_and_grad(loss_fn)(params, model, ids, mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  match = jax.jit(functools.partial(exact_match, model=model))

  def evaluate(params) -> dict:
    out = {}
    for name, (ids, mask) in tests.items():
      hits = np.concatenate([np.asarray(match(params, ids=ids[i:i + 512], mask=mask[i:i + 512]))
                             for i in range(0, len(ids), 512)])
      out[name] = float(hits.mean())
    return out

  data_rng = np.random.default_rng(args.seed)
  losses = []
  for i in range(1, args.steps + 1):
    idx = data_rng.integers(0, len(train_ids), args.batch_size)
    params, opt_state, loss = step(params, opt_state, train_ids[idx], train_mask[idx])
    losses.append(float(loss))
    if i % 250 == 0 or i == args.steps:
      acc = evaluate(params)
      print(f"step {i:5d}  loss {np.mean(losses[-250:]):.4f}  held-out exact match: "
            + "  ".join(f"{k} {v:.3f}" for k, v in acc.items())
            + f"  ({time.perf_counter() - t_start:.0f}s)", flush=True)

  args.out.mkdir(parents=True, exist_ok=True)
  tokenizer.save_pretrained(args.out)
  jaxskill.export_hf(args.out, params, config)
  acc = evaluate(params)
  size = sum(p.stat().st_size for p in args.out.iterdir())
  record = {
      "command": "python scripts/make_demo_model.py " + " ".join(argv or []),
      "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
      "train_problems": len(train_problems), "train_texts": len(corpus),
      "held_out_problems": len(test_problems),
      "held_out_exact_match": acc, "held_out_counts": {k: len(v) for k, v in test_texts.items()},
      "final_loss": float(np.mean(losses[-250:])), "seconds": time.perf_counter() - t_start,
      "size_bytes": size, "jax": jax.__version__, "device": jax.devices()[0].device_kind,
  }
  (args.out / "organism.json").write_text(json.dumps(record, indent=2) + "\n")
  print(f"wrote {args.out} ({size / 1e6:.2f} MB); held-out 2-digit addition exact match "
        f"{acc['plus2']:.3f} in {record['seconds']:.0f}s")


if __name__ == "__main__":
  main()
