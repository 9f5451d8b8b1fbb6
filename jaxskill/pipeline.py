"""`jaxskill run`: train -> find -> verify -> report, each stage resumable and skipped when done.

A stage counts as done when `stages.json` in the run directory records it with the same
fingerprint of the config sections it depends on; changing e.g. `verify.k_list` reruns verify
and report but not training or discovery. Within a stage, interruption is handled by the stage
itself (training and statistics checkpoints, verification progress log).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Callable

from jaxskill.config import RunConfig, to_dict

log = logging.getLogger("jaxskill.pipeline")

# The config sections each stage's result depends on.
STAGE_SECTIONS = {
    "train": ("model", "prompt", "task", "data", "train"),
    "find": ("model", "prompt", "task", "data", "train", "find"),
    "verify": ("model", "prompt", "task", "data", "train", "find", "verify"),
}
STAGES = ("train", "find", "verify", "report")


def fingerprint(config: RunConfig, stage: str) -> str:
  d = to_dict(config)
  sections = STAGE_SECTIONS.get(stage, tuple(k for k in d if isinstance(d[k], dict)))
  return hashlib.sha256(json.dumps({s: d[s] for s in sections}, sort_keys=True)
                        .encode()).hexdigest()[:16]


def run(config: RunConfig, *, progress: bool = True,
        on_stage: Callable[[str, bool], None] | None = None) -> dict:
  """Runs the stages not yet done; returns {stage: "ran" | "skipped"}. `on_stage(stage, skip)`
  is called before each stage."""
  from jaxskill.discover import find, seed_runs
  from jaxskill.report import report
  from jaxskill.sharding import barrier
  from jaxskill.train import train
  from jaxskill.verify import verify
  import jax

  run_dir = config.run_dir
  record_path = run_dir / "stages.json"
  record = json.loads(record_path.read_text()) if record_path.exists() else {}
  actions = {
      "train": lambda: [train(c, progress=progress) for c in seed_runs(config)],
      "find": lambda: find(config, progress=progress),
      "verify": lambda: verify(config, progress=progress),
      "report": lambda: report(run_dir) if jax.process_index() == 0 else None,
  }
  out = {}
  for stage in STAGES:
    fp = fingerprint(config, stage)
    skip = stage != "report" and record.get(stage) == fp and _outputs_exist(config, stage)
    if on_stage is not None:
      on_stage(stage, skip)
    if skip:
      out[stage] = "skipped"
      continue
    if stage in ("find", "verify") and record.get(stage) not in (None, fp):
      _clear(config, stage)  # an older config's results: never mixed with this one's
    actions[stage]()
    out[stage] = "ran"
    record[stage] = fp
    if jax.process_index() == 0:
      run_dir.mkdir(parents=True, exist_ok=True)
      record_path.write_text(json.dumps(record, indent=2) + "\n")
    barrier(f"pipeline: {stage} done")
  return out


def _outputs_exist(config: RunConfig, stage: str) -> bool:
  from jaxskill.discover import seed_runs
  d = config.run_dir
  if stage == "train":
    return all((c.run_dir / "prompt_best.npy").exists() for c in seed_runs(config))
  return (d / {"find": "correlations.npz", "verify": "verify.json"}[stage]).exists()


def _clear(config: RunConfig, stage: str) -> None:
  import shutil
  d = config.run_dir
  names = {"find": ["correlations.npz", "summary.json", "neurons.csv", "activations.npz",
                    "predictivity.npz", "find_checkpoints", "verify.json", "neuron_mean.npy"],
           "verify": ["verify.json", "neuron_mean.npy"]}[stage]
  for name in names:
    path = d / name
    if path.is_dir():
      shutil.rmtree(path)
    elif path.exists():
      path.unlink()
