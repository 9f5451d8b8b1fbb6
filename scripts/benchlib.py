"""Pieces shared by the benchmark scripts: timing, the PyTorch reference model, run metadata."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import jax


def time_calls(fn, iters: int) -> float:
  """Median wall time of `iters` calls (the caller warms up first)."""
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def torch_model(config, dtype: str = "float32", seed: int = 0):
  """HF `Qwen2ForCausalLM` (eager attention) with random weights and jaxskill's `config` shape."""
  import torch
  from transformers import Qwen2Config, Qwen2ForCausalLM
  hf_config = Qwen2Config(**{k: v for k, v in config.to_hf_dict().items()
                             if k not in ("architectures", "model_type")},
                          attn_implementation="eager")
  torch.manual_seed(seed)
  return Qwen2ForCausalLM(hf_config).eval().to(getattr(torch, dtype))


def run_info() -> dict:
  return dict(machine=f"{platform.machine()} {os.cpu_count()} cores", jax=jax.__version__,
              device=str(jax.devices()[0]), date=time.strftime("%Y-%m-%d"))


def append_json(path: str, result: dict) -> None:
  """Appends one result as a JSON line (the runs kept for BENCHMARKS.md)."""
  with open(path, "a") as f:
    f.write(json.dumps(result) + "\n")


def peak_rss_mib() -> float:
  """This process's peak resident memory so far (Linux reports KiB)."""
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
