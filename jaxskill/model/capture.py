"""Capture sites and auxiliary metrics, computed in one forward pass with the trained prompt.

Sites (which token positions' neuron activations are read):
  prompt      the P prompt positions (infix prompts only: a prefix prompt comes before the input
              in a causal model, so its activations are the same for every example)
  last_input  the last input token
  answer      the position whose next-token logits give the answer (`answer_pos`)
Metrics (one number per example): the built-in ones of `jaxskill.model.forward.METRICS` (label,
confidence, loss, correct, ...; described there, beside the one function that computes them),
plus any numeric metadata column of the task ("meta_<column>") and user functions
`fn(logits, batch) -> [b]` passed by name (`batch` a `jaxskill.model.batch.Batch`; logits
`[b, v]` for
classification; for generation `[b, q, v]` at the answer's q tokens, with `batch` cut to that
window, see `jaxskill.model.forward.prompted_apply`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxskill.model import forward
from jaxskill.model import CausalLM
from jaxskill.model.batch import Batch

SITES = ("prompt", "last_input", "answer")
BUILTIN_METRICS = forward.METRICS
MetricFn = Callable[[jax.Array, Batch], jax.Array]


def site_positions(sites: tuple[str, ...], prompt_length: int, placement: str) -> list[str]:
  """Names of the captured positions, in order, e.g. ["prompt0", ..., "last_input"]."""
  names = []
  for site in sites:
    if site not in SITES:
      raise ValueError(f"unknown capture site {site!r}; valid: {list(SITES)}")
    if site == "prompt":
      if placement != "infix":
        raise ValueError(
            "capture site 'prompt' with a prefix prompt: in a causal model the prompt comes "
            "before the input, so its activations are identical for every example and "
            "correlate with nothing; use an infix prompt or the sites last_input / answer")
      names += [f"prompt{j}" for j in range(prompt_length)]
    else:
      names.append(site)
  return names


def capture_index(batch: Batch, sites: tuple[str, ...], prompt_length: int) -> jax.Array:
  """int `[b, k]` positions of the sites for each row."""
  cols = []
  for site in sites:
    if site == "prompt":
      cols.append(batch.prompt_start[:, None] + jnp.arange(prompt_length)[None])
    elif site == "last_input":
      cols.append((batch.input_end - 1)[:, None])
    else:
      cols.append(batch.answer_pos[:, None])
  return jnp.concatenate(cols, axis=1)


# eq=False: hashed by identity, so that `jax.jit(probe)` works (the verbalizer array has no hash).
@dataclasses.dataclass(frozen=True, eq=False)
class Probe:
  """What a capturing forward reads and computes: the model and its answer head (task kind and
  verbalizer token ids `[c]`), the sites whose activations are read, and the metrics, in order
  (built-in names, "meta_<column>" of the batch's metadata, or names of `custom` functions).
  Calling it runs one batch (see `__call__`)."""
  model: CausalLM
  kind: str
  verbalizer: jax.Array
  sites: tuple[str, ...]
  prompt_length: int
  metric_names: tuple[str, ...]
  custom: Mapping[str, MetricFn] = dataclasses.field(default_factory=dict)

  def __call__(self, prompt, params, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """One forward pass: (activations `[b, l, k, i]`, metrics `[b, m]` in `metric_names` order)."""
    out = forward.prompted_apply(self.model, params, prompt, batch, kind=self.kind,
                                 capture=capture_index(batch, self.sites, self.prompt_length))
    values = forward.metrics(out.logits, out.batch, self.kind, self.verbalizer)
    for name, fn in dict(self.custom).items():
      values[name] = fn(out.logits, out.batch).astype(jnp.float32)
    columns = [values[name] if name in values else batch.metric(name).astype(jnp.float32)
               for name in self.metric_names]
    return out.activations, jnp.stack(columns, axis=1)


def token_activations(probe: Probe, prompt, params, batch: Batch, layers: jax.Array,
                      neurons: jax.Array) -> jax.Array:
  """float32 `[b, t, F]`: the activations of F neurons (neuron `neurons[j]` of layer
  `layers[j]`) at every position of every row, under the prompt: the report's token-coloured
  examples. All positions are captured (`[b, l, t, i]` in the model's dtype, for b rows), then
  the F columns kept."""
  positions = jnp.broadcast_to(jnp.arange(batch.input_ids.shape[1]), batch.input_ids.shape)
  out = forward.prompted_apply(probe.model, params, prompt, batch, kind=None,
                               capture=positions)
  return jnp.moveaxis(out.activations, 2, 1)[:, :, layers, neurons].astype(jnp.float32)


def metadata_columns(metadata: Mapping[str, np.ndarray]) -> list[str]:
  """Numeric metadata columns usable as metrics, as "meta_<column>"."""
  return [f"meta_{k}" for k, v in sorted(metadata.items()) if v.dtype != object]


def mixed_columns(metadata: Mapping[str, np.ndarray]) -> dict[str, str]:
  """{column: why it is no metric} for the text columns that are mostly numbers: a cell such as
  "n/a" among numbers, which makes the whole column text."""
  out = {}
  for key, values in sorted(metadata.items()):
    if values.dtype != object:
      continue
    text = [v for v in values if isinstance(v, str)]
    numbers = sum(isinstance(v, (int, float)) for v in values)
    if numbers and text:
      out[key] = (f"{len(text)} of {len(values)} values are text (e.g. {text[0]!r}) among "
                  "numbers; leave those cells empty to have them left out of the metric")
  return out
