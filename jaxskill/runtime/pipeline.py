"""The stages in order: train -> find -> verify -> report, each resumable and skipped when done.

Every command that runs a stage (`jaxskill train|find|verify|report|run`) goes through `run`,
which alone judges what is stale. `stages.json` in the run directory records, per stage, the
fingerprint of the config keys its result depends on, those keys themselves, and whether it
finished, and, once it is done, the size and SHA-256 of every output a later stage reads. A
stage is skipped when its record matches the config and each of those files is there with its
recorded size and hash (a truncated, edited or deleted output counts as not done); otherwise it
runs, and every later stage is recomputed too (its inputs changed), its old outputs
removed first. So nothing computed under one config is read under another:
  - train refuses to continue a run directory made under other training settings (naming each
    changed key, old and new value), except for keys that only lengthen the run (train.steps);
  - find and verify recompute, saying which keys changed;
  - `jaxskill report DIR` refuses a directory whose records disagree with its config.yaml.
Within a stage, interruption is handled by the stage itself (training and statistics
checkpoints, verification progress log): a stage recorded as running under the same
fingerprint resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

from jaxskill.config import (NEUTRAL_KEYS, RunConfig, RunConfigError, config_diff, dump_config,
                             load_config, seed_runs, to_dict)
from jaxskill.model.checkpoint import check_checkpoint
from jaxskill.runtime import files
from jaxskill.runtime.sharding import barrier, is_writer, raise_together, writer_decides

log = logging.getLogger("jaxskill.runtime.pipeline")

STAGES = ("train", "find", "verify", "report")
# The config sections each stage's result depends on.
STAGE_SECTIONS = {
    "train": ("model", "prompt", "task", "data", "train"),
    "find": ("model", "prompt", "task", "data", "train", "find"),
    "verify": ("model", "prompt", "task", "data", "train", "find", "verify"),
}
# What each stage writes into the run directory (with seeds, train also writes the seed dirs).
OUTPUTS = {
    "train": ("train_config.yaml", "metrics.jsonl", "checkpoints", "prompt_final.npy",
              "prompt_best.npy", "train_summary.json"),
    "find": ("correlations.npz", "pvalues.npz", "summary.json", "neurons.csv",
             "activations.npz", "activations_heldout.npz", "token_activations.npz",
             "predictivity.npz", "find_checkpoints"),
    "verify": ("verify.json", "verify_progress.jsonl", "neuron_stats.npz"),
    "report": ("report.html", "neurons.json"),
}
# Outputs that only let a stage resume (logs and checkpoints): not part of its result.
RESUME_ONLY = ("metrics.jsonl", "checkpoints", "find_checkpoints", "verify_progress.jsonl",
               "train_config.yaml")


class StaleRunError(RunConfigError):
  """A run directory's outputs do not belong to the config asked about."""


def stage_config(config: RunConfig, stage: str) -> dict:
  """The config keys `stage`'s result depends on, as plain data."""
  d = to_dict(config)
  out = {s: dict(d[s]) for s in STAGE_SECTIONS[stage]}
  for section, keys in NEUTRAL_KEYS.items():
    for key in keys:
      out.get(section, {}).pop(key, None)
  return out


def fingerprint(config: RunConfig, stage: str) -> str:
  """A 16-hex-digit hash of `stage_config`: what stages.json records a stage's result under."""
  return files.digest(stage_config(config, stage))


def _matches(rec: dict | None, config: RunConfig, stage: str) -> bool:
  """Whether a stage record was made under `config`'s keys for that stage."""
  return rec is not None and rec["fingerprint"] == fingerprint(config, stage)


def read_record(run_dir: Path) -> dict[str, dict]:
  """stages.json as {stage: {"fingerprint", "state": "running" | "done", "config", "outputs"}};
  a record not of that form (edited by hand, not ours) reads as not done."""
  path = run_dir / "stages.json"
  if not path.exists():
    return {}
  try:
    raw = files.read_json(path)
  except files.DamagedFileError as e:
    log.warning("%s; every stage is treated as not done", e)
    return {}
  if not isinstance(raw, dict):
    log.warning("%s: not a stage record; every stage is treated as not done", path)
    return {}
  record = {}
  for stage, rec in raw.items():
    if (stage in STAGES and isinstance(rec, dict) and isinstance(rec.get("fingerprint"), str)
        and (stage == "report" or isinstance(rec.get("config"), dict))):
      record[stage] = rec
    else:  # edited by hand or not ours: that stage counts as not done
      log.warning("%s: the record of %r is not understood; that stage is treated as not done",
                  path, stage)
  return record


