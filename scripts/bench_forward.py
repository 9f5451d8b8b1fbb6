"""Forward pass plus neuron capture: jaxskill (JAX, jit) against HF transformers PyTorch eager.

Both sides run a Qwen1.5-0.5B-shaped model with random weights (no download), the same batch and
sequence length, in the same process on the same machine. PyTorch reads the neuron activations
with forward hooks on `mlp.down_proj` (its input, gathered at the same positions); jaxskill sows
them. Both compute logits at the same positions: all positions (`--logits all`) or the captured
ones only (`--logits captured`; HF through `logits_to_keep`).

  python scripts/bench_forward.py [--batch 4] [--seq 128] [--capture 4] [--iters 5]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxskill
from jaxskill.model.config import PRESETS


def time_calls(fn, iters):
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench_jax(config, ids, capture, logits_mode, iters):
  model = jaxskill.Qwen2LM(config)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), ids[:, :8])["params"]
  logits_pos = capture if logits_mode == "captured" else None

  @jax.jit
  def forward(params, ids, capture):
    logits, variables = model.apply({"params": params}, ids, capture_positions=capture,
                                    logits_positions=logits_pos, mutable=["intermediates"])
    return logits, jaxskill.neuron_activations(variables)

  t0 = time.perf_counter()
  compiled = forward.lower(params, ids, capture).compile()
  compile_s = time.perf_counter() - t0
  run = lambda: jax.block_until_ready(compiled(params, ids, capture))  # noqa: E731
  run()
  step_s = time_calls(run, iters)
  logits, acts = run()
  return dict(compile_s=compile_s, step_s=step_s, acts_shape=list(acts.shape),
              logits_shape=list(logits.shape))


def bench_torch(config, ids, capture, logits_mode, iters, threads):
  import torch
  from transformers import Qwen2Config, Qwen2ForCausalLM
  torch.set_num_threads(threads)
  hf_config = Qwen2Config(**{k: v for k, v in config.to_hf_dict().items()
                             if k not in ("architectures", "model_type")},
                          attn_implementation="eager")
  torch.manual_seed(0)
  model = Qwen2ForCausalLM(hf_config).eval()
  ids_t = torch.tensor(np.asarray(ids))
  cap = torch.tensor(np.asarray(capture))
  captured = []

  def hook(module, inputs, output):
    # Gather the captured positions right away, as jaxskill does before sowing.
    captured.append(torch.gather(inputs[0], 1, cap[:, :, None].expand(-1, -1, inputs[0].shape[-1])))

  for layer in model.model.layers:
    layer.mlp.down_proj.register_forward_hook(hook)
  kwargs = {}
  if logits_mode == "captured":
    # HF's logits_to_keep takes one index list for the whole batch; the bench uses the same
    # positions in every row, so this is the same work as jaxskill's logits_positions.
    kwargs["logits_to_keep"] = cap[0]

  def run():
    captured.clear()
    with torch.inference_mode():
      out = model(input_ids=ids_t, **kwargs)
    return out.logits, torch.stack(captured, 1)

  t0 = time.perf_counter()
  run()
  first_s = time.perf_counter() - t0
  step_s = time_calls(run, iters)
  logits, acts = run()
  return dict(first_call_s=first_s, step_s=step_s, acts_shape=list(acts.shape),
              logits_shape=list(logits.shape), threads=threads, torch=torch.__version__)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="qwen1.5-0.5b", choices=sorted(PRESETS))
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--seq", type=int, default=128)
  ap.add_argument("--capture", type=int, default=4, help="captured positions per row")
  ap.add_argument("--logits", choices=["all", "captured"], default="all")
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
  ap.add_argument("--skip-torch", action="store_true")
  ap.add_argument("--json", help="append the result as one JSON line to this file")
  args = ap.parse_args(argv)

  import os
  config = PRESETS[args.preset]
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, config.vocab_size, (args.batch, args.seq)), jnp.int32)
  capture = jnp.tile(jnp.arange(args.seq - args.capture, args.seq), (args.batch, 1))
  tokens = args.batch * args.seq
  result = dict(preset=args.preset, batch=args.batch, seq=args.seq, capture=args.capture,
                logits=args.logits, machine=f"{platform.machine()} {os.cpu_count()} cores",
                jax=jax.__version__, device=str(jax.devices()[0]),
                date=time.strftime("%Y-%m-%d"))
  result["jaxskill"] = bench_jax(config, ids, capture, args.logits, args.iters)
  result["jaxskill"]["tokens_per_s"] = tokens / result["jaxskill"]["step_s"]
  print(f"jaxskill: {result['jaxskill']['tokens_per_s']:.0f} tokens/s "
        f"(step {result['jaxskill']['step_s']:.3f}s, compile {result['jaxskill']['compile_s']:.1f}s)",
        flush=True)
  if not args.skip_torch:
    result["torch"] = bench_torch(config, ids, capture, args.logits, args.iters,
                                  args.threads or os.cpu_count())
    result["torch"]["tokens_per_s"] = tokens / result["torch"]["step_s"]
    result["ratio"] = result["jaxskill"]["tokens_per_s"] / result["torch"]["tokens_per_s"]
    print(f"torch:    {result['torch']['tokens_per_s']:.0f} tokens/s "
          f"(step {result['torch']['step_s']:.3f}s, first call {result['torch']['first_call_s']:.1f}s)")
    print(f"ratio jaxskill/torch: {result['ratio']:.2f}x")
    assert result["jaxskill"]["acts_shape"] == [result["torch"]["acts_shape"][i] for i in range(4)]
  if args.json:
    with open(args.json, "a") as f:
      f.write(json.dumps(result) + "\n")
  return result


if __name__ == "__main__":
  main()
