"""HANS (McCoy et al. 2019) from the official `heuristics_evaluation_set.txt`.

The file is tab-separated with a header: gold_label, sentence1_binary_parse, sentence2_binary_parse,
sentence1_parse, sentence2_parse, sentence1, sentence2, pairID, heuristic, subcase, template.
HANS has no train/dev/test split of its own, so examples are split by a hash of pairID (see
`jaxskill.tasks.splitting`): the split never depends on the seed.

Input: "Premise: {sentence1}\\nHypothesis: {sentence2}\\nDoes the premise entail the hypothesis?"
with the file's tokenized punctuation re-attached ("The doctor saw the actor ." ->
"The doctor saw the actor."). Verbalizer (" yes", " no"): label 0 = entailment,
1 = non-entailment.
"""

from __future__ import annotations

import csv
import re
from contextlib import closing
from pathlib import Path

from jaxskill.tasks.base import Example, Task, TaskError, require_file, text_lines
from jaxskill.tasks.splitting import check_fractions, check_limits, hash_split, shuffle_and_limit

VERBALIZER = (" yes", " no")
LABELS = {"entailment": 0, "non-entailment": 1}
HEURISTICS = ("lexical_overlap", "subsequence", "constituent")
REQUIRED = ("gold_label", "sentence1", "sentence2", "pairID", "heuristic", "subcase", "template")

_PUNCT = re.compile(r" ([.,!?;:])")


def detokenize(sentence: str) -> str:
  """Removes the space HANS puts before punctuation."""
  return _PUNCT.sub(r"\1", sentence.strip())


def render(premise: str, hypothesis: str) -> str:
  """The input text of one pair (see the module docstring), punctuation re-attached."""
  return (f"Premise: {detokenize(premise)}\nHypothesis: {detokenize(hypothesis)}\n"
          "Does the premise entail the hypothesis?")


def _example(row: dict[str, str], where: str) -> Example:
  """One row (all REQUIRED columns present) -> Example; `where` is "file: line N" for errors."""
  gold = row["gold_label"].strip()
  if gold not in LABELS:
    raise TaskError(f"{where}: column 'gold_label' has unknown value {gold!r}; "
                    f"expected one of {list(LABELS)}")
  heuristic = row["heuristic"].strip()
  if heuristic not in HEURISTICS:
    raise TaskError(f"{where}: column 'heuristic' has unknown value {heuristic!r}; "
                    f"expected one of {list(HEURISTICS)}")
  label = LABELS[gold]
  metadata: dict[str, float | int | str] = {
      "heuristic": heuristic, "subcase": row["subcase"].strip(),
      "template": row["template"].strip(), "pairID": row["pairID"].strip()}
  for h in HEURISTICS:
    metadata[f"heuristic_{h}"] = int(heuristic == h)
  return Example(input=render(row["sentence1"], row["sentence2"]), answer=VERBALIZER[label],
                 label=label, metadata=metadata)


def read_hans(path: str | Path) -> list[Example]:
  """All examples of a HANS TSV, in file order. Errors name the file, line, column and value."""
  path = Path(path)
  require_file(path, "HANS file")
  with closing(text_lines(path)) as f:
    reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    header = reader.fieldnames
    if not header:
      raise TaskError(f"{path}: empty file (no header line)")
    for column in REQUIRED:
      if column not in header:
        raise TaskError(f"{path}: line 1: missing required column {column!r} "
                        f"(header has {header})")
    examples, seen = [], {}
    for row in reader:
      where = f"{path}: line {reader.line_num}"
      if None in row:
        raise TaskError(f"{where}: {len(header) + len(row[None])} values for "
                        f"{len(header)} columns")
      for column in REQUIRED:
        if row[column] is None:
          raise TaskError(f"{where}: column {column!r} is missing (only "
                          f"{sum(v is not None for v in row.values())} values)")
      ex = _example(row, where)
      pair = ex.metadata["pairID"]
      if pair in seen:
        raise TaskError(f"{where}: column 'pairID' value {pair!r} repeats line {seen[pair]}")
      seen[pair] = reader.line_num
      examples.append(ex)
  if not examples:
    raise TaskError(f"{path}: no examples after the header")
  return examples


def hans(path: str | Path, n_train: int | None = None, n_dev: int | None = None,
         n_test: int | None = None, seed: int = 0, dev_fraction: float = 0.1,
         test_fraction: float = 0.1) -> Task:
  """The HANS classification task (labels: 0 entailment, 1 non-entailment).

  Splits by hash of pairID (fractions as given); `n_*` keep a seeded random subset (None: all).
  metadata: heuristic, subcase, template, pairID (strings) and heuristic_lexical_overlap,
  heuristic_subsequence, heuristic_constituent (0/1).
  """
  check_fractions("hans", dev_fraction, test_fraction)
  limits = {"train": n_train, "dev": n_dev, "test": n_test}
  check_limits("hans", limits)
  splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
  for ex in read_hans(path):
    splits[hash_split(str(ex.metadata["pairID"]), dev_fraction, test_fraction)].append(ex)
  return Task(name="hans", kind="classification", verbalizer=VERBALIZER,
              splits=shuffle_and_limit(splits, limits, seed))
