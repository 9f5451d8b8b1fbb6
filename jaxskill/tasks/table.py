"""A task from a user's table: JSON Lines (`.jsonl`, one object per line) or CSV (`.csv`;
`.tsv` is read tab-separated).

Each record gives an input text and either an answer (generation) or a label (classification, when
`label_field` is set). A label is one of the verbalizer words `labels` (compared with surrounding
whitespace ignored, so "yes" in the file matches " yes") or an integer index into them (not when
the words are themselves integers: see `parse_label`). The answer of a generation record is used
verbatim (include the leading space you want the model to produce).

Splits: with `split_field`, that field names the split ("train", "dev" or "test"; "validation" and
"val" mean "dev"); without it, a hash of the input text picks the split (see
`jaxskill.tasks.splitting`), so equal inputs always share a split.

Every other field is kept as metadata: numbers as float (in CSV, any cell that parses as a finite
number), bools as 1.0 / 0.0, other strings as strings; empty CSV cells, nulls, lists and objects
are left out.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator, Sequence

from jaxskill.tasks.base import Example, Task, TaskError, require_file, text_lines
from jaxskill.tasks.splitting import check_fractions, check_limits, hash_split, shuffle_and_limit

SPLIT_NAMES = {"train": "train", "dev": "dev", "test": "test", "validation": "dev", "val": "dev"}
_FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}


# --- reading --------------------------------------------------------------------------------

class _DuplicateKey(ValueError):
  pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  """json.loads would keep the last of two equal keys, silently."""
  out = {}
  for key, value in pairs:
    if key in out:
      raise _DuplicateKey(key)
    out[key] = value
  return out


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, object) for every non-blank line."""
  with closing(text_lines(path)) as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        record = json.loads(line, object_pairs_hook=_unique_keys)
      except _DuplicateKey as e:
        raise TaskError(f"{path}: line {line_no}: the field {e.args[0]!r} appears more than "
                        "once in one object; only one value can be meant") from None
      except json.JSONDecodeError as e:
        raise TaskError(f"{path}: line {line_no}: malformed JSON ({e.msg} at column {e.colno}): "
                        f"{line.strip()[:80]!r}") from None
      if not isinstance(record, dict):
        raise TaskError(f"{path}: line {line_no}: expected a JSON object, got "
                        f"{type(record).__name__} {line.strip()[:80]!r}")
      yield line_no, record


