"""How much memory find will need, and what to do when it would not fit (`find.fit_memory`).

The statistics of `find_stage.correlate` are per (metric, feature): m metrics, f = layers x
positions x neurons features, P permutations. Counted in bytes (`peak_bytes`):
  host, float64:  mean_x, m2_x, c_xy `[m, f]` + c_null `[P, m, f]` + merge scratch `[2, m, f]`
  host, float32:  the accumulator fetched for a merge `[(3 + P), m, f]`; the null r `[P, m, f]`
                  of each seed run, kept until the outputs are written
  device, float32: the accumulator, the fresh one that replaces it at a merge and the batch's
                  own statistics inside the fused step: 3 x `[(3 + P), m, f]`
  device, model:  the params, and the batch's activations and their centred copies (4 x b f)
  process:        what an imported jax, numpy and the tokenizer take (`PROCESS_BYTES`)
On a CPU backend host and device are one memory; on an accelerator each side is compared with
its own limit. The count is an upper bound of what the streaming pass holds at once
(BENCHMARKS.md compares it with measured peaks at 0.5B shapes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Callable

import jax
import numpy as np

log = logging.getLogger("jaxskill.runtime.memory")

PROCESS_BYTES = 1 << 30  # jax, numpy, transformers' tokenizer and the compiled programs
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclasses.dataclass(frozen=True)
class Need:
  """Bytes find's streaming pass holds at its peak, split by where they live."""
  host: int
  device: int

  def total(self) -> int:
    return self.host + self.device


def peak_bytes(*, metrics: int, features: int, permutations: int, seeds: int, param_bytes: int,
               batch_size: int) -> Need:
  """The count of the module docstring for m metrics, f features, P permutations, `seeds`
  seed runs (each keeps its null r), params of `param_bytes` and find.batch_size rows."""
  mf, rows = metrics * features, 3 + permutations
  host = 8 * (rows + 2) * mf + 4 * rows * mf + 4 * permutations * mf * max(seeds, 1)
  device = 3 * 4 * rows * mf + param_bytes + 4 * 4 * batch_size * features
  return Need(host=host + PROCESS_BYTES, device=device)


def parse_bytes(text: str, source: str) -> int:
  """"24G", "512M", "1.5g", "1000000" -> bytes (binary units)."""
  match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", text.lower())
  if not match:
    raise ValueError(f"{source}={text!r}: expected a size such as 24G, 512M or 1000000")
  return int(float(match.group(1)) * _UNITS[match.group(2)])


def available_bytes() -> tuple[int, int | None, str]:
  """(host bytes free for this process, device bytes free or None on a CPU backend, where the
  host figure came from). JAXSKILL_MEMORY_AVAILABLE overrides the host figure (and on a CPU
  backend the only one), e.g. for a run that must leave room for other work."""
  env = os.environ.get("JAXSKILL_MEMORY_AVAILABLE")
  if env:
    host, source = parse_bytes(env, "JAXSKILL_MEMORY_AVAILABLE"), "JAXSKILL_MEMORY_AVAILABLE"
  else:
    host, source = _host_available()
  device = None
  if jax.default_backend() != "cpu":
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
      device = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  return host, device, source


def _host_available() -> tuple[int, str]:
  """MemAvailable of /proc/meminfo, or the cgroup's limit less its use where that is lower."""
  best, source = None, "the machine"
  try:
    for line in Path("/proc/meminfo").read_text().splitlines():
      if line.startswith("MemAvailable:"):
        best, source = int(line.split()[1]) * 1024, "/proc/meminfo MemAvailable"
  except OSError:
    pass
  for limit, used in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                      ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                       "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
    try:
      text = Path(limit).read_text().strip()
      if text != "max" and int(text) < (1 << 60):
        free = int(text) - int(Path(used).read_text().strip())
        if best is None or free < best:
          best, source = free, f"the cgroup limit ({limit})"
      break
    except (OSError, ValueError):
      continue
  if best is None:  # not Linux: whatever the OS reports as physical memory
    best = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return best, source


