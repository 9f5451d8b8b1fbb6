"""Neuron interventions as small pytrees that the model applies: nothing in the params changes.

An intervention is a pytree of arrays with a leading layer axis and a `__call__` that maps one
layer's neuron activations `[b, t, i]` to edited ones; `model.apply(..., neuron_edit=edit)`
slices it per layer (the layer scan's `in_axes`) and calls it inside every layer's MLP, at every
position (penzai's `KnockOutAttentionHeads` is the model for this). `NeuronEdit` does
  a <- a * keep + add + noise_std * N(0, 1)
so zeroing (keep 0), replacing by the train mean (keep 0, add mean) and gaussian noise (sigma at
the chosen neurons; 0.1 is the 2022 default) are the same function of different inputs; `Chain`
applies several in order; and since an edit is a pytree of arrays, a batch of counterfactual
runs is a `jax.vmap` over stacked edits (`stack`).

Shapes: l layers, i neurons per layer.
"""

from __future__ import annotations

from typing import Iterable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

MODES = ("zero", "mean", "noise")


@flax.struct.dataclass
class NeuronEdit:
  """`a * keep + add + noise_std * N(0, 1)`, elementwise over the neurons.

  keep, add, noise_std: float32 `[l, i]` (`[i]` once the model has sliced out a layer);
    noise_std None: no noise (nothing is drawn: exactly a * keep + add).
  key: one PRNG key per layer, `[l, 2]` uint32 (`[2]` in a layer); None with noise_std.
  """
  keep: jax.Array
  add: jax.Array
  noise_std: jax.Array | None = None
  key: jax.Array | None = None

  def __call__(self, a: jax.Array) -> jax.Array:
    """One layer's activations `[b, t, i]` -> edited `[b, t, i]`, in a's dtype."""
    out = a * self.keep + self.add
    if self.noise_std is not None:
      out = out + self.noise_std * jax.random.normal(self.key, a.shape, jnp.float32)
    return out.astype(a.dtype)

  def fold_in(self, data) -> "NeuronEdit":
    """The same edit with every layer's key folded with `data` (an int, e.g. the batch index):
    independent noise for each batch of a split."""
    if self.key is None:
      return self
    return self.replace(key=jax.vmap(lambda k: jax.random.fold_in(k, data))(self.key))


@flax.struct.dataclass
class Chain:
  """Several interventions, applied in order in every layer."""
  edits: tuple

  def __call__(self, a: jax.Array) -> jax.Array:
    """`[b, t, i]` -> `[b, t, i]`: each edit applied to the output of the one before."""
    for edit in self.edits:
      a = edit(a)
    return a

  def fold_in(self, data) -> "Chain":
    """Every edit's keys folded with `data` (see `NeuronEdit.fold_in`)."""
    return Chain(tuple(e.fold_in(data) for e in self.edits))


def stack(edits: list) -> NeuronEdit:
  """Edits of the same structure stacked on a new leading axis `[e, ...]`, to `jax.vmap` a
  forward over them (`in_axes=0` for the edit)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *edits)


def stack_uniform(edits: list[NeuronEdit], width: int) -> NeuronEdit:
  """`stack` of `edits` in one structure and count, `[width, ...]`: an edit without noise gets
  noise_std 0 (a * keep + add + 0 * N(0, 1) is a * keep + add exactly, the draw being finite)
  and the list is padded with the identity edit, so that every batch of counterfactual runs
  compiles to one program whatever its modes and number of edits (<= width)."""
  if not 0 < len(edits) <= width:
    raise ValueError(f"stack_uniform: {len(edits)} edits for a width of {width}")
  keep = edits[0].keep
  no_key = jax.random.split(jax.random.PRNGKey(0), keep.shape[0])
  identity = NeuronEdit(jnp.ones_like(keep), jnp.zeros_like(keep))
  def noisy(e: NeuronEdit) -> NeuronEdit:
    return e if e.noise_std is not None else e.replace(noise_std=jnp.zeros_like(keep), key=no_key)
  return stack([noisy(e) for e in [*edits, *[identity] * (width - len(edits))]])


def neuron_edit(num_layers: int, num_neurons: int, neurons: Iterable[tuple[int, int]],
                mode: str, *, sigma: float = 0.1, mean: np.ndarray | None = None,
                key: jax.Array | None = None, scale: np.ndarray | None = None) -> NeuronEdit:
  """The edit for `neurons` [(layer, neuron), ...].

  mode: "zero", "mean" (needs `mean` `[layers, neurons]`, e.g. the train-split mean activation)
    or "noise" (needs `key`; adds sigma * scale * N(0, 1) at every position, `scale`
    `[layers, neurons]` e.g. each neuron's std, or 1 when None).
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
  if mode in ("zero", "mean"):
    keep[chosen] = 0.0
  if mode == "mean":
    if mean is None or np.shape(mean) != (num_layers, num_neurons):
      raise ValueError(f"mode 'mean' needs mean of shape {(num_layers, num_neurons)}")
    add[chosen] = np.asarray(mean, np.float32)[chosen]
  if mode != "noise":
    return NeuronEdit(jnp.asarray(keep), jnp.asarray(add))
  if key is None:
    raise ValueError("mode 'noise' needs a PRNG key")
  noise_std = np.zeros((num_layers, num_neurons), np.float32)
  noise_std[chosen] = sigma
  if scale is not None:
    noise_std *= np.asarray(scale, np.float32)
  return NeuronEdit(jnp.asarray(keep), jnp.asarray(add), jnp.asarray(noise_std),
                    jax.random.split(key, num_layers))
