"""Model FLOPs utilisation of jaxskill's bfloat16 forward pass (the suite's GPU row).

A Qwen1.5-1.8B-shaped model with random weights, bf16 params and compute, batch 32 x 512
tokens, logits at every position, neuron capture off (the model alone). MFU = the forward's
matmul FLOPs (`bench_forward.forward_flops`: projections, attention scores and mix over the full
t x t square, the LM head; 2 per multiply-add) per second, divided by the measured peak of one
large bf16 matmul on the same device in the same run (also printed against the chip's spec
sheet peak when given with --spec-tflops).

  python scripts/bench_mfu.py [--preset qwen1.5-1.8b] [--batch 32] [--seq 512] [--iters 10]
                              [--peak-n 8192] [--spec-tflops 989] [--json results.jsonl]

Meant for a GPU or TPU; on a CPU it runs (small presets make a quick check of the script) but
the number says little.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxskill
from jaxskill.model.architecture import PRESETS
from bench_forward import forward_flops, matmul_peak
from benchlib import (append_json, parser, peak_rss_mib, random_params, reset_peak_rss,
                      run_info, time_calls)


def main(argv=None):
  ap = parser(__doc__, preset="qwen1.5-1.8b", batch=32, seq=512, iters=10)
  ap.add_argument("--peak-n", type=int, default=8192, help="size of the peak-measuring matmul")
  ap.add_argument("--spec-tflops", type=float, default=None,
                  help="the chip's spec-sheet bf16 peak, for a second MFU figure")
  ap.add_argument("--json", help="append the result as one JSON line to this file")
  args = ap.parse_args(argv)
  config = PRESETS[args.preset]
  model = jaxskill.CausalLM(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size,
                                                      (args.batch, args.seq)), jnp.int32)
  params = random_params(model, ids[:, :8])
  reset_peak_rss()
  forward = jax.jit(lambda params, ids: model.apply({"params": params}, ids))
  t0 = time.perf_counter()
  compiled = forward.lower(params, ids).compile()
  compile_s = time.perf_counter() - t0
  run = lambda: jax.block_until_ready(compiled(params, ids))  # noqa: E731
  logits = run()
  assert logits.shape == (args.batch, args.seq, config.vocab_size)
  assert bool(jnp.isfinite(logits.astype(jnp.float32)).all()), "non-finite logits"
  step_s = time_calls(run, args.iters)
  flops = forward_flops(config, args.batch, args.seq, args.batch * args.seq)
  achieved = flops / step_s / 1e12
  peak = matmul_peak(jnp.bfloat16, n=args.peak_n) / 1e3  # TFLOP/s
  result = dict(preset=args.preset, batch=args.batch, seq=args.seq, dtype="bfloat16",
                step_s=step_s, compile_s=compile_s, tflop_per_step=flops / 1e12,
                achieved_tflops=achieved, matmul_peak_tflops=peak, mfu=achieved / peak,
                device_kind=jax.devices()[0].device_kind, peak_rss_mib=peak_rss_mib(),
                **run_info())
  stats = getattr(jax.devices()[0], "memory_stats", lambda: None)() or {}
  if "peak_bytes_in_use" in stats:
    result["device_peak_gib"] = stats["peak_bytes_in_use"] / 2**30
  if args.spec_tflops:
    result["spec_tflops"] = args.spec_tflops
    result["mfu_vs_spec"] = achieved / args.spec_tflops
  print(f"{result['device_kind']}: {args.preset} bf16 forward {args.batch} x {args.seq}: "
        f"{step_s * 1e3:.1f} ms, {achieved:.1f} TFLOP/s; measured bf16 matmul peak "
        f"{peak:.1f} TFLOP/s; MFU {100 * result['mfu']:.1f}%"
        + (f" ({100 * result['mfu_vs_spec']:.1f}% of the {args.spec_tflops:.0f} TFLOP/s spec)"
           if args.spec_tflops else ""), flush=True)
  if args.json:
    append_json(args.json, result)
  return result


if __name__ == "__main__":
  main()
