"""Streaming Pearson correlation between neuron activations and per-example metrics.

Sufficient statistics are kept per (metric, feature) so that examples whose metric is NaN drop out
of that metric only. Numerics, for data that never has to fit in memory:
  * every value is first shifted by a reference taken from the data (the first batch), so that
    `x - ref` is exact in float32 even for activations like 1e4 +- 1e-2 (Sterbenz);
  * within a batch, sums are taken around the batch's mean (two passes) on the device;
  * across the devices of a mesh, per-device centred sums are combined exactly with `psum`
    (sum of counts, sums, and the Chan correction terms);
  * across batches, Chan et al.'s parallel formulas: a few batches (`find.merge_every`) in
    float32 on the device, then into the host's float64 state.
Never `sum(x^2) - sum(x)^2 / n` on raw values.

Shapes: x `[n, f]` (features: any flattened (layer, position, neuron) grid), y `[n, m]` (metrics),
valid `[n]` (0 for padding rows). All functions are pure; `batch_stats` can run inside the user's
own `jit`, `vmap` or `shard_map` (pass `axis_name` there to reduce over a mesh axis).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P


def batch_stats(x, y, valid, ref_x, ref_y, y_null=None, axis_name: str | None = None) -> dict:
  """Centred statistics of one batch (summed over `axis_name` devices when given).

  x `[n, f]`, y `[n, m]` (NaN: no value), valid `[n]`, ref_x `[f]`, ref_y `[m]` (`reference`).
  Returns {"n": [m], "mean_x": [m, f], "mean_y": [m], "m2_x": [m, f], "m2_y": [m],
  "c_xy": [m, f]}, in shifted coordinates (x - ref_x, y - ref_y), float32.
  With y_null `[n, P, m]` (copies of y whose values are permuted among the rows each metric
  counts, `significance.permuted_metrics`) also "c_null" `[P, m, f]`, their co-moments: a copy
  shares every other statistic with y, so it costs one `[m, f]` row, not three.

  Values are centred on the batch's own mean (over all valid rows, for x; over each metric's
  rows, for y), so the sums below are of small, well-conditioned numbers; each metric's own
  mean then differs from that centre only through its NaN rows, and the textbook correction
  `S2 - S1^2 / n` loses nothing. Everything per metric is a [m, n] x [n, f] matmul.
  """
  psum = (lambda v: jax.lax.psum(v, axis_name)) if axis_name is not None else (lambda v: v)
  dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)  # no TF32 / bf16
  x = x.astype(jnp.float32) - ref_x.astype(jnp.float32)  # [n, f]
  y = y.astype(jnp.float32) - ref_y.astype(jnp.float32)  # [n, m]
  rows = valid > 0  # [n]
  w = rows[:, None] & ~jnp.isnan(y)  # [n, m]: this example counts for this metric
  wf = w.astype(jnp.float32)
  n_rows, sum_rows, n, sum_y = psum((rows.sum().astype(jnp.float32),
                                     jnp.where(rows[:, None], x, 0.0).sum(0), wf.sum(0),
                                     jnp.where(w, y, 0.0).sum(0)))
  safe = jnp.maximum(n, 1.0)  # [m]
  centre_x = sum_rows / jnp.maximum(n_rows, 1.0)  # [f], the same on every device
  centre_y = sum_y / safe  # [m]
  d = jnp.where(rows[:, None], x - centre_x, 0.0)  # [n, f]
  dy = jnp.where(w, y - centre_y, 0.0)  # [n, m]
  s1, s2, sxy, sy1, sy2 = psum((dot(wf.T, d), dot(wf.T, d * d), dot(dy.T, d), dy.sum(0),
                                (dy * dy).sum(0)))
  mean_dx = s1 / safe[:, None]  # [m, f]
  mean_dy = sy1 / safe  # [m]
  out = {"n": n, "mean_x": centre_x + mean_dx, "mean_y": centre_y + mean_dy,
         "m2_x": jnp.maximum(s2 - s1 * mean_dx, 0.0),
         "m2_y": jnp.maximum(sy2 - sy1 * mean_dy, 0.0),
         "c_xy": sxy - s1 * mean_dy[:, None]}
  if y_null is not None:
    # The same rows and values as y: the same centre, the same mean_dy (up to summation order).
    dn = jnp.where(w[:, None, :], y_null.astype(jnp.float32) - ref_y - centre_y, 0.0)  # [n, P, m]
    p, m = dn.shape[1:]
    sn = psum(dot(dn.reshape(dn.shape[0], p * m).T, d))  # [P m, f]
    out["c_null"] = sn.reshape(p, m, d.shape[1]) - (s1 * mean_dy[:, None])[None]
  return out


def predictivity_counts(x, label, valid, baseline, axis_name: str | None = None) -> dict:
  """The 2022 baseline's sufficient statistics for one batch: for every feature, how many valid
  rows have `(x > baseline) == label` (binary label), and how many valid rows there are.
  x `[n, f]`, label `[n]` in {0, 1}, baseline `[f]` (the train-split mean activation) ->
  {"correct": int32 `[f]`, "n": int32 scalar}."""
  rows = (valid > 0).astype(jnp.int32)
  hit = ((x.astype(jnp.float32) > baseline) == (label[:, None] > 0)).astype(jnp.int32)
  out = {"correct": (hit * rows[:, None]).sum(0), "n": rows.sum()}
  return jax.lax.psum(out, axis_name) if axis_name is not None else out


def init(num_metrics: int, num_features: int, permutations: int | None = None) -> dict:
  """Empty running statistics, host float64, keyed as in `batch_stats`: "n", "mean_y", "m2_y"
  `[m]`; "mean_x", "m2_x", "c_xy" `[m, f]`; with `permutations` P, "c_null" `[P, m, f]`."""
  return _zeros(np, np.float64, num_metrics, num_features, permutations)


def _zeros(xp, dtype, m: int, f: int, permutations: int | None) -> dict:
  out = {"n": xp.zeros(m, dtype), "mean_x": xp.zeros((m, f), dtype), "mean_y": xp.zeros(m, dtype),
         "m2_x": xp.zeros((m, f), dtype), "m2_y": xp.zeros(m, dtype),
         "c_xy": xp.zeros((m, f), dtype)}
  if permutations is not None:
    out["c_null"] = xp.zeros((permutations, m, f), dtype)
  return out


def _chan(a: dict, b: dict, xp) -> dict:
  """Chan et al.'s pairwise merge of two sets of statistics (same shift), in `xp` (np or jnp)."""
  n = a["n"] + b["n"]
  safe = xp.where(n > 0, n, 1.0)
  wa, wb = a["n"] / safe, b["n"] / safe  # [m]
  cross = a["n"] * b["n"] / safe  # [m]
  dx = b["mean_x"] - a["mean_x"]  # [m, f]
  dy = b["mean_y"] - a["mean_y"]  # [m]
  # A permuted copy has y's means, so its co-moment takes y's correction.
  null = ({"c_null": a["c_null"] + b["c_null"] + (cross[:, None] * dx * dy[:, None])[None]}
          if "c_null" in a else {})
  return {
      **null,
      "n": n,
      "mean_x": wa[:, None] * a["mean_x"] + wb[:, None] * b["mean_x"],
      "mean_y": wa * a["mean_y"] + wb * b["mean_y"],
      "m2_x": a["m2_x"] + b["m2_x"] + cross[:, None] * dx * dx,
      "m2_y": a["m2_y"] + b["m2_y"] + cross * dy * dy,
      "c_xy": a["c_xy"] + b["c_xy"] + cross[:, None] * dx * dy[:, None],
  }