def _write_record(run_dir: Path, record: dict) -> None:
  if is_writer():
    files.write_json(run_dir / "stages.json", record)


def _why_stale(stage: str, rec: dict | None, config: RunConfig) -> str:
  if rec is None:
    return "not run yet"
  if not _matches(rec, config, stage):
    return "config changed: " + "; ".join(config_diff(rec["config"],
                                                      stage_config(config, stage)))
  if rec.get("state") != "done":
    return "interrupted: resuming"
  changed = changed_outputs(config, stage, rec) if "outputs" in rec else []
  if changed:
    return "outputs missing or changed since it ran: " + ", ".join(changed)
  return "outputs missing or unreadable"


def _outputs_ok(config: RunConfig, stage: str, rec: dict) -> bool:
  """Whether `stage`'s outputs are whole: those recorded at its end, by size and hash."""
  return ("outputs" in rec and not changed_outputs(config, stage, rec)
          and (stage != "train" or all(_trained_under(c) for c in seed_runs(config))))


def _stage_dirs(config: RunConfig, stage: str) -> list[Path]:
  """Where `stage` writes its result: train into each seed run's directory, find into the run
  directory and each seed run's, verify into the run directory."""
  seeds = [c.run_dir for c in seed_runs(config)]
  if stage == "train":
    return seeds
  return list(dict.fromkeys([config.run_dir] + (seeds if stage == "find" else [])))


def changed_outputs(config: RunConfig, stage: str, rec: dict) -> list[str]:
  """The files of `rec`'s manifest that are missing or differ from what `stage` wrote."""
  recorded = rec.get("outputs", {})
  now = manifest(config, stage, recorded)
  return [name for name in recorded if now[name] != recorded[name]]


def manifest(config: RunConfig, stage: str, names: dict | None = None) -> dict[str, list]:
  """{path relative to the run directory: [size, sha256]} of `stage`'s result files: those
  there now, or with `names` (a recorded manifest) those it names (None where one is missing)."""
  if names is None:
    paths = [d / n for d in _stage_dirs(config, stage) for n in OUTPUTS[stage]
             if n not in RESUME_ONLY and (d / n).is_file()]
    if stage == "report":  # and its figures
      paths += sorted(config.run_dir.glob("*.png"))
    names = [os.path.relpath(p, config.run_dir) for p in paths]
  out = {}
  for name in names:
    path = config.run_dir / name
    try:
      with open(path, "rb") as f:
        out[name] = [os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest()]
    except OSError:
      out[name] = None
  return out


def _trained_under(config: RunConfig) -> bool:
  """Whether the prompt in `config.run_dir` was trained under `config`'s training keys (a
  directory may hold another run's prompt: e.g. one trained before find.seeds was set)."""
  from jaxskill.stages.train import trained_config_path
  path = trained_config_path(config.run_dir)
  try:
    return path is not None and stage_config(load_config(path), "train") == stage_config(
        config, "train")
  except RunConfigError:
    return False


def clear(config: RunConfig, stage: str) -> None:
  """Removes what `stage` wrote: into the run directory, and for find also into each seed run's
  (its per-seed statistics checkpoints and outputs; never a seed's training)."""
  dirs = [config.run_dir]
  if stage == "find":
    dirs += [c.run_dir for c in seed_runs(config) if c.run_dir != config.run_dir]
  for d in dirs:
    for name in OUTPUTS[stage]:
      path = d / name
      if path.is_dir():
        shutil.rmtree(path)
      elif path.exists():
        path.unlink()


