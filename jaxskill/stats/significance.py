"""Which correlations are beyond chance: p-values, a permutation null, FDR and FWER.

- Analytic p-value of each r: the two-sided test of zero correlation, t = r sqrt(d / (1 - r^2))
  with d = n - 2 degrees of freedom (Student), computed as the regularized incomplete beta
  function I_{1 - r^2}(d / 2, 1 / 2), which equals P(|T_d| >= |t|) exactly and keeps its relative
  precision for r near 1 (no 1 - cdf cancellation).
- Benjamini-Hochberg at level q over all (layer, position, neuron) features of one metric.
- A permutation null: discovery adds, for each of P seeded permutations, a shuffled copy of every
  metric (`permuted_metrics`), so the null costs one co-moment row per copy in the same
  statistics pass, not forwards. The shuffle is within each batch, among the rows that have the
  metric: under the null that a metric is exchangeable across the examples of a batch that have
  it (batches are runs of the split in its order), it breaks any link to the activations while
  keeping the metric's values. Its r maps give the null distribution of max |r| over features (family-wise) and the
  count of |r| above any threshold to expect by chance.

Shapes: b batch rows, m metrics, P permutations, f features.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special
from scipy import stats as sps

THRESHOLDS = (0.3, 0.5, 0.7, 0.83, 0.9)  # |r| levels whose observed and null counts are reported


def permuted_metrics(y: jax.Array, valid: jax.Array, key: jax.Array, permutations: int
                     ) -> jax.Array:
  """y `[b, m]` (NaN: no value) -> `[b, P, m]`: P copies of y, in each the values of every
  metric shuffled among the rows that have one (real rows, valid > 0, a prefix of the batch,
  whose value is not NaN), one seeded draw per copy (a metric without NaN gets the same
  permutation as every other such metric). The rows a metric counts are therefore the same in
  every copy as in y itself, so a copy shares y's count, mean and M2 in every batch
  (`stats.batch_stats` keeps only its co-moment); the null is the conditional permutation test
  of each metric among its own examples. Other rows keep their value (NaN or padding)."""
  b, m = y.shape
  counts = (jnp.asarray(valid)[:, None] > 0) & ~jnp.isnan(y)  # [b, m]

  def shuffle(k):
    # Per metric: counted rows sort first in random order, the others after them in their own
    # order, so the j-th counted row draws a counted row and the rest stay put.
    u = jax.random.uniform(k, (b,))
    keys = jnp.where(counts, u[:, None], 2.0 + jnp.arange(b)[:, None])  # [b, m]
    order = jnp.argsort(keys, axis=0)  # [b, m]
    rank = jnp.cumsum(counts, axis=0) - 1  # [b, m]: a counted row's index among counted rows
    drawn = jnp.take_along_axis(y, order, axis=0)  # [b, m]
    picked = jnp.take_along_axis(drawn, jnp.clip(rank, 0, b - 1), axis=0)
    return jnp.where(counts, picked, y)
  if not permutations:
    return jnp.zeros((b, 0, m), y.dtype)
  return jnp.stack([shuffle(k) for k in jax.random.split(key, permutations)], axis=1)


def p_values(r: np.ndarray, n: np.ndarray) -> np.ndarray:
  """Two-sided p-values of r `[m, ...]` (any shape after the metric axis) with n `[m]` examples
  per metric; float64, NaN where r is NaN or n < 3."""
  r = np.asarray(r, np.float64)
  d = (np.asarray(n, np.float64) - 2).reshape((-1,) + (1,) * (r.ndim - 1))
  d = np.broadcast_to(d, r.shape)
  ok = np.isfinite(r) & (d >= 1)
  x = np.clip(1.0 - r * r, 0.0, 1.0)
  out = np.full(r.shape, np.nan)
  out[ok] = special.betainc(d[ok] / 2.0, 0.5, x[ok])
  return out


def fdr_reject(p: np.ndarray, q: float) -> np.ndarray:
  """Benjamini-Hochberg at level q over all entries of p (any shape; NaN: not a hypothesis):
  bool of the same shape, True where rejected (BH-adjusted p <= q)."""
  flat = np.asarray(p, np.float64).ravel()
  tested = np.isfinite(flat)
  out = np.zeros(flat.shape, bool)
  if tested.any():
    out[tested] = sps.false_discovery_control(flat[tested], method="bh") <= q
  return out.reshape(np.shape(p))


def null_summary(r: np.ndarray, null_r: np.ndarray, p: np.ndarray, *, q: float,
                 thresholds: tuple[float, ...]) -> dict:
  """One metric's significance: r and p `[...]` (its features), null_r `[P, ...]` (the same
  features under each permutation; P may be 0). FWER: |r| above the 95th percentile of the null
  max |r| over features."""
  abs_r = np.abs(r)
  out = {"significant_fdr": int(fdr_reject(p, q).sum()), "fdr_q": q,
         "min_p": float(np.nanmin(p)) if np.isfinite(p).any() else None,
         "permutations": int(null_r.shape[0])}
  counts = {}
  if null_r.shape[0]:
    flat = np.abs(null_r.reshape(null_r.shape[0], -1))
    null_max = np.array([np.nanmax(row) if np.isfinite(row).any() else np.nan for row in flat])
    level = float(np.nanquantile(null_max, 0.95)) if np.isfinite(null_max).any() else None
    out["null_max_abs_r_95"] = level
    out["significant_fwer"] = int(np.nansum(abs_r > level)) if level is not None else 0
    for t in thresholds:
      counts[f"{t:g}"] = {"observed": int(np.nansum(abs_r > t)),
                          "null_expected": float(np.mean(np.nansum(flat > t, axis=1)))}
  else:
    out["null_max_abs_r_95"] = None
    out["significant_fwer"] = None
    for t in thresholds:
      counts[f"{t:g}"] = {"observed": int(np.nansum(abs_r > t)), "null_expected": None}
  out["threshold_counts"] = counts
  return out


# --- verification -----------------------------------------------------------------------------

VERDICT_RULE = ("the top-K neurons matter when their accuracy drop exceeds the random sets' at "
                "the 5% level (empirical p = (1 + #{random drops >= top drop}) / (R + 1) <= "
                "0.05, reachable with R >= 19 random draws) and the 95% bootstrap interval over "
                "examples of (top-K drop - mean random drop) lies above 0")


def empirical_p(observed: float, null: np.ndarray) -> float:
  """One-sided permutation-style p-value of `observed` against `null` draws `[R]`:
  (1 + #{null >= observed}) / (R + 1), never 0."""
  null = np.asarray(null, np.float64)
  return float((1 + np.sum(null >= observed)) / (null.size + 1))


def bootstrap_drops(base: np.ndarray, top: np.ndarray, randoms: np.ndarray, *, draws: int = 1000,
                    seed: int = 0) -> dict:
  """95% percentile intervals, over `draws` resamples of the n examples (with replacement, the
  same resample for every run), of the top-K accuracy drop, the mean random drop and their
  difference. base, top: per-example correctness `[n]` without and with the top-K perturbed;
  randoms `[R, n]` with each random set perturbed."""
  runs = np.vstack([base, top, randoms]).astype(np.float64)  # [2 + R, n]
  n = runs.shape[1]
  rng = np.random.default_rng(seed)
  counts = np.zeros((draws, n))
  np.add.at(counts, (np.repeat(np.arange(draws), n), rng.integers(0, n, draws * n)), 1.0)
  means = counts @ runs.T / n  # [draws, 2 + R]: each run's accuracy on each resample
  top_drop = means[:, 0] - means[:, 1]
  random_drop = (means[:, :1] - means[:, 2:]).mean(1)

  def interval(v):
    return [float(x) for x in np.quantile(v, [0.025, 0.975])]
  return {"top_drop_95": interval(top_drop), "random_drop_95": interval(random_drop),
          "difference_95": interval(top_drop - random_drop), "bootstrap_draws": draws}


def verdict(p: float, difference_95: list[float], random_draws: int) -> str:
  """`VERDICT_RULE` applied: "matters", "not shown", or why it cannot be decided."""
  if random_draws < 19:
    return f"undecided: {random_draws} random draws cannot give p <= 0.05 (19 needed)"
  return "matters" if p <= 0.05 and difference_95[0] > 0 else "not shown"


def rank_agreement(scores: list[np.ndarray]) -> float | None:
  """Stability of a ranking across seeds: the mean over seed pairs of Spearman's rank
  correlation of their neuron scores (each `[l, i]`, max |r| over positions), over the neurons
  defined in both; None if no pair has two such neurons."""
  values = []
  for a_i, a in enumerate(scores):
    for b in scores[a_i + 1:]:
      both = np.isfinite(a) & np.isfinite(b)
      if both.sum() >= 2:
        values.append(float(sps.spearmanr(a[both], b[both]).statistic))
  return float(np.mean(values)) if values else None
