"""The benchmark suite: one table of jaxskill against the PyTorch HF reference, same machine, same
run. Each side of each row runs in its own process, so that its peak memory is its own.

Rows (Qwen1.5-0.5B-shaped model, random weights, float32):
  forward + capture   tokens/s; logits at the captured positions on both sides (same work)
  prompt training     steps/s of one soft-prompt step (jaxskill runs the input columns once
                      without gradients; PyTorch differentiates the whole sequence)
  verify stage        s, `bench_verify.py shapes`: batched counterfactuals (and one whole
                      forward per edit) against HF with down_proj pre-hooks, one per edit
  generation run      s of a tiny skillmix-shaped run (vocabulary 151936) against an older
                      commit, `bench_generation.py` (where the git history is there)
  statistics          forward + capture + correlation statistics per batch, s (jaxskill: the
                      real discovery loop, host merges every 4 batches); and the share the
                      statistics add on top of that side's forward
Columns: jaxskill, PyTorch, the speed ratio (jaxskill / PyTorch, > 1 is faster), jaxskill's
compile time against PyTorch's first call, and each side's peak resident memory while it
compiles / warms up and runs the timed work (params included; the count is restarted once the
random params exist, so building them does not count: `benchlib.reset_peak_rss`).
A GPU row (bf16 MFU on a 1.8B-shaped model, `bench_mfu.py`) runs where jax's default backend
is a GPU or TPU; on a CPU the row says so.

  python scripts/bench.py [--preset qwen1.5-0.5b] [--iters 5] [--json results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _default_backend() -> str:
  """jax's default backend, asked in a child process: initialising it here would take the
  accelerator's memory away from the children (jax preallocates on GPUs)."""
  out = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                       capture_output=True, text=True)
  return out.stdout.strip() or "cpu"


