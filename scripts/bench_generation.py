"""A tiny generation-task run at skillmix's shapes, with this code and with an older commit:
`jaxskill train` then `jaxskill run` (find, verify, report) of configs/qwen1.5/skillmix_0.5b.yaml
on the same tiny random checkpoint, each version in its own process; wall times and the
training losses side by side.

  python scripts/bench_generation.py [--baseline 754ca24] [--steps 6] [--layers 2]

The checkpoint is laid out like Qwen1.5's (tests/qwen15_like.py): a byte-level BPE trained on
the skillmix texts (inputs about 36 tokens, answers at most 37 + EOS, as Qwen's about 60 and 39),
an embedding and LM head of Qwen1.5's 151936 rows, and a tiny body (--layers, hidden 64), so that
the LM head dominates as it does when the vocabulary is large against the model. Both versions
run the config's own skillmix experiment (its 3 seeds, its metrics, selections and groups) at
the sizes of SIZES; this version also gets find.permutations=0 (the permutation null, which the
older code did not compute: the same work on both sides).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIG = "configs/qwen1.5/skillmix_0.5b.yaml"
SIZES = {"task.n_train": 48, "task.n_dev": 8, "task.n_test": 16, "train.batch_size": 8,
         "train.eval_every": 3, "find.batch_size": 8, "verify.batch_size": 8,
         "verify.k_list": "1,4", "verify.k": 4, "verify.random_draws": 4,
         "data.max_length": 160}


def make_checkpoint(path: Path, layers: int) -> Path:
  """The tiny Qwen1.5-layout checkpoint with a skillmix-trained BPE and a 151936-row vocab."""
  sys.path.insert(0, str(ROOT))
  from jaxskill.tasks import skillmix
  from tests.qwen15_like import make_qwen15_like_checkpoint
  task = skillmix(n_train=600, n_dev=100, n_test=200, seed=0)
  texts = tuple(ex.input + ex.answer for split in task.splits.values() for ex in split)
  return make_qwen15_like_checkpoint(path, layers=layers, hidden=64, intermediate=128, heads=4,
                                     kv_heads=2, bpe_vocab=2000, texts=texts, vocab_size=151936)


def run_version(code: Path, model: Path, out: Path, args, extra: dict) -> dict:
  """`jaxskill train` then `jaxskill run` with the code in `code`: wall times and the losses of
  every seed's training log."""
  overrides = [f"{k}={v}" for k, v in {**SIZES, "train.steps": args.steps, **extra,
                                       "model.path": model, "out_dir": out}.items()]
  env = {**os.environ, "PYTHONPATH": str(code), "TF_CPP_MIN_LOG_LEVEL": "2"}
  times = {}
  for command in ("train", "run"):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jaxskill.cli", command, CONFIG, *overrides,
                           "--no-progress"], cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode:
      raise SystemExit(f"{code}: jaxskill {command} failed:\n{proc.stderr[-3000:]}")
    times[command] = time.perf_counter() - t0
  losses = {}
  for log in sorted(out.glob("*/metrics.jsonl")):
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    losses[log.parent.name] = [r["loss"] for r in rows if "loss" in r]
  return dict(train_s=times["train"], rest_s=times["run"], total_s=sum(times.values()),
              losses=losses)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--baseline", default="754ca24")
  ap.add_argument("--steps", type=int, default=6)
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--json")
  args = ap.parse_args(argv)
  sys.path.insert(0, str(ROOT / "scripts"))
  from benchlib import append_json, run_info
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    model = make_checkpoint(tmp / "model", args.layers)
    old = tmp / "old"
    old.mkdir()
    subprocess.run(f"git -C {ROOT} archive {args.baseline} | tar -x -C {old}", shell=True,
                   check=True)
    before = run_version(old, model, tmp / "runs_old", args, {})
    after = run_version(ROOT, model, tmp / "runs_new", args, {"find.permutations": 0})
  diffs = [abs(a - b) for name in before["losses"] for a, b in
           zip(before["losses"][name], after["losses"].get(name, []))]
  same_count = all(len(before["losses"][n]) == len(after["losses"].get(n, []))
                   for n in before["losses"])
  result = dict(baseline=args.baseline, steps=args.steps, layers=args.layers, sizes=SIZES,
                old={k: v for k, v in before.items() if k != "losses"},
                new={k: v for k, v in after.items() if k != "losses"},
                speedup=before["total_s"] / after["total_s"],
                train_speedup=before["train_s"] / after["train_s"],
                losses_compared=len(diffs), max_loss_diff=float(np.max(diffs)) if diffs else None,
                same_loss_count=same_count, **run_info())
  print(f"\n{CONFIG} on a tiny checkpoint with Qwen1.5's 151936-row vocabulary, "
        f"{args.steps} steps x 3 seeds\n")
  print("| code | train, s | find + verify + report, s | total, s |")
  print("|---|---|---|---|")
  for name, r in ((args.baseline, result["old"]), ("this", result["new"])):
    print(f"| {name} | {r['train_s']:.1f} | {r['rest_s']:.1f} | {r['total_s']:.1f} |")
  print(f"\nspeed-up {result['speedup']:.2f}x (training {result['train_speedup']:.2f}x); "
        f"{len(diffs)} logged losses, max |difference| {result['max_loss_diff']:.2e}")
  if args.json:
    append_json(args.json, result)
  return result


if __name__ == "__main__":
  main()
