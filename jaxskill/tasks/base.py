"""What a task is: examples with an input, an answer or label, and metadata columns.

Tasks are plain data. Tokenizing, placing the soft prompt and batching belong to
`jaxskill.tasks.encode`;
metadata columns travel with the examples so that a later stage can use any numeric one as an
auxiliary metric.
"""

from __future__ import annotations

import codecs
import dataclasses
import errno
import os
from pathlib import Path
from typing import Iterator, Literal, Mapping

Kind = Literal["classification", "generation"]
SPLITS = ("train", "dev", "test")


class TaskError(ValueError):
  """Bad task data or settings; the message names the file, field and value."""


def require_file(path: Path, what: str = "file") -> None:
  """Raises TaskError unless `path` is a readable file, saying what it is instead: missing, a
  directory, a symlink loop or a dangling link."""
  try:
    if path.is_dir():
      raise TaskError(f"{path}: is a directory, not a {what}")
    path.stat()
  except FileNotFoundError:
    dangling = path.is_symlink()
    raise TaskError(f"{path}: no such {what}"
                    + (f" (a symbolic link to the missing {os.readlink(path)})" if dangling
                       else "")) from None
  except OSError as e:
    reason = "a symbolic link loop" if e.errno == errno.ELOOP else e.strerror
    raise TaskError(f"{path}: cannot be read as a {what} ({reason})") from None


def text_lines(path: Path) -> Iterator[str]:
  """The lines of a UTF-8 data file, line ends kept (as `csv` wants with newline=""), read as
  "utf-8-sig": a leading byte-order mark (Excel's CSV export writes one) is dropped, so the first
  header field keeps its name. Lines are decoded one at a time so that a byte that is not UTF-8
  is reported at its line and file offset, which a text-mode file's chunked decoding loses."""
  offset = 0
  with open(path, "rb") as f:
    for line_no, raw in enumerate(f, start=1):  # splitting on b"\n" is safe: no UTF-8 sequence
      if line_no == 1 and raw.startswith(codecs.BOM_UTF8):  # holds that byte
        raw, offset = raw[len(codecs.BOM_UTF8):], len(codecs.BOM_UTF8)
      try:
        yield raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise TaskError(f"{path}: line {line_no}: not UTF-8 text (byte 0x{raw[e.start]:02x} at "
                        f"file offset {offset + e.start}); save the file as UTF-8") from None
      offset += len(raw)


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


# Fewer examples than this in train or dev: accuracies and correlations are mostly noise.
THIN_SPLIT = 20


def thin_task_warnings(task: Task) -> list[str]:
  """What makes a task train but show nothing: a train or dev split of a few examples, or a
  classification train split of one label (a constant answer scores 100%)."""
  out = []
  for split in ("train", "dev"):
    n = len(task.splits.get(split, ()))
    if n < THIN_SPLIT and (split == "train" or n):
      out.append(f"task {task.name}: the {split} split has {n} example(s) (fewer than "
                 f"{THIN_SPLIT}): its accuracies and correlations are mostly noise")
  seen = {ex.label for ex in task.splits.get("train", ())}
  if task.kind == "classification" and len(seen) == 1:
    out.append(f"task {task.name}: every train example has the label "
               f"{task.verbalizer[seen.pop()]!r}: the prompt can learn only to answer that")
  return out
