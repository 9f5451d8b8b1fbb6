"""Activation densities per group of examples: what the report's figures and the neuron browser
draw for a neuron (one curve per label value or metric tertile).

Shapes: n examples, points: the grid's."""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Float, Real


def kde(samples: Real[np.ndarray, "..."], grid: Float[np.ndarray, "points"]
        ) -> Float[np.ndarray, "points"]:
  """Gaussian kernel density of `samples` (any shape; non-finite values dropped) on the 1-D
  `grid`: float64, `grid`'s shape. Silverman's bandwidth 0.9 * min(std, IQR / 1.34) * n^(-1/5)
  (a point mass gets a small floor width)."""
  x = np.asarray(samples, np.float64)
  x = x[np.isfinite(x)]
  if x.size == 0:
    return np.zeros_like(grid, dtype=np.float64)
  iqr = np.subtract(*np.percentile(x, [75, 25]))
  spread = min(x.std(), iqr / 1.34) if iqr > 0 else x.std()
  span = np.ptp(grid) if grid.size > 1 else 1.0
  h = max(0.9 * spread * x.size ** -0.2, 1e-3 * span, 1e-12)
  z = (grid[:, None] - x[None, :]) / h
  return np.exp(-0.5 * z * z).sum(1) / (x.size * h * np.sqrt(2 * np.pi))


def metric_groups(values: Real[np.ndarray, "n"], name: str
                  ) -> list[tuple[str, Bool[np.ndarray, "n"]]]:
  """(label, mask bool `[n]`) groups of examples for a metric's values `[n]` (non-finite ones in
  no group): one per value when it takes at most 5 values (labels, 0/1 metadata), else tertiles."""
  finite = np.isfinite(values)
  distinct = np.unique(values[finite])
  if distinct.size <= 5:
    return [(f"{name}={v:g}", finite & (values == v)) for v in distinct]
  lo, hi = np.quantile(values[finite], [1 / 3, 2 / 3])
  return [(f"{name} low (< {lo:.3g})", finite & (values < lo)),
          (f"{name} mid", finite & (values >= lo) & (values < hi)),
          (f"{name} high (>= {hi:.3g})", finite & (values >= hi))]
