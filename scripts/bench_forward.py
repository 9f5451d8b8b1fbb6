"""Forward pass plus neuron capture: jaxskill (JAX, jit) against HF transformers PyTorch eager.

Both sides run a Qwen1.5-0.5B-shaped model with random weights (no download), the same batch and
sequence length, in the same process on the same machine. PyTorch reads the neuron activations
with forward hooks on `mlp.down_proj` (its input, gathered at the same positions); jaxskill sows
them. Both compute logits at the same positions: all positions (`--logits all`) or the captured
ones only (`--logits captured`; HF through `logits_to_keep`), unless `--torch-logits` says
otherwise (`--logits captured --torch-logits all` compares jaxskill's capture call with the plain
HF forward that hook-based capture code usually runs).

  python scripts/bench_forward.py [--batch 4] [--seq 128] [--capture 4] [--iters 5]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxskill
from jaxskill.model.architecture import PRESETS
from benchlib import (finish, parser, random_params, reset_peak_rss, run_info,
                      time_calls, torch_model)


def bench_jax(config, ids, capture, logits_mode, iters, dtype, unroll):
  dtype = jnp.dtype(dtype)
  model = jaxskill.CausalLM(config, dtype=dtype, param_dtype=dtype, scan_unroll=unroll)
  params = random_params(model, ids[:, :8])
  reset_peak_rss()
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


def bench_torch(config, ids, capture, logits_mode, iters, threads, dtype):
  import torch
  torch.set_num_threads(threads)
  model = torch_model(config, dtype)
  reset_peak_rss()
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


def forward_flops(config, batch, seq, logits_rows):
  """Matmul FLOPs of one forward pass (2 per multiply-add; elementwise work not counted)."""
  c = config
  per_token = 2 * (c.hidden_size * c.head_dim * (c.num_attention_heads + 2 * c.num_key_value_heads)
                   + c.num_attention_heads * c.head_dim * c.hidden_size
                   + 3 * c.hidden_size * c.intermediate_size)
  attention = 2 * 2 * seq * seq * c.num_attention_heads * c.head_dim  # scores and mix, per row
  layers = c.num_hidden_layers * (batch * seq * per_token + batch * attention)
  return layers + 2 * logits_rows * c.hidden_size * c.vocab_size


def matmul_peak(dtype, n=2048, iters=5):
  """Measured GFLOP/s of one large jitted matmul: the ceiling any forward pass here can reach."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  jax.block_until_ready(f(a, a))
  return 2 * n ** 3 / time_calls(lambda: jax.block_until_ready(f(a, a)), iters) / 1e9


def main(argv=None):
  ap = parser(__doc__, preset="qwen1.5-0.5b", batch=4, seq=128, iters=5)
  ap.add_argument("--capture", type=int, default=4, help="captured positions per row")
  ap.add_argument("--logits", choices=["all", "captured"], default="all")
  ap.add_argument("--torch-logits", choices=["all", "captured"], default=None,
                  help="PyTorch's logits (default: as --logits; 'all' is HF's default forward)")
  ap.add_argument("--scan-unroll", type=int, default=1, help="jaxskill layers per scan step")
  ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                  help="params and compute, both sides")
  ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
  ap.add_argument("--skip-torch", action="store_true")
  ap.add_argument("--skip-jax", action="store_true", help="PyTorch only (scripts/bench.py runs "
                  "each side in its own process to read its peak memory)")
  ap.add_argument("--json", help="append the result as one JSON line to this file")
  args = ap.parse_args(argv)

  import os
  config = PRESETS[args.preset]
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(0, config.vocab_size, (args.batch, args.seq)), jnp.int32)
  capture = jnp.tile(jnp.arange(args.seq - args.capture, args.seq), (args.batch, 1))
  tokens = args.batch * args.seq
  result = dict(preset=args.preset, batch=args.batch, seq=args.seq, capture=args.capture,
                logits=args.logits, dtype=args.dtype, scan_unroll=args.scan_unroll, **run_info())
  logits_rows = args.batch * (args.seq if args.logits == "all" else args.capture)
  flops = forward_flops(config, args.batch, args.seq, logits_rows)
  result["gflop_per_step"] = flops / 1e9
  result["matmul_peak_gflops"] = matmul_peak(jnp.dtype(args.dtype))
  print(f"{flops / 1e9:.0f} GFLOP per step; measured {args.dtype} matmul peak "
        f"{result['matmul_peak_gflops']:.0f} GFLOP/s", flush=True)
  if not args.skip_jax:
    result["jaxskill"] = bench_jax(config, ids, capture, args.logits, args.iters, args.dtype,
                                   args.scan_unroll)
    result["jaxskill"]["tokens_per_s"] = tokens / result["jaxskill"]["step_s"]
    result["jaxskill"]["gflops"] = flops / 1e9 / result["jaxskill"]["step_s"]
    print(f"jaxskill: {result['jaxskill']['tokens_per_s']:.0f} tokens/s, "
          f"{result['jaxskill']['gflops']:.0f} GFLOP/s (step {result['jaxskill']['step_s']:.3f}s, "
          f"compile {result['jaxskill']['compile_s']:.1f}s)", flush=True)
  if not args.skip_torch:
    torch_logits = args.torch_logits or args.logits
    result["torch_logits"] = torch_logits
    torch_flops = forward_flops(config, args.batch, args.seq,
                                args.batch * (args.seq if torch_logits == "all" else args.capture))
    result["torch"] = bench_torch(config, ids, capture, torch_logits, args.iters,
                                  args.threads or os.cpu_count(), args.dtype)
    result["torch"]["tokens_per_s"] = tokens / result["torch"]["step_s"]
    result["torch"]["gflops"] = torch_flops / 1e9 / result["torch"]["step_s"]
    print(f"torch:    {result['torch']['tokens_per_s']:.0f} tokens/s, "
          f"{result['torch']['gflops']:.0f} GFLOP/s "
          f"(step {result['torch']['step_s']:.3f}s, first call {result['torch']['first_call_s']:.1f}s)")
    if "jaxskill" in result:
      assert result["jaxskill"]["acts_shape"] == result["torch"]["acts_shape"]
  return finish(result, "tokens_per_s", args.json)


if __name__ == "__main__":
  main()
