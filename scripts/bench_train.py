"""Prompt-training steps per second: jaxskill (jit, optax AdamW on the prompt only) against HF
transformers PyTorch eager with a trainable prompt fed through `inputs_embeds` (only the prompt
requires grad; torch.optim.AdamW), same model shape, batch and sequence, same process.

The step: embed the tokens, write P prompt vectors into the infix slots, run the frozen model,
take the logits at the answer position only (HF: `logits_to_keep=1`, the answer position being
the last one), cross-entropy over a 2-word verbalizer, backward to the prompt, AdamW update.
jaxskill runs the input columns before the prompt once as a constant cache (its training default;
`--no-split` differentiates the whole sequence as PyTorch does); the gradient is the same.

  python scripts/bench_train.py [--batch 4] [--seq 64] [--prompt 8] [--iters 5]
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxskill
from jaxskill.config import TrainConfig
from jaxskill.model.architecture import PRESETS
from jaxskill.model.batch import Batch
from benchlib import (finish, parser, random_params, reset_peak_rss, run_info,
                      time_calls, torch_model)
from jaxskill.stages.train import make_optimizer, train_step


def make_batch(config, b, t, p, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, config.vocab_size, (b, t)).astype(np.int32)
  index = np.full((b, t), -1, np.int32)
  index[:, t - p:] = np.arange(p)  # infix: the prompt ends the sequence, before the answer
  zeros = np.zeros((b, t), np.int32)
  return Batch(input_ids=ids, attention_mask=zeros + 1, prompt_index=index,
               answer_pos=np.full(b, t - 1, np.int32),
               label=rng.integers(0, 2, b).astype(np.int32), targets=zeros, loss_mask=zeros,
               input_end=np.full(b, t - p, np.int32), prompt_start=np.full(b, t - p, np.int32))


def bench_jax(config, batch, p, iters, input_cols):
  model = jaxskill.CausalLM(config)
  params = random_params(model, batch.input_ids[:, :8])
  reset_peak_rss()
  optimizer = make_optimizer(TrainConfig())
  prompt = {"embeddings": 0.02 * jax.random.normal(jax.random.PRNGKey(1), (p, config.hidden_size))}
  state = {"prompt": prompt, "opt_state": optimizer.init(prompt), "step": jnp.int32(0),
           "rng": jax.random.PRNGKey(2)}
  step = jax.jit(lambda s, params, b: train_step(s, params, b, model=model, optimizer=optimizer,
                                                 kind="classification",
                                                 verbalizer=jnp.array([3, 5]), input_cols=input_cols))
  batch = jax.tree.map(jnp.asarray, batch)
  t0 = time.perf_counter()
  compiled = step.lower(state, params, batch).compile()
  compile_s = time.perf_counter() - t0
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], params, batch)
    jax.block_until_ready(holder["state"])
    return metrics

  run()
  return dict(compile_s=compile_s, step_s=time_calls(run, iters), loss=float(run()["loss"]))


def bench_torch(config, batch, p, iters, threads):
  import torch
  torch.set_num_threads(threads)
  model = torch_model(config)
  reset_peak_rss()
  model.requires_grad_(False)
  prompt = torch.nn.Parameter(0.02 * torch.randn(p, config.hidden_size))
  opt = torch.optim.AdamW([prompt], lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)
  ids = torch.tensor(batch.input_ids, dtype=torch.long)
  index = torch.tensor(batch.prompt_index, dtype=torch.long)
  mask = torch.tensor(batch.attention_mask)
  labels = torch.tensor(batch.label, dtype=torch.long)
  verbalizer = torch.tensor([3, 5])
  slot = (index >= 0)[..., None]

  def run():
    opt.zero_grad(set_to_none=True)
    embeds = model.model.embed_tokens(ids)
    embeds = torch.where(slot, prompt[index.clamp(min=0)], embeds)
    logits = model(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=1).logits[:, -1]
    loss = torch.nn.functional.cross_entropy(logits[:, verbalizer], labels)
    loss.backward()
    opt.step()
    return loss

  t0 = time.perf_counter()
  run()
  first_s = time.perf_counter() - t0
  return dict(first_call_s=first_s, step_s=time_calls(run, iters), loss=float(run()),
              threads=threads, torch=torch.__version__)


def main(argv=None):
  ap = parser(__doc__, preset="qwen1.5-0.5b", batch=4, seq=64, iters=5)
  ap.add_argument("--prompt", type=int, default=8)
  ap.add_argument("--threads", type=int, default=None)
  ap.add_argument("--no-split", action="store_true",
                  help="jaxskill differentiates the whole sequence (as PyTorch does) instead of "
                       "running the input columns once as a constant cache")
  ap.add_argument("--skip-torch", action="store_true")
  ap.add_argument("--skip-jax", action="store_true", help="PyTorch only (scripts/bench.py runs "
                  "each side in its own process to read its peak memory)")
  ap.add_argument("--json")
  args = ap.parse_args(argv)
  config = PRESETS[args.preset]
  batch = make_batch(config, args.batch, args.seq, args.prompt)
  input_cols = 0 if args.no_split else args.seq - args.prompt
  result = dict(preset=args.preset, batch=args.batch, seq=args.seq, prompt=args.prompt,
                input_cols=input_cols, **run_info())
  if not args.skip_jax:
    result["jaxskill"] = bench_jax(config, batch, args.prompt, args.iters, input_cols)
    result["jaxskill"]["steps_per_s"] = 1 / result["jaxskill"]["step_s"]
    print(f"jaxskill: {result['jaxskill']['steps_per_s']:.3f} steps/s (step "
          f"{result['jaxskill']['step_s']:.3f}s, compile {result['jaxskill']['compile_s']:.1f}s)",
          flush=True)
  if not args.skip_torch:
    result["torch"] = bench_torch(config, batch, args.prompt, args.iters,
                                  args.threads or os.cpu_count())
    result["torch"]["steps_per_s"] = 1 / result["torch"]["step_s"]
    print(f"torch:    {result['torch']['steps_per_s']:.3f} steps/s (step "
          f"{result['torch']['step_s']:.3f}s, first call {result['torch']['first_call_s']:.1f}s)")
  return finish(result, "steps_per_s", args.json)


if __name__ == "__main__":
  main()
