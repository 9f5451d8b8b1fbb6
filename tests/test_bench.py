"""The benchmark scripts' own arithmetic: the FLOP count MFU divides by, against XLA's count of
the compiled program, and the MFU script end to end on a CPU (it is meant for GPUs/TPUs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxskill
from jaxskill.model.architecture import Architecture

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from bench_forward import forward_flops  # noqa: E402


def test_forward_flops_match_xlas_count_of_the_compiled_forward():
  """XLA counts every op of the (fully unrolled) program; ours counts the matmuls, so it must
  be a little below, by the elementwise work (norms, RoPE, softmax, SwiGLU)."""
  c = Architecture(2000, 256, 704, 3, 4, 2, 1e6)  # GQA: 4 query heads, 2 KV heads
  model = jaxskill.CausalLM(c, scan_unroll=c.num_hidden_layers)  # the loop body counted once
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
  ids = jax.ShapeDtypeStruct((2, 64), jnp.int32)
  cost = jax.jit(lambda p, i: model.apply(p, i)).lower(params, ids).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  ratio = forward_flops(c, 2, 64, 2 * 64) / cost["flops"]
  assert 0.98 < ratio <= 1.0, ratio


def test_mfu_script_runs_on_cpu(tmp_path):
  out = tmp_path / "mfu.jsonl"
  proc = subprocess.run(
      [sys.executable, "bench_mfu.py", "--preset", "qwen1.5-0.5b", "--batch", "1", "--seq", "16",
       "--iters", "1", "--peak-n", "256", "--spec-tflops", "1", "--json", str(out)],
      cwd=SCRIPTS, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text().splitlines()[-1])
  from jaxskill.model.architecture import PRESETS
  flops = forward_flops(PRESETS["qwen1.5-0.5b"], 1, 16, 16)
  # The script's float64 arithmetic redone on its JSON values (which round-trip exactly): a
  # few eps64 (2.2e-16) of values ~1e10 FLOPs (~1e-5) and ~1 TFLOP/s or MFU (~1e-15).
  assert abs(r["tflop_per_step"] * 1e12 - flops) < 1
  assert abs(r["achieved_tflops"] - flops / r["step_s"] / 1e12) < 1e-9
  assert abs(r["mfu"] - r["achieved_tflops"] / r["matmul_peak_tflops"]) < 1e-9
  assert 0 < r["mfu"] and r["mfu_vs_spec"] == r["achieved_tflops"] / 1.0
  assert "MFU" in proc.stdout
