"""Resumable stages on orbax `CheckpointManager`: save a state pytree every N steps (async), and
restore the newest checkpoint that reads back whole, warning about any newer one that does not.

A stage that finds checkpoints but can restore none of them stops with an error rather than
silently starting from zero.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("jaxskill.runtime.checkpoints")


class CheckpointRestoreError(RuntimeError):
  """Checkpoints exist but none can be restored."""


def manager(directory: str | Path, *, max_to_keep: int, async_save: bool = True
            ) -> ocp.CheckpointManager:
  """An orbax manager of one unnamed item in `directory` (created if missing), keeping the newest
  `max_to_keep` steps; saves run in the background unless `async_save` is False."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=async_save, create=True)
  # One unnamed item, fixed here: left open, orbax would decide it from the first step directory
  # restored (whether it has `default/`), so an empty newest step (a save killed early) would
  # switch the manager to multi-item mode and make every older, intact step unrestorable too.
  return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  """Saves the pytree `state` as `step` (asynchronously when `mngr` is), whatever its interval."""
  mngr.save(step, args=ocp.args.StandardSave(state), force=True)


def abstract_like(state):
  """ShapeDtypeStructs with the shardings of `state`: the restore target."""
  def abstract(leaf):
    if isinstance(leaf, jax.Array):
      return ocp.utils.to_shape_dtype_struct(leaf)
    # Host values (numpy arrays and scalars) come back as arrays of their shape and dtype.
    return jax.ShapeDtypeStruct(np.shape(leaf), np.asarray(leaf).dtype)
  return jax.tree.map(abstract, state)


def restore_latest(mngr: ocp.CheckpointManager, target):
  """(step, state) of the newest checkpoint that restores, or None if there is none at all.

  Newer checkpoints that do not restore are moved aside (`unreadable-<step>-<time>`) only once
  an older one has restored; if none restores, everything stays in place and this raises, as it
  does while an earlier run's unreadable checkpoints are the only ones left.
  """
  directory = Path(mngr.directory)
  _remove_empty_steps(mngr, directory)
  steps = sorted(mngr.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      state = mngr.restore(step, args=ocp.args.StandardRestore(target))
    except MemoryError:
      raise
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: try an older one
      failures.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
      log.warning("checkpoint at step %d in %s cannot be restored (%s); trying an older one",
                  step, directory, failures[-1][1])
      continue
    for bad, _ in failures:  # kept for inspection, out of the way of the steps to be saved again
      aside = directory / f"unreadable-{bad}-{int(time.time())}"
      try:
        (directory / str(bad)).rename(aside)
      except FileNotFoundError:  # another process sharing the directory moved it first
        continue
      log.warning("moved the unreadable checkpoint of step %d to %s", bad, aside.name)
    if failures:
      mngr.reload()
    return step, state
  if steps or list(directory.glob("unreadable-*")):
    detail = "; ".join(f"step {s}: {msg}" for s, msg in failures) or "only unreadable-* left"
    raise CheckpointRestoreError(
        f"{directory}: no checkpoint could be restored; refusing to restart from zero. "
        f"Move the directory away to start over. ({detail})")
  return None


def _remove_empty_steps(mngr: ocp.CheckpointManager, directory: Path) -> None:
  """Deletes step directories without a single file (a save killed as it began): they hold
  nothing to restore or inspect, and would otherwise block saving that step again."""
  empty = [step for step in mngr.all_steps()
           if not any(p.is_file() for p in (directory / str(step)).rglob("*"))]
  for step in empty:
    shutil.rmtree(directory / str(step), ignore_errors=True)  # another process may be first
    log.warning("removed the empty checkpoint directory of step %d in %s", step, directory)
  if empty:
    mngr.reload()
