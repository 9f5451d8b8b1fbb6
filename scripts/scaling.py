"""The README's scaling table: for each Qwen1.5 size, the memory it needs, a mesh for TPU v4-8,
v5e-16 and 8xH100, and the FLOPs and expected time of the arithmetic experiment
(configs/qwen1.5/arithmetic_*.yaml: 3 prompt seeds x 1000 steps of 32 x 64 tokens, discovery
over the 1000 train examples, 2022 predictivity on 200 dev examples, verification).

Param counts are exact (from the model's shapes). FLOPs count matmuls only (2 per multiply-add,
2N per token forward, 4N more per differentiated token backward; with the infix split only the
prompt and answer columns are differentiated). Times divide the FLOPs by the chips' bf16 peak
times an ASSUMED utilisation (--mfu, default 0.35): no accelerator was measured here; the
CPU's measured rate (--cpu-gflops, from BENCHMARKS.md) gives the one measured anchor.

  python scripts/scaling.py [--mfu 0.35] [--cpu-gflops 160]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from jaxskill.model.architecture import PRESETS
from jaxskill.model.checkpoint import abstract_params

# chips, bf16 peak TFLOP/s per chip, memory GiB per chip (public spec sheets)
HARDWARE = {"TPU v4-8": (4, 275, 32), "TPU v5e-16": (16, 197, 16), "8x H100": (8, 989, 80)}
SEEDS, STEPS, BATCH, T, PROMPT, ANSWER = 3, 1000, 32, 64, 16, 1
N_TRAIN, N_DEV, N_TEST = 1000, 200, 500
EVAL_EVERY = 100
VERIFY_JOBS = 1 + 2 * 5 * 3 * 6  # baseline + 2 selections x 5 K x 3 modes x (top + 5 random)


def experiment_flops(n: float) -> float:
  train_tok = SEEDS * STEPS * BATCH * T
  diff_tok = SEEDS * STEPS * BATCH * (PROMPT + ANSWER)
  forward_tok = (SEEDS * (STEPS // EVAL_EVERY + 1) * N_DEV * T  # dev evaluations
                 + SEEDS * (N_TRAIN + N_DEV + N_TRAIN) * T  # find, predictivity, report capture
                 + N_TRAIN * T + VERIFY_JOBS * N_TEST * T)  # train mean, verification
  return 2 * n * (train_tok + forward_tok) + 4 * n * diff_tok


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--mfu", type=float, default=0.35)
  ap.add_argument("--cpu-gflops", type=float, default=160.0)
  args = ap.parse_args(argv)
  print("| size | params | bf16 / f32 | statistics: device f32 (split over the model axis) / "
        "host f64 | "
        + " | ".join(f"{h}: mesh (data x model), time" for h in HARDWARE)
        + " | PFLOP | 2-core CPU |")
  print("|---|---|---|---|" + "---|" * len(HARDWARE) + "---|---|")
  for name, c in PRESETS.items():
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_params(c)))
    features = c.num_hidden_layers * (PROMPT + 2) * c.intermediate_size
    stats_gb = 3 * 5 * features * 8 / 1e9  # mean_x, m2_x, c_xy per (metric, feature), 5 metrics
    # Discovery's float32 accumulator and the one being merged on the host, split over the
    # model axis (divided by the model-parallel size below).
    device_stats_gib = 2 * 3 * 5 * features * 4 / 2**30
    flops = experiment_flops(n)
    cells = []
    for chips, tflops, gib in HARDWARE.values():
      need = 2 * n / 2**30  # bf16 params, GiB
      model = 1
      while need / model > 0.5 * gib and model < chips:  # params at most half of a chip
        model *= 2
      per_chip = (need + device_stats_gib) / model
      if per_chip > 0.75 * gib:  # no room left for activations
        cells.append(f"does not fit ({per_chip:.1f} of {gib} GiB per chip before activations; "
                     "at most 75%)")
        continue
      hours = flops / (chips * tflops * 1e12 * args.mfu) / 3600
      tight = f" (tight: {per_chip:.0f} of {gib} GiB)" if per_chip > 0.5 * gib else ""
      cells.append(f"{chips // model} x {model}, {max(hours * 60, 1):.0f} min{tight}")
    cpu_days = flops / (args.cpu_gflops * 1e9) / 86400
    print(f"| {name} | {n / 1e9:.2f} B | {2 * n / 2**30:.1f} / {4 * n / 2**30:.1f} GiB | "
          f"{device_stats_gib:.2f} GiB / {stats_gb:.2f} GB | " + " | ".join(cells)
          + f" | {flops / 1e15:.0f} | {cpu_days:.0f} days |")


if __name__ == "__main__":
  main()