def _csv_records(path: Path, delimiter: str) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, row) for every row; cells missing from a short row are absent."""
  with closing(text_lines(path)) as f:
    reader = csv.reader(f, delimiter=delimiter)
    try:
      header = next(reader, [])
      _check_header(path, header)
      for row in reader:
        if len(row) > len(header):
          raise TaskError(f"{path}: line {reader.line_num}: {len(row)} values for the "
                          f"{len(header)} columns of the header {header}")
        if row:  # csv.DictReader's rule: a blank line is no record
          yield reader.line_num, dict(zip(header, row))
    except csv.Error as e:
      what = (r"a carriage return (\r) ends a line without \n (old Mac line ends); save the "
              r"file with \n or \r\n line ends" if "new-line character" in str(e)
              else f"malformed CSV ({e})")
      raise TaskError(f"{path}: line {reader.line_num}: {what}") from None


def _check_header(path: Path, header: list[str]) -> None:
  """A column named twice would silently lose one of its values in every row."""
  seen = set()
  for name in header:
    if name in seen:
      raise TaskError(f"{path}: line 1: the column {name!r} appears {header.count(name)} times "
                      f"in the header {header}; rename or remove all but one")
    seen.add(name)


def read_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
  """(line number, record) of a JSONL or CSV file. Raises TaskError for a missing file, an
  unknown extension, a malformed line or a file without records."""
  path = Path(path)
  require_file(path)
  fmt = _FORMATS.get(path.suffix.lower())
  if fmt is None:
    raise TaskError(f"{path}: unknown table format {path.suffix!r}; expected one of "
                    f"{sorted(_FORMATS)}")
  if fmt == "jsonl":
    records = list(_jsonl_records(path))
  else:
    records = list(_csv_records(path, "," if fmt == "csv" else "\t"))
  if not records:
    raise TaskError(f"{path}: empty data set (no records)")
  return records


# --- fields ---------------------------------------------------------------------------------

def _text(record: dict[str, Any], field: str, where: str) -> str:
  """A required text field; numbers are written as text."""
  if field not in record:
    raise TaskError(f"{where}: missing field {field!r} (fields: {sorted(record)})")
  value = record[field]
  if isinstance(value, str):
    return value
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return str(value)
  raise TaskError(f"{where}: field {field!r} must be text, got {value!r}")


def parse_label(value: Any, labels: Sequence[str], where: str, field: str) -> int:
  """A verbalizer word (whitespace-insensitive) or an integer index -> label index.

  When a verbalizer word is itself an integer (labels "1", "2"), values are only matched as words
  (the number 1 and the text "1" both mean "1"), never as indices, so that "0" cannot silently
  mean the word "1".
  """
  words = [w.strip() for w in labels]
  numeral_words = any(_is_int(w) for w in words)
  text = str(value).strip() if numeral_words and _is_int(value) else value
  if isinstance(text, str) and text.strip() in words:
    return words.index(text.strip())
  if not numeral_words:
    index = int(value.strip()) if isinstance(value, str) and _is_int(value) else value
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(labels):
      return index
  accepted = "a word" if numeral_words else f"a word or an index 0..{len(labels) - 1}"
  raise TaskError(f"{where}: field {field!r} has label {value!r} outside the verbalizer "
                  f"{list(labels)} ({accepted})")


def _is_int(value: Any) -> bool:
  """An int (not a bool) or a text like "3" / "-1"."""
  if isinstance(value, str):
    return re.fullmatch(r"-?[0-9]+", value.strip()) is not None
  return isinstance(value, int) and not isinstance(value, bool)


def _metadata_value(value: Any) -> float | str | None:
  """float for numbers, bools and numeric strings; other strings as is; None to leave out."""
  if isinstance(value, bool):
    return float(value)
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str):
    if not value.strip():
      return None
    try:
      number = float(value)
    except ValueError:
      return value
    return number if math.isfinite(number) else value
  return None


def _split(record: dict[str, Any], split_field: str, where: str) -> str:
  value = _text(record, split_field, where)
  split = SPLIT_NAMES.get(value.strip().lower())
  if split is None:
    raise TaskError(f"{where}: field {split_field!r} has unknown split {value!r}; expected one "
                    f"of {sorted(SPLIT_NAMES)}")
  return split


# --- task -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Columns:
  """The record fields a table task reads (the run config's task.input_field, answer_field,
  label_field, labels, split_field): the input text; the answer (generation) or the label and
  its verbalizer words `labels` (classification); the split (None: a hash of the input)."""
  input: str
  answer: str | None = None
  label: str | None = None
  labels: Sequence[str] = ()
  split: str | None = None


def table(path: str | Path, columns: Columns, *, n_train: int | None = None,
          n_dev: int | None = None, n_test: int | None = None, seed: int = 0,
          dev_fraction: float = 0.1, test_fraction: float = 0.1) -> Task:
  """A classification task (when `columns.label` is given; `columns.labels` are the verbalizer
  words) or a generation task (`columns.answer` required). Named after the file's stem.

  `n_*` keep a seeded random subset of each split (None: all). Every record field other than the
  input, answer, label and split fields is kept as metadata (see the module docstring).
  """
  path = Path(path)
  name = path.stem
  columns = dataclasses.replace(columns, labels=_check_fields(name, columns))
  check_fractions(name, dev_fraction, test_fraction)
  limits = {"train": n_train, "dev": n_dev, "test": n_test}
  check_limits(name, limits)

  reserved = {columns.input, columns.answer, columns.label, columns.split} - {None, ""}
  splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
  for line_no, record in read_records(path):
    where = f"{path}: line {line_no}"
    example = _example(record, where, columns, reserved)
    split = (_split(record, columns.split, where) if columns.split
             else hash_split(example.input, dev_fraction, test_fraction))
    splits[split].append(example)
  return Task(name=name, kind="classification" if columns.label else "generation",
              verbalizer=tuple(columns.labels), splits=shuffle_and_limit(splits, limits, seed))


def _check_fields(name: str, columns: Columns) -> tuple[str, ...]:
  """`columns.labels` as a tuple; raises TaskError unless the fields and labels fit one task
  kind."""
  input_field, answer_field, label_field, labels = (columns.input, columns.answer, columns.label,
                                                    columns.labels)
  if not input_field:
    raise TaskError(f"task '{name}': input_field is required")
  if label_field and answer_field:
    raise TaskError(f"task '{name}': give label_field (classification) or answer_field "
                    f"(generation), not both")
  if not label_field and not answer_field:
    raise TaskError(f"task '{name}': give label_field (classification) or answer_field "
                    f"(generation)")
  labels = tuple(labels)
  if label_field and len(labels) < 2:
    raise TaskError(f"task '{name}': classification (label_field={label_field!r}) needs at "
                    f"least 2 verbalizer words in labels, got {list(labels)}")
  if not label_field and labels:
    raise TaskError(f"task '{name}': labels {list(labels)} given without label_field")
  if len({w.strip() for w in labels}) < len(labels):
    raise TaskError(f"task '{name}': labels {list(labels)} are not distinct")
  return labels


def _example(record: dict[str, Any], where: str, columns: Columns, reserved: set[str]) -> Example:
  """One record as an Example; fields outside `reserved` become metadata."""
  answer_field, label_field, labels = columns.answer, columns.label, tuple(columns.labels)
  text = _text(record, columns.input, where)
  if label_field:
    if label_field not in record:
      raise TaskError(f"{where}: missing field {label_field!r} (fields: {sorted(record)})")
    label = parse_label(record[label_field], labels, where, label_field)
    answer = labels[label]
  else:
    label, answer = None, _text(record, answer_field, where)
  metadata = {k: v for k, v in ((k, _metadata_value(v)) for k, v in record.items()
                                if k not in reserved) if v is not None}
  return Example(input=text, answer=answer, label=label, metadata=metadata)
