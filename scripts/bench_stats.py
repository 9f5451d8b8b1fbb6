"""Discovery statistics: (1) their time on top of the capture forward pass, (2) peak memory as
the number of examples grows tenfold (it must not grow: the data is streamed), (3) the time and
memory of each permutation of the permutation null.

  python scripts/bench_stats.py overhead [--preset qwen1.5-0.5b] [--batch 8] [--seq 64]
                                        [--merge-every 16]
  python scripts/bench_stats.py overhead-torch [...]   # the PyTorch reference of the same
  python scripts/bench_stats.py memory [--preset ...] [--examples 64]   # runs n and 10n
  python scripts/bench_stats.py permutations [--preset ...] [--permutations 0,5,20]
                                            [--merge-every 16]   # one subprocess per P
  python scripts/bench_stats.py fit [--preset qwen2.5-0.5b] [--prompt 16] [--metrics 5]
      [--examples 192] [--batch 32] [--permutations 0,5,20]   # find_memory's estimate against
                                                               # the measured peak, per P

Random weights and random token ids (no download); infix layout with an 8-vector prompt; sites
prompt + last_input + answer; the 7 built-in metrics of a 2-label classification task.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxskill
from jaxskill.model import capture
from jaxskill.model.architecture import PRESETS
from jaxskill.runtime.runner import Runner
from jaxskill.runtime.sharding import make_mesh
from jaxskill.stats import streaming
from jaxskill.tasks import encode as data_lib
from benchlib import (peak_rss_mib, random_params, reset_peak_rss, rss_mib, run_info,
                      time_calls)

PROMPT = 8
SITES = ("prompt", "last_input", "answer")


def synthetic(n, seq, vocab, seed=0, prompt=PROMPT) -> data_lib.Encoded:
  rng = np.random.default_rng(seed)
  width = seq - prompt
  index = np.full((n, seq), -1, np.int32)
  index[:, width:] = np.arange(prompt)
  z = np.zeros((n, seq), np.int32)
  col = lambda v: np.full(n, v, np.int32)  # noqa: E731
  return data_lib.Encoded(
      input_ids=rng.integers(0, vocab, (n, seq)).astype(np.int32), attention_mask=z + 1,
      prompt_index=index, answer_pos=col(seq - 1), label=rng.integers(0, 2, n).astype(np.int32),
      targets=z, loss_mask=z, input_end=col(width), prompt_start=col(width), metadata={},
      n_truncated=0)


def setup(preset, prompt_length=PROMPT):
  config = PRESETS[preset]
  model = jaxskill.CausalLM(config)
  params = random_params(model, jnp.zeros((1, 8), jnp.int32))
  prompt = {"embeddings": 0.02 * jax.random.normal(jax.random.PRNGKey(1),
                                                   (prompt_length, config.hidden_size))}
  return config, model, params, prompt


def overhead(args):
  """Per-batch time of discovery's real loop (`streaming.correlate`: forward, statistics, device
  accumulation, host float64 merges every `--merge-every` batches) against the capture forward
  alone over the same batches. correlate is run over B and 2B batches, B = merge_every, and the
  difference is taken: its compile and first-batch costs cancel and exactly one host merge
  stays in (each run twice, the faster kept). The forward is one jitted function, compiled before timing, dispatched B times
  and waited for once (as correlate does)."""
  config, model, params, prompt = setup(args.preset)
  nb = args.merge_every
  enc = synthetic(2 * nb * args.batch, args.seq, config.vocab_size)
  verbalizer = jnp.array([3, 5])
  mesh = make_mesh(1)

  def run_correlate(n_batches):
    part = synthetic(n_batches * args.batch, args.seq, config.vocab_size)
    t0 = time.perf_counter()
    r, st = streaming.correlate(probe, params, prompt, part, runner=Runner(mesh, args.batch),
                                streaming=streaming.Streaming(merge_every=args.merge_every))
    return time.perf_counter() - t0, r

  probe = capture.Probe(model, "classification", verbalizer, SITES, PROMPT,
                        capture.BUILTIN_METRICS)
  step = jax.jit(probe)
  whole = enc.batch()
  batches = [jax.tree.map(jnp.asarray, whole.rows(np.arange(i * args.batch, (i + 1) * args.batch))
                          ).replace(valid=jnp.ones(args.batch)) for i in range(nb)]
  acts = jax.block_until_ready(step(prompt, params, batches[0]))[0]

  def forward_all():
    jax.block_until_ready([step(prompt, params, b) for b in batches])

  t_forward = time_calls(forward_all, args.iters) / nb
  # Twice each, alternating, the faster kept: compile time varies by a second or more.
  t_short, t_long = np.inf, np.inf
  for _ in range(2):
    t_short = min(t_short, run_correlate(nb)[0])
    t, r = run_correlate(2 * nb)
    t_long = min(t_long, t)
  t_stats = (t_long - t_short) / nb
  result = dict(mode="overhead", preset=args.preset, batch=args.batch, seq=args.seq,
                batches=nb, merge_every=args.merge_every, features=int(np.prod(acts.shape[1:])),
                metrics=len(capture.BUILTIN_METRICS), forward_s=t_forward,
                forward_plus_stats_s=t_stats, overhead=(t_stats - t_forward) / t_forward,
                finite_r=float(np.isfinite(r).mean()), **run_info())
  print(json.dumps(result))
  return result


def memory_one(args):
  config, model, params, prompt = setup(args.preset)
  enc = synthetic(args.examples, args.seq, config.vocab_size)
  t0 = time.perf_counter()
  probe = capture.Probe(model, "classification", jnp.array([3, 5]), SITES, PROMPT,
                        capture.BUILTIN_METRICS)
  r, st = streaming.correlate(probe, params, prompt, enc, runner=Runner(make_mesh(1), args.batch))
  peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps(dict(examples=args.examples, peak_rss_mib=peak_mib,
                        seconds=time.perf_counter() - t0, n=int(st["n"][0]))))


def memory(args):
  rows = []
  for n in (args.examples, 10 * args.examples):
    out = subprocess.run([sys.executable, __file__, "memory-one", "--preset", args.preset,
                          "--batch", str(args.batch), "--seq", str(args.seq), "--examples",
                          str(n)], capture_output=True, text=True, check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  result = dict(mode="memory", preset=args.preset, batch=args.batch, seq=args.seq, runs=rows,
                growth=rows[1]["peak_rss_mib"] / rows[0]["peak_rss_mib"], **run_info())
  print(json.dumps(result))
  return result


def permutations_one(args):
  """One P (`--permutations`, a single number), in a fresh persistent compilation cache (set
  before the first compile: jax checks it once) that `permutation_run`'s later runs load from."""
  with tempfile.TemporaryDirectory() as cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    permutation_run(args, int(args.permutations))