def merge(a: dict, b: dict) -> dict:
  """Chan et al.'s pairwise merge of two sets of statistics (same shift); float64 on the host.
  Shapes as in `batch_stats`: `[m]` and `[m, f]`."""
  return _chan({k: np.asarray(v, np.float64) for k, v in a.items()},
               {k: np.asarray(v, np.float64) for k, v in b.items()}, np)


def merge_into(a: dict, b: dict, scratch: np.ndarray | None = None) -> dict:
  """`merge`, written into `a` (host float64 arrays it owns) and returned. Every pass over the
  `[m, f]` arrays is in place: fresh temporaries of that size (tens of MB) are page-faulted in
  on every call, because large blocks go back to the OS when freed; that made the pure merge
  of 0.5B-scale statistics several times slower. `scratch`: float64 `[2, m, f]`, reused."""
  b = {k: np.asarray(v) for k, v in b.items()}
  if scratch is None:
    scratch = np.empty((2, *a["mean_x"].shape))
  n = a["n"] + b["n"]
  safe = np.where(n > 0, n, 1.0)
  wb = b["n"] / safe  # [m]
  cross = a["n"] * b["n"] / safe  # [m]
  dy = b["mean_y"] - a["mean_y"]  # [m]
  dx, tmp = np.subtract(b["mean_x"], a["mean_x"], out=scratch[0]), scratch[1]  # [m, f]
  a["c_xy"] += b["c_xy"]
  a["c_xy"] += np.multiply(dx, (cross * dy)[:, None], out=tmp)
  if "c_null" in a:  # a permuted copy has y's means: the same correction
    a["c_null"] += b["c_null"]
    a["c_null"] += tmp
  a["m2_x"] += b["m2_x"]
  np.multiply(dx, cross[:, None], out=tmp)
  a["m2_x"] += np.multiply(tmp, dx, out=tmp)
  a["mean_x"] += np.multiply(dx, wb[:, None], out=tmp)  # = wa mean_a + wb mean_b
  a["mean_y"] = a["mean_y"] + wb * dy
  a["m2_y"] = a["m2_y"] + b["m2_y"] + cross * dy * dy
  a["n"] = n
  return a