def _child(script: str, *args: str, cpu: bool = True) -> dict:
  """Runs a bench script in a fresh process; its last JSON result. `cpu`: jax on the CPU, as
  the PyTorch reference (a CPU wheel) is, even where an accelerator exists."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"} if cpu else None
  with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "r.jsonl"
    extra = ["--json", str(out)] if script != "bench_stats.py" else []
    proc = subprocess.run([sys.executable, str(HERE / script), *args, *extra], cwd=HERE,
                          capture_output=True, text=True, env=env)
    if proc.returncode:
      raise SystemExit(f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    if script == "bench_stats.py":  # prints its result as the last JSON line
      line = [x for x in proc.stdout.splitlines() if x.startswith("{")][-1]
      return json.loads(line)
    return json.loads(out.read_text().splitlines()[-1])


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="qwen1.5-0.5b")
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--json", help="append the table's rows as JSON lines to this file")
  args = ap.parse_args(argv)
  common = ["--preset", args.preset, "--iters", str(args.iters)]
  rows = []

  fwd = ["--batch", "4", "--seq", "128", "--capture", "4", "--logits", "captured", *common]
  j, t = _child("bench_forward.py", *fwd, "--skip-torch"), _child("bench_forward.py", *fwd,
                                                                   "--skip-jax")
  rows.append(dict(row="forward + capture (4 x 128 tokens), tokens/s",
                   jax=j["jaxskill"]["tokens_per_s"], torch=t["torch"]["tokens_per_s"],
                   ratio=j["jaxskill"]["tokens_per_s"] / t["torch"]["tokens_per_s"],
                   jax_compile_s=j["jaxskill"]["compile_s"],
                   torch_first_call_s=t["torch"]["first_call_s"],
                   jax_peak_mib=j["peak_rss_mib"], torch_peak_mib=t["peak_rss_mib"]))

  for seq in (64, 128):
    tr = ["--batch", "4", "--seq", str(seq), "--prompt", "8", *common]
    j, t = _child("bench_train.py", *tr, "--skip-torch"), _child("bench_train.py", *tr,
                                                                  "--skip-jax")
    rows.append(dict(row=f"prompt training step (4 x {seq} tokens), steps/s",
                     jax=j["jaxskill"]["steps_per_s"], torch=t["torch"]["steps_per_s"],
                     ratio=j["jaxskill"]["steps_per_s"] / t["torch"]["steps_per_s"],
                     jax_compile_s=j["jaxskill"]["compile_s"],
                     torch_first_call_s=t["torch"]["first_call_s"],
                     jax_peak_mib=j["peak_rss_mib"], torch_peak_mib=t["peak_rss_mib"]))

  st = ["--preset", args.preset, "--iters", str(args.iters)]
  # merge_every 4 (find's default is 16): a host merge every 4 batches, the costlier setting.
  j = _child("bench_stats.py", "overhead", *st, "--merge-every", "4")
  t = _child("bench_stats.py", "overhead-torch", *st)
  j_total = j["forward_plus_stats_s"]
  rows.append(dict(row="capture + statistics (8 x 64 tokens), s per batch",
                   jax=j_total, torch=t["forward_plus_stats_s"],
                   ratio=t["forward_plus_stats_s"] / j_total,
                   jax_overhead=j["overhead"], torch_overhead=t["overhead"]))

  # The verify stage (batched counterfactuals against one forward per edit and HF with hooks),
  # and a tiny skillmix-shaped run against an older commit (needs the git history).
  v = _child("bench_verify.py", "shapes", "--preset", args.preset, "--sample", "6")["sides"]
  rows.append(dict(row=f"verify stage, {args.preset} shapes, 64 x 32 tokens, K 1,10,100 x 21 "
                   "edits, zero + mean, s", jax=v["batched"]["stage_s"],
                   torch=v["torch"]["stage_s"], ratio=v["torch"]["stage_s"] /
                   v["batched"]["stage_s"], one_per_pass=v["one-per-pass"]["stage_s"],
                   jax_peak_mib=v["batched"]["peak_rss_mib"],
                   torch_peak_mib=v["torch"]["peak_rss_mib"]))
  if (HERE.parent / ".git").exists():
    g = _child("bench_generation.py")
    rows.append(dict(row=f"tiny skillmix-shaped run (vocab 151936), s: this vs {g['baseline']}",
                     jax=g["new"]["total_s"], old=g["old"]["total_s"], ratio=g["speedup"],
                     max_loss_diff=g["max_loss_diff"]))

  mfu = None
  if _default_backend() != "cpu":  # the accelerator row: jaxskill only (bench_mfu.py)
    mfu = _child("bench_mfu.py", "--iters", str(max(args.iters, 10)), cpu=False)
  info = {k: j[k] for k in ("machine", "device", "date")}
  info["jax_version"] = j["jax"]  # not "jax": that key holds each row's jaxskill number
  print(f"\n{info['date']}, {info['machine']}, jax {info['jax_version']} on {info['device']}, "
        f"torch {t.get('torch', '')}, preset {args.preset}\n")
  print("| row | jaxskill | PyTorch | ratio | compile (jax) / first call (torch), s | "
        "peak RSS MiB jax / torch |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    if "one_per_pass" in r:
      print(f"| {r['row']} | {r['jax']:.1f} (one edit per pass: {r['one_per_pass']:.1f}) | "
            f"{r['torch']:.1f} | {r['ratio']:.2f}x | | "
            f"{r['jax_peak_mib']:.0f} / {r['torch_peak_mib']:.0f} |")
    elif "old" in r:
      print(f"| {r['row']} | {r['jax']:.1f} | (older jaxskill: {r['old']:.1f}) | "
            f"{r['ratio']:.2f}x | losses within {r['max_loss_diff']:.1e} | |")
    elif "jax_overhead" in r:
      extra = (f"statistics add {100 * r['jax_overhead']:.1f}% (jax) / "
               f"{100 * r['torch_overhead']:.1f}% (torch) to the forward")
      print(f"| {r['row']} | {r['jax']:.3f} | {r['torch']:.3f} | {r['ratio']:.2f}x | "
            f"{extra} | |")
    else:
      print(f"| {r['row']} | {r['jax']:.2f} | {r['torch']:.2f} | {r['ratio']:.2f}x | "
            f"{r['jax_compile_s']:.1f} / {r['torch_first_call_s']:.1f} | "
            f"{r['jax_peak_mib']:.0f} / {r['torch_peak_mib']:.0f} |")
  if mfu is None:
    print("| bf16 MFU, 1.8B-shaped, 32 x 512 | needs a GPU or TPU (none here) | | | | |")
  else:
    print(f"| bf16 MFU, 1.8B-shaped, 32 x 512, {mfu['device_kind']} | "
          f"{100 * mfu['mfu']:.1f}% ({mfu['achieved_tflops']:.1f} of a measured "
          f"{mfu['matmul_peak_tflops']:.1f} TFLOP/s) | | | {mfu['compile_s']:.1f} / | "
          f"{mfu['peak_rss_mib']:.0f} host, {mfu.get('device_peak_gib', float('nan')):.1f} GiB "
          "device / |")
  if args.json:
    with open(args.json, "a") as f:
      for r in rows:
        f.write(json.dumps({**r, **info, "preset": args.preset}) + "\n")
      if mfu is not None:
        f.write(json.dumps({"row": "bf16 MFU, 1.8B-shaped, 32 x 512", **mfu}) + "\n")
  return rows


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
