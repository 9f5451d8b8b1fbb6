"""Pieces shared by the benchmark scripts: timing, the PyTorch reference model, run metadata."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp


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


def parser(doc: str, *, preset: str, batch: int, seq: int, iters: int) -> argparse.ArgumentParser:
  """The options every model benchmark takes (--preset, --batch, --seq, --iters), with these
  defaults; `doc`'s first line describes it."""
  from jaxskill.model.architecture import PRESETS
  ap = argparse.ArgumentParser(description=doc.splitlines()[0])
  ap.add_argument("--preset", default=preset, choices=sorted(PRESETS))
  ap.add_argument("--batch", type=int, default=batch)
  ap.add_argument("--seq", type=int, default=seq)
  ap.add_argument("--iters", type=int, default=iters)
  return ap


def finish(result: dict, rate: str, json_path: str | None) -> dict:
  """Adds the jaxskill/torch ratio of `rate` (when both ran) and the peak RSS to `result`, prints
  the ratio, and appends `result` to `json_path` if given."""
  if "jaxskill" in result and "torch" in result:
    result["ratio"] = result["jaxskill"][rate] / result["torch"][rate]
    print(f"ratio jaxskill/torch: {result['ratio']:.2f}x")
  result["peak_rss_mib"] = peak_rss_mib()
  if json_path:
    append_json(json_path, result)
  return result


def reset_peak_rss() -> None:
  """Restarts the peak-memory count (Linux: writing 5 to clear_refs resets VmHWM), so that the
  peak read later is that of the benchmarked work with its params, not of building them."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass  # elsewhere the peak covers the whole process


def _status_mib(field: str) -> float | None:
  """A memory field of /proc/self/status (Linux) in MiB, or None where there is none."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) / 1024  # kB
  except OSError:
    pass
  return None


def peak_rss_mib() -> float:
  """This process's peak resident memory since `reset_peak_rss` (or since it started)."""
  peak = _status_mib("VmHWM")
  if peak is not None:
    return peak
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
  """This process's resident memory now (Linux VmRSS; NaN elsewhere)."""
  now = _status_mib("VmRSS")
  return float("nan") if now is None else now


def random_params(model, sample_ids, seed: int = 0):
  """Random params for `model` like HF's initialisation (matrices normal(0, 0.02), norms 1,
  biases 0), made one leaf at a time: one jitted `model.init` of the whole tree holds about
  twice the params in temporaries at once (3.9 GiB peak for the 0.5B shape, against 2.6 GiB)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(seed), sample_ids)["params"]
  paths, tree = jax.tree_util.tree_flatten_with_path(shapes)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(paths))
  leaves = []
  for key, (path, leaf) in zip(keys, paths):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "weight":  # RMSNorm
      leaves.append(jnp.ones(leaf.shape, leaf.dtype))
    elif name == "bias":
      leaves.append(jnp.zeros(leaf.shape, leaf.dtype))
    else:
      leaves.append(jax.jit(lambda k, shape=leaf.shape, dtype=leaf.dtype:
                            (0.02 * jax.random.normal(k, shape)).astype(dtype))(key))
  return jax.tree_util.tree_unflatten(tree, leaves)