def accumulate(a: dict, b: dict) -> dict:
  """The same merge on the device in float32 (jnp; inside `jit`): a few batches are summed
  there between host merges, so that the `[m, f]` statistics do not cross to the host and
  through a float64 merge after every batch. Every batch's statistics are centred on its own
  mean first, so only a few small float32 merges happen before the float64 state takes over."""
  return _chan(a, b, jnp)


def zeros(num_metrics: int, num_features: int, dtype=jnp.float32,
          permutations: int | None = None) -> dict:
  """Empty statistics for `accumulate` (jnp; merging into them returns the other operand):
  zeros of `dtype` keyed and shaped as in `init`."""
  return _zeros(jnp, dtype, num_metrics, num_features, permutations)


def finalize(stats: dict) -> np.ndarray:
  """Pearson r `[m, f]` of statistics keyed as in `batch_stats`; NaN where undefined (fewer
  than 2 examples, or a constant feature or metric), so an undefined r is never ranked."""
  return _pearson(stats["c_xy"], stats)


def finalize_null(stats: dict, dtype=np.float32) -> np.ndarray:
  """The r `[P, m, f]` of the permuted copies ("c_null"), in `dtype`, one copy at a time so
  that no float64 temporary of the whole null is made; NaN where `finalize` has NaN."""
  if "c_null" not in stats:  # no permutations
    return np.empty((0, *stats["c_xy"].shape), dtype)
  c = stats["c_null"]
  out = np.empty(c.shape, dtype)
  for p in range(c.shape[0]):
    out[p] = _pearson(c[p], stats)
  return out


def _pearson(c: np.ndarray, stats: dict) -> np.ndarray:
  with np.errstate(invalid="ignore", divide="ignore"):
    r = c / np.sqrt(stats["m2_x"] * stats["m2_y"][:, None])
  undefined = (stats["n"][:, None] < 2) | (stats["m2_x"] <= 0) | (stats["m2_y"][:, None] <= 0)
  return np.where(undefined, np.nan, np.clip(r, -1.0, 1.0))


def reference(x, y, valid):
  """Shift values from a first batch x `[n, f]`, y `[n, m]`, valid `[n]`: the first valid row
  of x `[f]`, the NaN-ignoring mean of y over valid rows `[m]` (0 for a metric with no value).
  Both are float32 values taken from the data, so `x - ref` is exact for data near them. Runs
  under jit (jnp)."""
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  valid = jnp.asarray(valid) > 0
  ref_x = x[jnp.argmax(valid)]
  w = valid[:, None] & ~jnp.isnan(y)
  count = w.sum(0)
  ref_y = jnp.where(w, y, 0.0).sum(0) / jnp.maximum(count, 1)
  return ref_x, jnp.where(count > 0, ref_y, 0.0).astype(jnp.float32)


def sharded_batch_stats(mesh: Mesh, axis: str = "data"):
  """`batch_stats` over a batch sharded along `axis` of `mesh` (replicated result): a jitted
  fn(x `[n, f]`, y `[n, m]`, valid `[n]`, ref_x `[f]`, ref_y `[m]`), n divisible by the axis."""
  fn = functools.partial(batch_stats, axis_name=axis)
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(axis), P(axis), P(axis), P(), P()),
                               out_specs=P()))


class Correlator:
  """Convenience driver: feed batches, read r. Holds only host float64 statistics."""

  def __init__(self, num_metrics: int, num_features: int, mesh: Mesh | None = None,
               axis: str = "data"):
    self.stats = init(num_metrics, num_features)
    self.ref = None
    self._fn = sharded_batch_stats(mesh, axis) if mesh is not None else jax.jit(batch_stats)

  def update(self, x, y, valid) -> None:
    """Adds a batch x `[n, f]`, y `[n, m]` (NaN: no value), valid `[n]`; the first batch, which
    must have a valid row, gives the reference shift."""
    if self.ref is None:
      if not np.any(np.asarray(valid) > 0):
        raise ValueError("the first batch has no valid rows to take a reference from")
      self.ref = jax.device_get(jax.jit(reference)(x, y, valid))
    self.stats = merge(self.stats, jax.device_get(self._fn(x, y, valid, *self.ref)))

  def result(self) -> np.ndarray:
    """Pearson r `[m, f]` float64 of the batches so far, NaN where undefined (`finalize`)."""
    return finalize(self.stats)