def run(config: RunConfig, *, until: str = "report", progress: bool = True,
        on_stage: Callable[[str, bool, str], None] | None = None) -> dict:
  """Runs the stages up to `until` that are not done; returns {stage: "ran" | "skipped"}.
  `on_stage(stage, skip, why)` is called before each stage. The run directory (and each seed
  run's) is locked for the duration: a second process gets a RunLockError naming the first."""
  if until not in STAGES:
    raise ValueError(f"until={until!r}: expected one of {STAGES}")
  # A checkpoint or a task file that cannot be read is refused before the locks create any
  # run directory (reading the task twice costs far less than a run left behind).
  check_checkpoint(config.model.path)
  from jaxskill.tasks import build_task
  from jaxskill.tasks.base import thin_task_warnings
  for line in thin_task_warnings(build_task(config.task)):
    if is_writer():
      log.warning("%s", line)
  dirs = list(dict.fromkeys([config.run_dir] + [c.run_dir for c in seed_runs(config)]))
  with contextlib.ExitStack() as locks:
    def acquire():
      if is_writer():
        for d in dirs:
          locks.enter_context(files.run_lock(d))
    raise_together(acquire, files.RunLockError)  # every process stops, not only process 0
    return _run_stages(config, STAGES[:STAGES.index(until) + 1], progress, on_stage)


def _run_stages(config: RunConfig, stages: tuple[str, ...], progress: bool, on_stage) -> dict:
  run_dir = config.run_dir
  record = read_record(run_dir)
  out = {}
  # find's memory is judged before training, which would remove find's outputs, starts.
  early = ({"find": _check_find(config)} if "find" in stages and not all(
      _is_fresh(config, s, record.get(s)) for s in ("train", "find")) else {})
  for stage in stages:
    if stage == "report":
      out[stage] = _run_report(config, record, progress, on_stage)
      continue
    rec = record.get(stage)
    fresh = _is_fresh(config, stage, rec)
    why = "" if fresh else _why_stale(stage, rec, config)
    if on_stage is not None:
      on_stage(stage, fresh, why)
    elif rec is not None and not fresh:
      log.info("%s: %s", stage, why)
    if not fresh:
      # Bad input is refused before any removal; a precheck may return the config to run
      # (find.fit_memory=lower), which is recorded under the config asked for.
      effective = early.get(stage) or _PRECHECKS.get(stage, lambda c: None)(config) or config
      _start(config, stage, record, resume=_matches(rec, config, stage))
      _STAGE_FNS[stage](effective, progress)
      record[stage] = dict(record[stage], state="done",
                           outputs=manifest(config, stage) if is_writer() else {})
      _write_record(run_dir, record)
    out[stage] = "skipped" if fresh else "ran"
    if stage == "train":
      _save_run_config(config)
    barrier(f"pipeline: {stage} done")
  return out


def _is_fresh(config: RunConfig, stage: str, rec: dict | None) -> bool:
  """Done under the same keys, outputs whole: decided by process 0 (it alone reads the files),
  so that every process takes the same path through the stages and their collectives."""
  fresh = (is_writer() and rec is not None and rec.get("state") == "done"
           and _matches(rec, config, stage) and _outputs_ok(config, stage, rec))
  return writer_decides(fresh)


def _start(config: RunConfig, stage: str, record: dict, *, resume: bool) -> None:
  """Marks `stage` running; removes what it and every later stage wrote, since their inputs or
  config changed (except this stage's own checkpoints when it resumes the same work)."""
  rec = record.get(stage)
  if resume and rec is not None and rec.get("state") == "done" and is_writer():
    # Done, but some outputs were damaged since: those are written again, never read back.
    for name in changed_outputs(config, stage, rec):
      with contextlib.suppress(FileNotFoundError):
        (config.run_dir / name).unlink()
  for later in STAGES[STAGES.index(stage):]:
    if later == "train" or (later == stage and resume):
      continue  # training judges its own directories; the same work resumes
    if is_writer():
      clear(config, later)
    record.pop(later, None)
  record[stage] = {"fingerprint": fingerprint(config, stage), "state": "running",
                   "config": stage_config(config, stage)}
  _write_record(config.run_dir, record)
  barrier(f"pipeline: {stage} starts")


def _save_run_config(config: RunConfig) -> None:
  """The run directory's config.yaml: the config its later stages run under (with seeds, the
  seed dirs keep their own)."""
  if is_writer():
    dump_config(config, config.run_dir / "config.yaml")


def _check_training_dirs(config: RunConfig) -> None:
  from jaxskill.stages.train import check_resume_config
  for c in seed_runs(config):
    check_resume_config(c.run_dir, c)


