"""The batch every model step reads: one typed pytree instead of a dict of named arrays.

Shapes: b rows, t tokens per row (every row has the same t: `jaxskill.tasks.encode` pads to
`data.max_length`). Integer arrays are int32, `valid` and metadata columns float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax.numpy as jnp

Array = Any  # a numpy array on the host, a jax.Array on the devices


@flax.struct.dataclass
class Batch:
  """Rows of an encoded split, in the layout `jaxskill.tasks.encode` describes.

  input_ids, attention_mask: `[b, t]` (mask 1 on real tokens, prompt slots included).
  prompt_index: `[b, t]`, the prompt vector at each position, -1 where the token stays (-2 on
    the tokenizer's special prefix, e.g. a BOS).
  answer_pos: `[b]`, the position whose next-token logits give the answer's first token.
  label: `[b]`, the class (classification; -1 for generation).
  targets, loss_mask: `[b, t]`, the token each position should predict, and whether it counts.
  input_end: `[b]`, one past the last input token; prompt_start: `[b]`, the first prompt slot.
  valid: `[b]` 1.0 for real rows, 0.0 for the padding rows of a split's last batch; None for
    rows taken straight from a split (all real).
  meta: metadata column -> `[b]` float32, for the metrics "meta_<column>"; empty unless asked.
  answer_budget: q, the longest answer in tokens (generation; 0 when unknown or for
    classification): a static field, so that the answer's window `[b, q]` has a static shape.
  """
  input_ids: Array
  attention_mask: Array
  prompt_index: Array
  answer_pos: Array
  label: Array
  targets: Array
  loss_mask: Array
  input_end: Array
  prompt_start: Array
  valid: Array | None = None
  meta: dict = dataclasses.field(default_factory=dict)
  answer_budget: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def size(self) -> int:
    """b, the number of rows."""
    return self.input_ids.shape[0]

  def rows(self, idx) -> "Batch":
    """The rows `idx` (int `[b']`) of every array."""
    return self.replace(**{f.name: _take(getattr(self, f.name), idx)
                           for f in dataclasses.fields(self) if f.name != "answer_budget"})

  def after(self, col: int) -> "Batch":
    """The columns from `col` on, positions counted from there: what a forward that runs the
    first `col` columns as a cache sees of the rest."""
    if not col:
      return self
    cut = {name: getattr(self, name)[:, col:] for name in
           ("input_ids", "attention_mask", "prompt_index", "targets", "loss_mask")}
    moved = {name: getattr(self, name) - col for name in
             ("answer_pos", "input_end", "prompt_start")}
    return self.replace(**cut, **moved)

  def window(self, start: Array, width: int) -> "Batch":
    """Columns start[r] .. start[r] + width - 1 of every row r (start int `[b]`), positions
    counted from start: every `[b, t]` array becomes `[b, width]`. What logits computed only at
    those columns line up with (the answer's tokens, see `jaxskill.model.forward`)."""
    cols = start[:, None] + jnp.arange(width)[None]
    cut = {name: jnp.take_along_axis(getattr(self, name), cols, axis=1) for name in
           ("input_ids", "attention_mask", "prompt_index", "targets", "loss_mask")}
    moved = {name: getattr(self, name) - start for name in
             ("answer_pos", "input_end", "prompt_start")}
    return self.replace(**cut, **moved)

  def metric(self, name: str) -> Array:
    """The metadata metric "meta_<column>" `[b]`."""
    column = name.removeprefix("meta_")
    if not name.startswith("meta_") or column not in self.meta:
      raise KeyError(f"{name!r} is not a metadata metric of this batch (has "
                     f"{sorted('meta_' + c for c in self.meta)})")
    return self.meta[column]


def _take(value, idx):
  if value is None:
    return None
  if isinstance(value, dict):
    return {k: v[idx] for k, v in value.items()}
  return value[idx]
