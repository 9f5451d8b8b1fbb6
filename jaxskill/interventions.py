"""Neuron interventions as plain inputs to the model: nothing in the params changes.

`neuron_edit(...)` builds a pytree of `[layers, neurons]` arrays (plus one PRNG key per layer)
that `model.apply(..., neuron_edit=edit)` applies inside every layer's MLP, at every position:
  a <- a * keep + add + noise_std * N(0, 1)
so zeroing (keep 0), replacing by the train mean (keep 0, add mean) and gaussian noise (sigma at
the chosen neurons; 0.1 is the 2022 default) are the same function of different inputs, and a
batch of counterfactual runs is a vmap over edits.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

MODES = ("zero", "mean", "noise")


def neuron_edit(num_layers: int, num_neurons: int, neurons: Iterable[tuple[int, int]],
                mode: str, *, sigma: float = 0.1, mean: np.ndarray | None = None,
                key: jax.Array | None = None) -> dict:
  """The edit for `neurons` [(layer, neuron), ...].

  mode: "zero", "mean" (needs `mean` `[layers, neurons]`, e.g. the train-split mean activation)
    or "noise" (needs `key`; adds sigma * N(0, 1) at every position).
  """
  if mode not in MODES:
    raise ValueError(f"intervention mode must be one of {list(MODES)}, got {mode!r}")
  chosen = np.zeros((num_layers, num_neurons), bool)
  for layer, neuron in neurons:
    if not (0 <= layer < num_layers and 0 <= neuron < num_neurons):
      raise ValueError(f"neuron (layer {layer}, neuron {neuron}) is outside "
                       f"[{num_layers} layers x {num_neurons} neurons]")
    chosen[layer, neuron] = True
  keep = np.ones((num_layers, num_neurons), np.float32)
  add = np.zeros((num_layers, num_neurons), np.float32)
  noise_std = np.zeros((num_layers, num_neurons), np.float32)
  if mode in ("zero", "mean"):
    keep[chosen] = 0.0
  if mode == "mean":
    if mean is None or np.shape(mean) != (num_layers, num_neurons):
      raise ValueError(f"mode 'mean' needs mean of shape {(num_layers, num_neurons)}")
    add[chosen] = np.asarray(mean, np.float32)[chosen]
  if mode == "noise":
    if key is None:
      raise ValueError("mode 'noise' needs a PRNG key")
    noise_std[chosen] = sigma
  keys = jax.random.split(key if key is not None else jax.random.PRNGKey(0), num_layers)
  return {"keep": jnp.asarray(keep), "add": jnp.asarray(add), "noise_std": jnp.asarray(noise_std),
          "key": keys}