def _check_verify(config: RunConfig) -> None:
  from jaxskill.stages.verify import check_inputs
  check_inputs(config)


def _check_find(config: RunConfig) -> RunConfig:
  from jaxskill.runtime.memory import fit
  return fit(config)


def _train(config: RunConfig, progress: bool) -> None:
  from jaxskill.stages.train import train_seeds
  train_seeds(config, progress=progress)


def _find(config: RunConfig, progress: bool) -> None:
  from jaxskill.stages.find import find
  find(config, progress=progress)


def _verify(config: RunConfig, progress: bool) -> None:
  from jaxskill.stages.verify import verify
  verify(config, progress=progress)


def _run_report(config: RunConfig, record: dict, progress: bool, on_stage) -> str:
  """The report, skipped when it was drawn from the same inputs by the same code and its files
  are as it wrote them (reading only files, it has no checkpoints to resume)."""
  key = _report_key(config, record)
  rec = record.get("report")
  fresh = writer_decides(is_writer() and rec is not None and rec.get("fingerprint") == key
                         and not changed_outputs(config, "report", rec))
  if on_stage is not None:
    on_stage("report", fresh, "")
  if fresh:
    return "skipped"
  barrier("pipeline: report starts")
  _report(config, progress)
  record["report"] = {"fingerprint": key, "state": "done",
                      "outputs": manifest(config, "report") if is_writer() else {}}
  _write_record(config.run_dir, record)
  return "ran"


def _report_key(config: RunConfig, record: dict) -> str:
  """A hash of what the report is made from: the earlier stages' records (their keys and
  result files), the run's config.yaml (the page shows it) and jaxskill's own code (a new
  version draws the page anew)."""
  import jaxskill
  parts = {s: [record.get(s, {}).get("fingerprint"), record.get(s, {}).get("outputs")]
           for s in ("train", "find", "verify")}
  parts["config.yaml"] = manifest(config, "report", ["config.yaml"])
  package = Path(jaxskill.__file__).parent
  code = hashlib.sha256()
  for path in sorted(package.rglob("*")):
    if path.is_file() and path.suffix in (".py", ".j2", ".js", ".css", ".html"):
      code.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes())
  parts["code"] = code.hexdigest()
  return files.digest(parts)


def _report(config: RunConfig, progress: bool) -> None:
  from jaxskill.report.page import report
  if is_writer():
    report(config.run_dir)


_STAGE_FNS = {"train": _train, "find": _find, "verify": _verify}
_PRECHECKS = {"train": _check_training_dirs, "find": _check_find, "verify": _check_verify}


def checked_run_dir(run_dir: str | Path) -> RunConfig:
  """The config of a finished run directory, after checking that its training and discovery
  (and verification, if it ran) were computed under that config; a StaleRunError names the
  stage, each changed key with its old and new value, and the command that recomputes it."""
  run_dir = Path(run_dir)
  saved = run_dir / "config.yaml"
  if not saved.exists():
    if (run_dir / "train_config.yaml").exists():
      raise FileNotFoundError(f"{run_dir} holds one trained prompt (a seed run of find.seeds, "
                              "or a training whose pipeline never finished): report the run "
                              "directory of the config (or `jaxskill report CONFIG`)")
    raise FileNotFoundError(f"{run_dir}: no config.yaml; not a jaxskill run directory")
  # Where the directory is now (it may have been moved or copied), its seed runs beside it.
  here = run_dir.absolute()
  config = dataclasses.replace(load_config(saved), out_dir=str(here.parent), name=here.name)
  record = read_record(run_dir)
  for stage in ("train", "find", "verify"):
    rec = record.get(stage)
    if stage == "verify" and rec is None and not (run_dir / "verify.json").exists():
      continue  # not verified: the report goes without that section
    if (rec is None or rec.get("state") != "done" or rec["fingerprint"] != fingerprint(config,
                                                                                         stage)
        or not _outputs_ok(config, stage, rec)):
      raise StaleRunError(
          f"{run_dir}: the {stage} stage is not up to date with {saved} "
          f"({_why_stale(stage, rec, config)}); run `jaxskill run {saved}` (or the config you "
          "ran it with) to recompute it")
  return config