def permutation_run(args, p):
  """streaming.correlate with p permutations over 2 batches (compiles), then over B and 2B
  (B = merge_every; from the cache, so their difference over B is the time per batch with one
  host merge per B). Peaks after the params are built: while streaming (read as
  `stats.finalize` starts) and overall (finalize's float64 temporaries included)."""
  config, model, params, prompt = setup(args.preset)
  probe = capture.Probe(model, "classification", jnp.array([3, 5]), SITES, PROMPT,
                        capture.BUILTIN_METRICS)
  runner, nb = Runner(make_mesh(1), args.batch), args.merge_every
  base = rss_mib()
  reset_peak_rss()
  stream_peaks, finalize = [], streaming.stats.finalize

  def finalize_recorded(st):
    stream_peaks.append(peak_rss_mib())
    return finalize(st)

  def run(n_batches):
    part = synthetic(n_batches * args.batch, args.seq, config.vocab_size)
    t0 = time.perf_counter()
    r, st = streaming.correlate(probe, params, prompt, part, runner=runner,
                                streaming=streaming.Streaming(merge_every=nb, permutations=p))
    return time.perf_counter() - t0, r.shape, st["null_r"].shape

  streaming.stats.finalize = finalize_recorded
  try:
    t_warm, shape, null_shape = run(2)
    (t_short, _, _), (t_long, _, _) = run(nb), run(2 * nb)
  finally:
    streaming.stats.finalize = finalize
  per_batch = (t_long - t_short) / nb
  print(json.dumps(dict(
      permutations=p, metrics=shape[0], features=int(np.prod(shape[1:])),
      null_shape=list(null_shape), seconds_warm=t_warm, seconds_short=t_short,
      seconds_long=t_long, seconds_per_batch=per_batch, fixed_s=t_warm - 2 * per_batch,
      base_rss_mib=base, peak_stream_mib=max(stream_peaks), peak_rss_mib=peak_rss_mib())))


