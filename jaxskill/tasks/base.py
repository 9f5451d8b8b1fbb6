"""What a task is: examples with an input, an answer or label, and metadata columns.

Tasks are plain data. Tokenizing, placing the soft prompt and batching belong to `jaxskill.data`;
metadata columns travel with the examples so that a later stage can use any numeric one as an
auxiliary metric.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Mapping

Kind = Literal["classification", "generation"]
SPLITS = ("train", "dev", "test")


class TaskError(ValueError):
  """Bad task data or settings; the message names the file, field and value."""


@dataclasses.dataclass(frozen=True)
class Example:
  """One example.

  input: the text before the soft prompt (`[input][prompt][answer]`).
  answer: the text that follows: for generation the target; for classification the label's
    verbalizer word (`task.verbalizer[label]`).
  label: classification only, an index into `task.verbalizer`.
  metadata: other columns (numbers or strings), e.g. `{"digits": 2, "last_digit_only": 1}`.
  """
  input: str
  answer: str
  label: int | None = None
  metadata: Mapping[str, float | int | str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Task:
  """name, kind, verbalizer (classification: one word per label, e.g. (" yes", " no")) and the
  examples of each split ("train", "dev", "test")."""
  name: str
  kind: Kind
  splits: Mapping[str, tuple[Example, ...]]
  verbalizer: tuple[str, ...] = ()

  def __post_init__(self):
    if self.kind not in ("classification", "generation"):
      raise TaskError(f"task '{self.name}': kind must be classification or generation, "
                      f"got {self.kind!r}")
    if self.kind == "classification" and len(self.verbalizer) < 2:
      raise TaskError(f"task '{self.name}': a classification task needs at least 2 "
                      f"verbalizer words, got {self.verbalizer!r}")
    for split, examples in self.splits.items():
      for i, ex in enumerate(examples):
        if self.kind == "classification" and not (
            isinstance(ex.label, int) and 0 <= ex.label < len(self.verbalizer)):
          raise TaskError(f"task '{self.name}': {split} example {i} has label {ex.label!r} "
                          f"outside the verbalizer {self.verbalizer!r}")
