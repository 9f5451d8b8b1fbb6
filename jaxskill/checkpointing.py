"""Resumable stages on orbax `CheckpointManager`: save a state pytree every N steps (async), and
restore the newest checkpoint that reads back whole, warning about any newer one that does not.

A stage that finds checkpoints but can restore none of them stops with an error rather than
silently starting from zero.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("jaxskill.checkpointing")


class CheckpointRestoreError(RuntimeError):
  """Checkpoints exist but none can be restored."""


def manager(directory: str | Path, *, max_to_keep: int, async_save: bool = True
            ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                         enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state), force=True)


def abstract_like(state):
  """ShapeDtypeStructs with the shardings of `state`: the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)


def restore_latest(mngr: ocp.CheckpointManager, target):
  """(step, state) of the newest checkpoint that restores, or None if there is none at all."""
  steps = sorted(mngr.all_steps(), reverse=True)
  failures = []
  for step in steps:
    try:
      state = mngr.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: fall back to an older one
      failures.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
      # Kept for inspection, but out of the way: the resumed run will save this step again.
      aside = Path(mngr.directory) / f"unreadable-{step}-{int(time.time())}"
      (Path(mngr.directory) / str(step)).rename(aside)
      log.warning("checkpoint at step %d in %s cannot be restored (%s); moved it to %s and "
                  "trying an older one", step, mngr.directory, failures[-1], aside.name)
      mngr.reload()
      continue
    return step, state
  if steps:
    raise CheckpointRestoreError(
        f"{mngr.directory}: no checkpoint could be restored; refusing to restart from zero. "
        f"Move the directory away to start over. Failures: {'; '.join(failures)}")
  return None
