"""The stage runner: what train, find and verify all repeat, written once.

A stage is its step function plus what it reads and writes; the runner owns the rest:
  - the device mesh, and where params, the prompt and batches go on it (`Runner`);
  - the feed of a split in fixed-size batches, each process giving only its own rows
    (`Runner.batch`, `Runner.batches`);
  - the loop over steps with a progress bar and periodic checkpoints, resumed from the newest
    readable one (`Runner.loop` with `Checkpoints` (orbax) or `JsonlLog` (one JSON line per
    finished step, for results small enough to read));
  - the writes of a multi-process run: process 0 writes, every process waits (`Runner.write`).
Only the pipeline orders the stages and judges whether a stage's outputs are stale.

Shapes: b rows of a global batch, n examples of a split.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxskill.model.batch import Batch
from jaxskill.runtime import files, sharding
from jaxskill.runtime import checkpoints as checkpointing
from jaxskill.tasks import encode as data_lib

log = logging.getLogger("jaxskill.runtime.runner")

# Without a progress bar, a loop logs how far it is at most this often.
QUIET_LOG_SECONDS = 30.0

# body(i, state, saving) -> (state, progress-bar note or None): step i of a loop; `saving`
# says that the state it returns is checkpointed, so it must be complete (flushed).
Body = Callable[[int, Any, bool], tuple[Any, dict | None]]


@dataclasses.dataclass(frozen=True)
class Runner:
  """A stage's device mesh (axes data and model) and its global batch size."""
  mesh: Mesh
  batch_size: int

  @classmethod
  def build(cls, config, batch_size: int, field: str) -> "Runner":
    """The mesh of `config.train` (data_parallel x model_parallel); ValueError naming `field`
    if the data axis does not divide `batch_size`."""
    mesh = sharding.make_mesh(config.train.data_parallel, config.train.model_parallel)
    if batch_size % mesh.shape["data"]:
      raise ValueError(f"{field}={batch_size} is not divisible by the {mesh.shape['data']} "
                       "devices of the data axis (set train.data_parallel)")
    return cls(mesh, batch_size)

  @property
  def replicated(self) -> NamedSharding:
    """Whole on every device of the mesh."""
    return NamedSharding(self.mesh, P())

  @property
  def sharded(self) -> NamedSharding:
    """Split over the data axis along the first (row) axis."""
    return NamedSharding(self.mesh, P("data"))

  @functools.cached_property  # asked for every batch; the mesh and batch size never change
  def local(self) -> np.ndarray:
    """The rows of each global batch this process feeds (all of them in one process)."""
    return sharding.local_rows(self.mesh, self.batch_size)

  def place(self, params, layout: str = "tensor"):
    """(params on the mesh in `layout` (see `jaxskill.runtime.sharding`), their shardings)."""
    return sharding.place_params(params, self.mesh, layout)

  def replicate(self, tree):
    """`tree` copied whole to every device of the mesh (a prompt, an edit)."""
    return jax.device_put(tree, self.replicated)

  def put(self, batch: Batch) -> Batch:
    """This process's rows of a batch -> the global batch `[b, ...]`, split over the data axis."""
    return sharding.put_local(batch, self.mesh, self.batch_size)

  def n_batches(self, encoded: data_lib.Encoded) -> int:
    """Batches of `batch_size` that cover the n examples of `encoded` (the last padded)."""
    return -(-len(encoded) // self.batch_size)

  def batch(self, encoded: data_lib.Encoded, i: int, whole: Batch | None = None) -> Batch:
    """Global batch `i` of `encoded` in order, the last padded with `valid` 0 rows; `whole`
    replaces `encoded.batch()` (e.g. with metadata columns)."""
    return self.put(data_lib.eval_batch(encoded, self.batch_size, i, whole, self.local))

  def batches(self, encoded: data_lib.Encoded, whole: Batch | None = None
              ) -> Iterator[tuple[Batch, np.ndarray]]:
    """(global batch, bool `[b]` its real rows) over `encoded` in order."""
    for i in range(self.n_batches(encoded)):
      valid = data_lib.global_valid(len(encoded), self.batch_size, i * self.batch_size)
      yield self.batch(encoded, i, whole), valid

  @staticmethod
  def loop(body: Body, state, *, total: int, start: int = 0, desc: str, progress: bool,
           checkpoints: "Checkpoints | JsonlLog | None" = None):
    """`state` after `body(i, state, saving)` for i in [start, total), with a progress bar and
    a checkpoint whenever `checkpoints.due(i + 1, total)`."""
    from tqdm.auto import tqdm
    bar = tqdm(total=total, initial=start, disable=not progress, desc=desc, dynamic_ncols=True)
    logged = time.monotonic()
    for i in range(start, total):
      saving = checkpoints is not None and checkpoints.due(i + 1, total)
      state, note = body(i, state, saving)
      if saving:
        checkpoints.save(i + 1, state)
      if note:
        bar.set_postfix(note)
      bar.update(1)
      if not progress and time.monotonic() - logged >= QUIET_LOG_SECONDS and i + 1 < total:
        # Without a bar (--no-progress, a batch job's log): a line now and then that it lives.
        log.info("%s: %d of %d done", desc, i + 1, total)
        logged = time.monotonic()
    bar.close()
    return state

  @staticmethod
  def write(name: str, fn: Callable[[], Any]) -> Any:
    """`fn()` in process 0 alone (its result there, None elsewhere); then every process waits
    until it is done, so that what it wrote can be read."""
    out = fn() if sharding.is_writer() else None
    sharding.barrier(name)
    return out


class Checkpoints:
  """Orbax checkpoints of a loop's state every `every` steps (and at the last), in `directory`;
  a context manager that closes the manager (and its threads) however the loop ends."""

  def __init__(self, directory: Path, *, every: int, max_to_keep: int = 2,
               async_save: bool = False):
    self.every = every
    self.mngr = checkpointing.manager(directory, max_to_keep=max_to_keep, async_save=async_save)

  def restore(self, state) -> tuple[int, Any]:
    """(step, state) of the newest readable checkpoint, or (0, `state`) if there is none;
    `state` gives the structure, dtypes and shardings restored (host values come back as
    arrays; see `checkpointing.restore_latest`)."""
    restored = checkpointing.restore_latest(self.mngr, checkpointing.abstract_like(state))
    return (0, state) if restored is None else restored

  def due(self, done: int, total: int) -> bool:
    """Whether the state after `done` of `total` steps is saved: every `every`, and the last."""
    return bool(self.every) and (done % self.every == 0 or done == total)

  def save(self, done: int, state) -> None:
    """Saves `state` as step `done` (in the background if async)."""
    checkpointing.save(self.mngr, done, state)

  def __enter__(self) -> "Checkpoints":
    return self

  def __exit__(self, exc_type, *rest) -> None:
    try:
      self.mngr.wait_until_finished()  # a save under way is finished, not lost
    except Exception:  # noqa: BLE001 - the loop's own error is the one to report
      if exc_type is None:
        raise
      log.warning("a checkpoint save in %s did not finish", self.mngr.directory)
    finally:
      self.mngr.close()


class JsonlLog:
  """Checkpoints for a loop whose state is a dict of small JSON results, one per step: each
  finished step is appended to `path` as one line {"key", "fingerprint", "result"} (process 0),
  so an interruption loses at most the step under way. Lines of another `fingerprint` (another
  configuration's results) and lines cut short are ignored."""

  def __init__(self, path: Path, keys: list[str | list[str]], fingerprint: str):
    """keys: each step's result key, or its list of keys (a step that finishes several)."""
    self.path, self.fingerprint = path, fingerprint
    self.keys = [[k] if isinstance(k, str) else list(k) for k in keys]
    self.recorded: set[str] = set()

  def restore(self) -> dict:
    """{key: result} of the steps already done under this fingerprint. Process 0 rewrites the
    file without a line cut short, so that the next record starts cleanly."""
    lines = files.read_jsonl(self.path)
    results, keep = {}, []
    for line, record in lines:
      try:
        if record.get("fingerprint") == self.fingerprint:
          results[record["key"]] = record["result"]
          self.recorded.add(record["key"])
      except (AttributeError, KeyError):
        continue  # a line cut short by an interruption: that step runs again
      keep.append(line)
    Runner.write(f"{self.path.name} read", lambda: files.write_text(
        self.path, "".join(line + "\n" for line in keep)) if lines else None)
    return results

  def due(self, done: int, total: int) -> bool:
    """Every step is recorded."""
    return True

  def save(self, done: int, state: dict) -> None:
    """Appends step `done`'s results (`state[key]` for its keys) but those restored."""
    new = [key for key in self.keys[done - 1] if key not in self.recorded]
    self.recorded.update(new)
    if new and sharding.is_writer():
      files.append_jsonl(self.path, [{"key": key, "fingerprint": self.fingerprint,
                                      "result": state[key]} for key in new])