def permutations(args):
  """Each P of `--permutations` in its own subprocess (`permutations_one`), then the increments
  per permutation from the previous P: time per batch (as % of the first P's), streaming and
  overall peak (MiB), beside README's estimate of 5 x 8 bytes x m x f host per permutation."""
  rows = []
  for p in (int(x) for x in args.permutations.split(",")):
    out = subprocess.run([sys.executable, __file__, "permutations-one", "--permutations", str(p),
                          "--preset", args.preset, "--batch", str(args.batch), "--seq",
                          str(args.seq), "--merge-every", str(args.merge_every)],
                         capture_output=True, text=True, check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  zero = rows[0]
  m, f = zero["metrics"], zero["features"]
  estimate = 5 * 8 * m * f / 2**20
  print(f"m = {m} metrics, f = {f} features; README estimate 5 x 8 x m x f = {estimate:.1f} MiB "
        f"host per permutation (+ 3 x 4 x m x f = {12 * m * f / 2**20:.1f} MiB device)")
  print("Per permutation: from the row above (time as % of the first row's s / batch).")
  print("| P | s / batch | fixed (compile, state, finalize) | peak streaming | peak overall "
        "| time / perm | MiB / perm streaming | MiB / perm overall |")
  print("|---|---|---|---|---|---|---|---|")
  for prev, row in zip([None, *rows], rows):
    p = row["permutations"] - prev["permutations"] if prev else 0
    inc = lambda key: (row[key] - prev[key]) / p if p else float("nan")  # noqa: E731
    row.update(time_pct_per_perm=100 * inc("seconds_per_batch") / zero["seconds_per_batch"],
               mib_per_perm_stream=inc("peak_stream_mib"), mib_per_perm=inc("peak_rss_mib"))
    print(f"| {row['permutations']} | {row['seconds_per_batch']:.3f} s | "
          f"{row['fixed_s']:.1f} s | {row['peak_stream_mib']:.0f} MiB | "
          f"{row['peak_rss_mib']:.0f} MiB | {row['time_pct_per_perm']:+.2f}% | "
          f"{row['mib_per_perm_stream']:.1f} | {row['mib_per_perm']:.1f} |")
  result = dict(mode="permutations", preset=args.preset, batch=args.batch, seq=args.seq,
                merge_every=args.merge_every, metrics=m, features=f,
                estimate_host_mib_per_perm=estimate, runs=rows, **run_info())
  print(json.dumps(result))
  return result


def overhead_torch(args):
  """The PyTorch reference of `overhead`: HF forward with down_proj hooks gathering the same
  number of positions, then the same sufficient statistics (sums, centred cross-products with
  the 7 metrics) in torch, float32, against the forward with hooks alone."""
  import torch
  from benchlib import torch_model
  torch.set_num_threads(os.cpu_count())
  config = PRESETS[args.preset]
  model = torch_model(config)
  k = PROMPT + 2
  ids = torch.randint(0, config.vocab_size, (args.batch, args.seq))
  pos = torch.arange(args.seq - k, args.seq)
  captured = []
  for layer in model.model.layers:
    layer.mlp.down_proj.register_forward_hook(
        lambda mod, inp, out: captured.append(inp[0][:, pos]))
  y = torch.randn(args.batch, len(capture.BUILTIN_METRICS))

  def forward():
    captured.clear()
    with torch.inference_mode():
      model(input_ids=ids, logits_to_keep=1)
      return torch.stack(captured, 1).reshape(args.batch, -1)

  def forward_stats():
    with torch.inference_mode():
      x = forward()
      xc, yc = x - x.mean(0), y - y.mean(0)
      return x.sum(0), (xc * xc).sum(0), yc.T @ xc, y.sum(0), (yc * yc).sum(0)

  forward_stats()
  t_forward = time_calls(forward, args.iters)
  t_fused = time_calls(forward_stats, args.iters)
  result = dict(mode="overhead-torch", preset=args.preset, batch=args.batch, seq=args.seq,
                forward_s=t_forward, forward_plus_stats_s=t_fused,
                overhead=(t_fused - t_forward) / t_forward, torch=torch.__version__, **run_info())
  print(json.dumps(result))
  return result


def fit_one(args):
  """One P: streaming.correlate over --examples with a --prompt-vector prompt and the first
  --metrics built-in metrics; the whole process's peak resident memory (params, compiles and
  the null's float32 r included) beside `memory.peak_bytes` for the same shapes."""
  from jaxskill.runtime import memory
  p = int(args.permutations)
  config, model, params, prompt = setup(args.preset, args.prompt)
  metrics = capture.BUILTIN_METRICS[:args.metrics]
  probe = capture.Probe(model, "classification", jnp.array([3, 5]), SITES, args.prompt, metrics)
  enc = synthetic(args.examples, args.seq, config.vocab_size, prompt=args.prompt)
  t0 = time.perf_counter()
  r, st = streaming.correlate(
      probe, params, prompt, enc, runner=Runner(make_mesh(1), args.batch),
      streaming=streaming.Streaming(merge_every=args.merge_every, permutations=p))
  seconds = time.perf_counter() - t0
  features = int(np.prod(r.shape[1:]))
  need = memory.peak_bytes(
      metrics=len(metrics), features=features, permutations=p, seeds=1,
      param_bytes=memory.param_bytes(params), batch_size=args.batch)
  print(json.dumps(dict(permutations=p, metrics=len(metrics), features=features,
                        null_shape=list(st["null_r"].shape), seconds=seconds,
                        peak_rss_mib=peak_rss_mib(), estimate_mib=need.total() / 2**20)))


def fit(args):
  """`fit_one` for each P of --permutations, each in its own process (a fresh peak)."""
  rows = []
  for p in (int(x) for x in args.permutations.split(",")):
    out = subprocess.run([sys.executable, __file__, "fit-one", "--permutations", str(p),
                          *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                            ("preset", "batch", "seq", "examples", "prompt", "metrics",
                             "merge_every"))],
                         capture_output=True, text=True, check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  print(f"{args.preset}: m = {rows[0]['metrics']} metrics, f = {rows[0]['features']} features, "
        f"{args.examples} examples in batches of {args.batch}, seq {args.seq}")
  print("| P | peak RSS (measured) | find_memory estimate | estimate / measured | time |")
  print("|---|---|---|---|---|")
  for row in rows:
    print(f"| {row['permutations']} | {row['peak_rss_mib']:.0f} MiB | {row['estimate_mib']:.0f} "
          f"MiB | {row['estimate_mib'] / row['peak_rss_mib']:.2f} | {row['seconds']:.0f} s |")
  result = dict(mode="fit", args=vars(args), runs=rows, **run_info())
  print(json.dumps(result))
  return result


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("mode", choices=["overhead", "overhead-torch", "memory", "memory-one",
                                   "permutations", "permutations-one", "fit", "fit-one"])
  ap.add_argument("--preset", default="qwen1.5-0.5b", choices=sorted(PRESETS))
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=64)
  ap.add_argument("--examples", type=int, default=64)
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--merge-every", type=int, default=16,
                  help="overhead, permutations: find.merge_every")
  ap.add_argument("--permutations", default="0,5,20",
                  help="permutations: the P to run, comma-separated (the first is the base)")
  ap.add_argument("--prompt", type=int, default=8, help="fit: prompt vectors (sites: all)")
  ap.add_argument("--metrics", type=int, default=7, help="fit: the first N built-in metrics")
  args = ap.parse_args(argv)
  return {"fit": fit, "fit-one": fit_one,"overhead": overhead, "overhead-torch": overhead_torch, "memory": memory,
          "memory-one": memory_one, "permutations": permutations,
          "permutations-one": permutations_one}[args.mode](args)


if __name__ == "__main__":
  main()
