"""The streaming Pearson engine of the find stage: a split streamed in the runner's batches
through a capturing forward (`capture.Probe`), each batch's statistics merged into a float32
accumulator on the device and, every few batches, into the host's float64 statistics
(`jaxskill.stats.correlator`), with the permutation null in the same pass, checkpointed and
resumable. `correlate` is its face; `stats_programs` compiles its programs once for every prompt
of a run (the seeds' prompts).

Shapes: b batch rows, l layers, k captured positions, i neurons per layer, f = l k i features,
m metrics, P permutations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxskill.model import capture
from jaxskill.runtime.runner import Checkpoints, Runner
from jaxskill.stats import correlator as stats
from jaxskill.stats import significance
from jaxskill.tasks import encode as data_lib

log = logging.getLogger("jaxskill.stats.streaming")


@dataclasses.dataclass(frozen=True)
class Streaming:
  """How `correlate` streams a split: its checkpoints (in `ckpt_dir`, None: none, every
  `checkpoint_every` batches), the batches accumulated on the device between merges into the
  host's float64 statistics (`merge_every`), a progress bar, and the permutation null
  (`permutations` seeded within-batch shuffles of every metric, from `permutation_seed`)."""
  ckpt_dir: Path | None = None
  checkpoint_every: int = 0
  merge_every: int = 16
  progress: bool = False
  permutations: int = 0
  permutation_seed: int = 0


def correlate(probe: capture.Probe, params, prompt, encoded: data_lib.Encoded, *,
              runner: Runner, streaming: Streaming = Streaming(),
              programs: "StatsPrograms | None" = None) -> tuple[np.ndarray, dict]:
  """Streams `encoded` (n rows) in `runner`'s batches through `probe`; returns (r `[m, l, k, i]`,
  host float64 statistics with the shift "ref_x" `[f]`, "ref_y" `[m]`, f = l k i: the mean
  activation is `mean_x + ref_x`; and "null_r" float32 `[P, m, l, k, i]`, the r of P seeded
  within-batch permutations of every metric (`significance.permuted_metrics`), taken in the
  same pass: each costs one co-moment row per metric).

  Each batch's statistics are merged into a float32 accumulator on the device; every
  `merge_every` batches (and at each checkpoint) the accumulator goes to the host and into the
  float64 statistics, in a background thread while the device runs the next batches.

  programs: `stats_programs` of the same probe, params, runner and permutations (e.g. built once
  for the prompts of several seeds); None: built here."""
  m, s, permutations = len(probe.metric_names), streaming, streaming.permutations
  prompt = runner.replicate(prompt)
  params, _ = runner.place(params)
  whole = encoded.batch(probe.metric_names)
  if programs is None:
    programs = stats_programs(probe, params, prompt, encoded, runner=runner, streaming=s)
  shape = programs.shape
  f = int(np.prod(shape))
  n_batches = runner.n_batches(encoded)
  state = {"stats": stats.init(m, f, permutations or None), "ref_x": np.zeros(f, np.float32),
           "ref_y": np.zeros(m, np.float32), "next_batch": np.int64(0)}
  ckpt = (Checkpoints(s.ckpt_dir, every=s.checkpoint_every) if s.ckpt_dir is not None
          else contextlib.nullcontext())
  with ckpt:
    if s.ckpt_dir is not None:
      start, state = ckpt.restore(state)
      state = jax.tree.map(np.asarray, state)
      if start:
        log.info("resuming statistics at batch %d of %d", start, n_batches)
    with _Stream(programs, lambda i: (prompt, params, runner.batch(encoded, i, whole),
                                      jnp.int32(i)), state, n_batches, s.merge_every) as stream:
      state = runner.loop(stream.step, state, total=n_batches, start=int(state["next_batch"]),
                          desc="correlate", progress=s.progress,
                          checkpoints=ckpt if s.ckpt_dir is not None else None)
  merged = stream.merged
  r = stats.finalize(merged).reshape(m, *shape)
  null_r = stats.finalize_null(merged).reshape(permutations, m, *shape)
  merged.pop("c_null", None)  # the largest array: not kept past its r
  return r, {**merged, "ref_x": state["ref_x"], "ref_y": state["ref_y"], "null_r": null_r}


def stats_programs(probe: capture.Probe, params, prompt, encoded: data_lib.Encoded, *,
                   runner: Runner, streaming: Streaming = Streaming()) -> "StatsPrograms":
  """The compiled programs of `correlate` for `probe` on `encoded` in `runner`'s batches (and
  `streaming`'s permutation null): the same for every prompt of one shape (the seeds of a run
  compile once)."""
  permutations = streaming.permutations
  params, param_shardings = runner.place(params)
  shape = jax.eval_shape(probe, prompt, params,
                         runner.batch(encoded, 0, encoded.batch(probe.metric_names)))[0].shape[1:]
  key = jax.random.PRNGKey(streaming.permutation_seed)

  def step(prompt, params, batch, index):
    acts, y = probe(prompt, params, batch)
    # No permutations: no null at all (orbax cannot save an empty array).
    return acts, y, (significance.permuted_metrics(y, batch.valid,
                                                   jax.random.fold_in(key, index), permutations)
                     if permutations else None)
  return StatsPrograms.build(step, runner.mesh, param_shardings, len(probe.metric_names),
                              tuple(shape), permutations)


@dataclasses.dataclass(frozen=True)
class StatsPrograms:
  """The compiled programs of streamed statistics: a batch into the accumulator (the first
  batch also gives the shift of the reference row), a zero accumulator, and the move to the
  host."""
  fused: Callable  # (prompt, params, batch, index, ref_x, ref_y, acc) -> (ref_x, ref_y, acc)
  fresh: Callable  # () -> a zero accumulator
  host_ready: Callable  # accumulator -> a tree this process can read whole
  ref_shardings: tuple
  shape: tuple  # one example's activations [l, k, i]

  @classmethod
  def build(cls, step, mesh: Mesh, param_shardings, m: int, shape: tuple,
            permutations: int) -> "StatsPrograms":
    """The programs for `step` (prompt, params, batch, its index -> (activations `[b, l, k, i]`,
    metrics `[b, m]`, their permuted copies `[b, P, m]`)) on `mesh`, activations of `shape`
    [l, k, i] (f = l k i features)."""
    f = int(np.prod(shape))
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    # The statistics are per feature: split them over the model axis like the params, so that
    # each device computes and keeps only its share of the [m, f] arrays.
    model_size = mesh.shape.get("model", 1)
    feat = "model" if model_size > 1 and f % model_size == 0 else None
    specs = {"n": P(), "mean_x": P(None, feat), "mean_y": P(), "m2_x": P(None, feat),
             "m2_y": P(), "c_xy": P(None, feat)} | (
                 {"c_null": P(None, None, feat)} if permutations else {})
    acc_shardings = {k: NamedSharding(mesh, v) for k, v in specs.items()}
    ref_shardings = (NamedSharding(mesh, P(feat)), replicated)
    def batch_fn(x, y, valid, ref_x, ref_y, y_null):
      args = (x, y, valid, ref_x, ref_y) + (() if y_null is None else (y_null,))
      in_specs = (P("data", feat), P("data"), P("data"), P(feat), P(), P("data"))
      return jax.shard_map(functools.partial(stats.batch_stats, axis_name="data"), mesh=mesh,
                           in_specs=in_specs[:len(args)], out_specs=specs)(*args)

    def fused(prompt, params, batch, index, ref_x, ref_y, acc):
      # Batch 0's shift comes from itself: one program for every batch (one compilation).
      acts, y, y_null = step(prompt, params, batch, index)
      x = acts.reshape(acts.shape[0], -1)
      own_x, own_y = stats.reference(x, y, batch.valid)
      ref_x, ref_y = (jnp.where(index == 0, own, given)
                      for own, given in ((own_x, ref_x), (own_y, ref_y)))
      return ref_x, ref_y, stats.accumulate(acc, batch_fn(x, y, batch.valid, ref_x, ref_y,
                                                          y_null))

    # To the host: directly where this process holds every shard; otherwise (a model axis across
    # hosts) replicated first, on the main thread, so that every process runs that collective in
    # the same order.
    replicate = jax.jit(lambda tree: tree, out_shardings=replicated)
    return cls(
        fused=jax.jit(fused, in_shardings=(replicated, param_shardings, sharded, replicated,
                                           *ref_shardings, acc_shardings),
                      out_shardings=(*ref_shardings, acc_shardings), donate_argnums=6),
        fresh=jax.jit(functools.partial(stats.zeros, m, f, permutations=permutations or None),
                      out_shardings=acc_shardings),
        host_ready=lambda tree: tree if all(a.is_fully_addressable for a in jax.tree.leaves(tree))
        else replicate(tree),
        ref_shardings=ref_shardings, shape=shape)


class _Stream:
  """The loop body of `correlate`: batch i into the device accumulator; every `merge_every`
  batches, at a checkpoint and at the end, the accumulator into the host float64 statistics
  (`merged`, in place, `stats.merge_into`) in a background thread, one merge at a time."""

  def __init__(self, programs: StatsPrograms, inputs_at: Callable, state: dict, n_batches: int,
               merge_every: int):
    # inputs_at(i): prompt, params, batch i, i
    self.programs, self.inputs_at = programs, inputs_at
    self.n_batches, self.merge_every = n_batches, merge_every
    self.ref = jax.device_put((state["ref_x"], state["ref_y"]), programs.ref_shardings)
    self.merged = {k: np.array(v, np.float64) for k, v in state["stats"].items()}
    self.scratch = np.empty((2, *self.merged["c_xy"].shape))
    self.pending, self.acc, self.held = None, programs.fresh(), 0

  def __enter__(self) -> "_Stream":
    self.pool = ThreadPoolExecutor(1)
    return self

  def __exit__(self, *exc) -> None:
    if self.pending is not None and exc[0] is None:
      self.pending.result()
    self.pool.shutdown(wait=True)

  def step(self, i: int, state: dict, saving: bool) -> tuple[dict, None]:
    """Batch i (a `Runner.loop` body); when `saving`, the state holds every batch so far."""
    programs = self.programs
    *self.ref, self.acc = programs.fused(*self.inputs_at(i), *self.ref, self.acc)
    if i == 0:
      state = dict(state, **jax.device_get(dict(zip(("ref_x", "ref_y"),
                                                    programs.host_ready(tuple(self.ref))))))
    self.held += 1
    if self.held == self.merge_every or saving or i + 1 == self.n_batches:
      if self.pending is not None:
        self.pending.result()
      self.pending = self.pool.submit(
          lambda a: stats.merge_into(self.merged, jax.device_get(a), self.scratch),
          programs.host_ready(self.acc))
      self.acc, self.held = programs.fresh(), 0
      if saving:  # the checkpoint holds every batch so far
        self.pending.result()
        self.pending = None
        state = dict(state, stats=self.merged, next_batch=np.int64(i + 1))
    return state, None