def fits(need: Need, host: int, device: int | None) -> bool:
  """Whether `need` fits: host + device in `host` on a CPU backend (device None)."""
  if device is None:
    return need.total() <= host
  return need.host <= host and need.device <= device


def largest_fitting(fn, permutations: int, host: int, device: int | None) -> int | None:
  """The largest P <= `permutations` for which `fits(fn(P), ...)`, or None if not even P = 0.
  By bisection: the peak grows with P (find.permutations=1e8 took minutes one P at a time)."""
  if not fits(fn(0), host, device):
    return None
  lo, hi = 0, permutations  # fits(lo); the answer is in [lo, hi]
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if fits(fn(mid), host, device):
      lo = mid
    else:
      hi = mid - 1
  return lo


def gib(n: int) -> str:
  return f"{n / 2**30:.1f} GiB"


def param_bytes(abstract: dict) -> int:
  """Bytes of a tree of shape-dtype structs (`model.checkpoint.abstract_params`)."""
  return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize
                 for a in jax.tree.leaves(abstract)))


def estimate(config) -> tuple[Callable[[int], Need], int]:
  """(P -> `peak_bytes` of `config`'s find with P permutations, its f features). Reads only
  config.json and the task."""
  from jaxskill.model import capture
  from jaxskill.model.architecture import Architecture
  from jaxskill.model.checkpoint import abstract_params, resolve_model_dir
  from jaxskill.runtime.context import model_dtype
  fc = config.find
  model = Architecture.from_json_file(resolve_model_dir(config.model.path) / "config.json",
                                     log_unread=False)
  positions = capture.site_positions(fc.sites, config.prompt.length, config.prompt.placement)
  features = len(positions) * model.num_neurons  # l k i
  dtype = model_dtype(config)
  shape = dict(metrics=_metric_count(config), features=features, seeds=len(fc.seeds),
               param_bytes=param_bytes(abstract_params(model, dtype)),
               batch_size=fc.batch_size)
  return (lambda p: peak_bytes(**shape, permutations=p)), features


def fit(config):
  """`config` itself when find's estimated peak fits the memory available, else (with
  find.fit_memory=lower) `config` with find.permutations lowered to the most that fit; raises
  RunConfigError (find.fit_memory=refuse, or when not even P = 0 fits). Reads only config.json
  and the task, so it runs before the pipeline removes any output."""
  from jaxskill.config import RunConfigError
  fc = config.find
  need_at, features = estimate(config)
  host, device, source = available_bytes()
  if fits(need_at(fc.permutations), host, device):
    return config
  best = largest_fitting(need_at, fc.permutations, host, device)
  what = (f"find needs about {gib(need_at(fc.permutations).total())} with "
          f"find.permutations={fc.permutations} ({features} features; jaxskill.runtime.memory), "
          f"{source} gives {gib(host)}"
          + (f" and the device {gib(device)}" if device is not None else ""))
  if best is None:
    raise RunConfigError(f"{what}; even find.permutations=0 does not fit: lower find.sites "
                         "or find.metrics, or use a machine with more memory")
  if fc.fit_memory == "refuse":
    raise RunConfigError(f"{what}; find.permutations={best} fits (set it, or "
                         "find.fit_memory=lower to have it chosen)")
  log.warning("%s: lowering find.permutations to %d (find.fit_memory=lower)", what, best)
  return dataclasses.replace(config, find=dataclasses.replace(fc, permutations=best))


def _metric_count(config) -> int:
  """m: find.metrics, or at most every built-in metric, metadata column and custom metric."""
  from jaxskill.model import capture
  from jaxskill.tasks import build_task
  fc = config.find
  if fc.metrics:
    return len(fc.metrics)
  task = build_task(config.task)
  examples = task.splits.get(fc.split) or ()
  keys = {k for ex in examples[:1000] for k in ex.metadata}
  return len(capture.BUILTIN_METRICS) + len(keys) + len(fc.custom_metrics)
