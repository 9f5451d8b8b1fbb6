"""Which neurons: ranking by |r|, top-K and top-p per layer, set overlap, and the random sets
matched per layer that verification compares the top-K against.

Shapes: l layers, k captured positions, i neurons per layer.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from jaxtyping import Float, Int


def neuron_scores(r: Float[np.ndarray, "l k i"]
                  ) -> tuple[Float[np.ndarray, "l i"], Int[np.ndarray, "l i"]]:
  """r `[l, k, i]` -> (max |r| over positions `[l, i]`, NaN if all undefined; the argmax
  position `[l, i]`)."""
  a = np.abs(r)
  filled = np.where(np.isnan(a), -1.0, a)
  pos = filled.argmax(axis=1)
  best = np.take_along_axis(filled, pos[:, None], axis=1)[:, 0]
  return np.where(best < 0, np.nan, best), pos


def top_k(scores: Float[np.ndarray, "l i"], k: int) -> list[tuple[int, int]]:
  """(layer, neuron) of the k largest scores `[l, i]`, NaN never ranked."""
  flat = np.where(np.isnan(scores), -np.inf, scores).ravel()
  order = np.argsort(-flat, kind="stable")[:k]
  return [tuple(int(v) for v in np.unravel_index(j, scores.shape)) for j in order
          if np.isfinite(flat[j])]


def top_p_per_layer(scores: Float[np.ndarray, "l i"], p: float) -> list[tuple[int, int]]:
  """(layer, neuron) of the largest scores `[l, i]` in each layer: the top ceil(p * i) (at least
  one) of every layer, NaN never ranked."""
  per_layer = max(1, int(np.ceil(p * scores.shape[1])))
  chosen = []
  for layer, row in enumerate(scores):
    finite = np.where(np.isnan(row), -np.inf, row)
    chosen += [(layer, int(j)) for j in np.argsort(-finite, kind="stable")[:per_layer]
               if np.isfinite(finite[j])]
  return chosen


def iou(a: Iterable[tuple[int, int]], b: Iterable[tuple[int, int]]) -> float:
  """Intersection over union of two collections of (layer, neuron); NaN if both are empty."""
  a, b = set(a), set(b)
  return len(a & b) / len(a | b) if a | b else float("nan")


def random_matched(chosen: list[tuple[int, int]], num_neurons: int,
                   rng: np.random.Generator) -> list[tuple[int, int]]:
  """As many neurons per layer as `chosen` has there, uniformly among that layer's neurons
  outside `chosen`."""
  per_layer: dict[int, set[int]] = {}
  for layer, neuron in chosen:
    per_layer.setdefault(layer, set()).add(neuron)
  out = []
  for layer in sorted(per_layer):
    pool = np.setdiff1d(np.arange(num_neurons), sorted(per_layer[layer]))
    picks = rng.choice(pool, size=min(len(per_layer[layer]), len(pool)), replace=False)
    out += [(layer, int(j)) for j in np.sort(picks)]
  return out
