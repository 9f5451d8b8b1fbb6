"""Tasks: arithmetic content checked against Python's own arithmetic, HANS and table files read
from fixtures in the official / user formats, and every error message."""

import collections
import csv
import hashlib
import json
import random
import re

import pytest

from jaxskill.tasks import (SPLITS, Columns, Task, TaskConfig, TaskError, arithmetic_generation,
                            arithmetic_verification, build_task, hans, table)
from jaxskill.tasks import arithmetic

OPS = ("plus", "minus", "times", "divided by")
PY_OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


def truth_of(op, a, b):
  """Python's arithmetic, independent of the module's `evaluate`."""
  if op == "divided by":
    assert b != 0 and a % b == 0, (a, b)
    return a // b
  return PY_OPS[op](a, b)


def all_examples(task):
  return [(split, ex) for split in SPLITS for ex in task.splits[split]]


def small(builder, **kw):
  args = dict(operations=OPS, digits=(1, 2, 3), n_train=120, n_dev=36, n_test=48, seed=3)
  args.update(kw)
  return builder(**args)


# --- arithmetic: generation ------------------------------------------------------------------

def test_generation_content_matches_python_arithmetic():
  task = small(arithmetic_generation)
  assert task.kind == "generation" and task.verbalizer == ()
  assert {s: len(task.splits[s]) for s in SPLITS} == {"train": 120, "dev": 36, "test": 48}
  for _, ex in all_examples(task):
    m = ex.metadata
    op, a, b, d = m["operation"], m["a"], m["b"], m["digits"]
    r = truth_of(op, a, b)
    assert ex.input == f"Q: What is {a} {op} {b}?\nA:"
    assert ex.answer == f" {r}"
    assert m["result"] == r and m["result_last_digit"] == int(str(abs(r))[-1])
    assert ex.label is None
    # n digits: the larger operand (division: of divisor and quotient) has exactly n digits.
    big = max(b, r) if op == "divided by" else max(a, b)
    assert len(str(big)) == d, (op, a, b, d)


@pytest.mark.parametrize("op", ["plus", "divided by"])
def test_two_digit_operands(op):
  # Rare cases (both operands below 10, ~1% of draws) need a large sample to show up.
  task = arithmetic_generation(operations=(op,), digits=(2,), n_train=3000, n_dev=0, n_test=0)
  pairs = [(e.metadata["a"], e.metadata["b"], e.metadata["result"]) for e in task.splits["train"]]
  if op == "divided by":
    pairs = [(b, r, a) for a, b, r in pairs]  # divisor and quotient are the 2-digit numbers
  assert all(max(x, y) >= 10 and 0 <= min(x, y) and max(x, y) < 100 for x, y, _ in pairs)
  # Every value of 0..99 is allowed, except a divisor of 0.
  assert min(x for x, _, _ in pairs) == (1 if op == "divided by" else 0)
  assert min(y for _, y, _ in pairs) == 0


def test_generation_subtasks_balanced_and_negative_subtraction_present():
  task = small(arithmetic_generation)
  for split in SPLITS:
    counts = collections.Counter((e.metadata["operation"], e.metadata["digits"])
                                 for e in task.splits[split])
    assert len(counts) == 12 and max(counts.values()) - min(counts.values()) <= 1
  assert any(e.metadata["result"] < 0 for _, e in all_examples(task))


def test_no_problem_repeats_within_or_across_splits():
  task = small(arithmetic_generation, digits=(1,), n_train=200, n_dev=80, n_test=80)
  triples = {s: [(e.metadata["a"], e.metadata["b"], e.metadata["operation"])
                 for e in task.splits[s]] for s in SPLITS}
  for s in SPLITS:
    assert len(set(triples[s])) == len(triples[s])
  assert not set(triples["train"]) & set(triples["dev"])
  assert not set(triples["train"]) & set(triples["test"])
  assert not set(triples["dev"]) & set(triples["test"])


def test_exhausting_a_subtask_gives_every_problem_once():
  # 1-digit division has exactly 90 problems (b in 1..9, quotient in 0..9).
  task = arithmetic_generation(operations=("divided by",), digits=(1,), n_train=70, n_dev=10,
                               n_test=10, seed=0)
  got = {(e.metadata["a"], e.metadata["b"]) for _, e in all_examples(task)}
  assert got == {(b * q, b) for b in range(1, 10) for q in range(10)}


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("d", [1, 2])
def test_pool_size_matches_enumeration(op, d):
  hi, lo = 10**d, (10 ** (d - 1) if d > 1 else 0)
  if op == "divided by":
    n = sum(1 for b in range(1, hi) for q in range(hi) if max(b, q) >= lo)
  else:
    n = sum(1 for a in range(hi) for b in range(hi) if max(a, b) >= lo)
  assert arithmetic.pool_size(op, d) == n


def test_same_seed_same_task_other_seed_other_task():
  a, b = small(arithmetic_generation), small(arithmetic_generation)
  assert a == b
  c = small(arithmetic_generation, seed=4)
  assert [e.input for _, e in all_examples(a)] != [e.input for _, e in all_examples(c)]
  v1, v2 = small(arithmetic_verification), small(arithmetic_verification)
  assert v1 == v2
  v3 = small(arithmetic_verification, seed=4)
  assert [e.input for _, e in all_examples(v1)] != [e.input for _, e in all_examples(v3)]


# --- arithmetic: verification ----------------------------------------------------------------

CANDIDATE = re.compile(r"^Q: What is (\d+) (plus|minus|times|divided by) (\d+)\?\nA: (-?\d+)\n"
                       r"Correct\?$")


def test_verification_content():
  task = small(arithmetic_verification, n_train=200, n_dev=40, n_test=60)
  assert task.kind == "classification" and task.verbalizer == (" yes", " no")
  kinds = collections.Counter()
  for _, ex in all_examples(task):
    m = ex.metadata
    a, op, b, c = CANDIDATE.match(ex.input).groups()
    a, b, c = int(a), int(b), int(c)
    t = truth_of(op, a, b)
    assert (a, b, op, c, t) == (m["a"], m["b"], m["operation"], m["candidate"], m["truth"])
    ok = c == t
    assert m["correct"] == int(ok) and ex.label == (0 if ok else 1)
    assert ex.answer == (" yes" if ok else " no")
    ts, cs = str(t), str(c)
    assert m["candidate_last_digit_correct"] == int(ts[-1] == cs[-1])
    if ok:
      assert m["last_digit_only"] == 0
      kinds["correct"] += 1
    elif m["last_digit_only"]:
      assert cs[:-1] == ts[:-1] and cs[-1] != ts[-1], (t, c)
      kinds["last"] += 1
    else:
      assert c != t and cs[-1] == ts[-1] and (c < 0) == (t < 0), (t, c)
      kinds["elsewhere"] += 1
  assert kinds == {"correct": 150, "last": 75, "elsewhere": 75}


def test_verification_shares_per_split_are_exact():
  task = small(arithmetic_verification, n_train=101, n_dev=20, n_test=30, p_correct=0.3,
               p_last_digit_wrong=0.8)
  for split, n in (("train", 101), ("dev", 20), ("test", 30)):
    exs = task.splits[split]
    n_correct = round(0.3 * n)
    assert sum(e.metadata["correct"] for e in exs) == n_correct
    assert sum(e.metadata["last_digit_only"] for e in exs) == round(0.8 * (n - n_correct))


def test_verification_asks_about_the_generation_problems():
  gen, ver = small(arithmetic_generation), small(arithmetic_verification)
  for split in SPLITS:
    key = lambda e: (e.metadata["operation"], e.metadata["a"], e.metadata["b"])
    assert [key(e) for e in gen.splits[split]] == [key(e) for e in ver.splits[split]]


def test_verification_extremes():
  all_right = small(arithmetic_verification, p_correct=1.0)
  assert {e.label for _, e in all_examples(all_right)} == {0}
  last_only = small(arithmetic_verification, p_correct=0.0, p_last_digit_wrong=1.0)
  assert {(e.label, e.metadata["last_digit_only"]) for _, e in all_examples(last_only)} == {(1, 1)}


@pytest.mark.parametrize("truth", [0, 5, -5, -1, 9, 10, -10, 99, 100, -907, 12345, 100000])
def test_wrong_candidates_on_edge_values(truth):
  rng = random.Random(0)
  for _ in range(200):
    c = arithmetic.wrong_last_digit(truth, rng)
    assert str(c)[:-1] == str(truth)[:-1] and str(c)[-1] != str(truth)[-1], (truth, c)
    c = arithmetic.wrong_elsewhere(truth, rng)
    assert c != truth and str(c)[-1] == str(truth)[-1] and (c < 0) == (truth < 0), (truth, c)


@pytest.mark.parametrize("kw, message", [
    (dict(operations=("plus", "modulo")), "unknown operation 'modulo'"),
    (dict(operations=()), "operations is empty"),
    (dict(digits=(0,)), "digits must be positive integers, got 0"),
    (dict(n_dev=-1), "n_dev must be a non-negative integer, got -1"),
    (dict(n_train=0, n_dev=0, n_test=0), "no examples"),
    (dict(operations=("divided by",), digits=(1,), n_train=91, n_dev=0, n_test=0),
     "1-digit 'divided by' has only 90 distinct problems, 91 are needed"),
    (dict(p_correct=1.5), "p_correct must be in [0, 1], got 1.5"),
    (dict(p_last_digit_wrong=-0.1), "p_last_digit_wrong must be in [0, 1], got -0.1"),
])
def test_arithmetic_errors(kw, message):
  with pytest.raises(TaskError) as e:
    small(arithmetic_verification, **kw)
  assert message in str(e.value)


# --- HANS ------------------------------------------------------------------------------------

HANS_HEADER = ["gold_label", "sentence1_binary_parse", "sentence2_binary_parse",
               "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "pairID",
               "heuristic", "subcase", "template"]
HANS_ROWS = [
    ["non-entailment", "( ( The president ) ( ( advised ( the doctor ) ) . ) )",
     "( ( The doctor ) ( ( advised ( the president ) ) . ) )",
     "(ROOT (S (NP (DT The) (NN president)) (VP (VBD advised) (NP (DT the) (NN doctor))) (. .)))",
     "(ROOT (S (NP (DT The) (NN doctor)) (VP (VBD advised) (NP (DT the) (NN president))) (. .)))",
     "The president advised the doctor .", "The doctor advised the president .", "ex0",
     "lexical_overlap", "ln_subject/object_swap", "temp1"],
    ["entailment", "( ( The doctor ) ( ( near ( the actor ) ) ( danced . ) ) )",
     "( ( The doctor ) ( danced . ) )",
     "(ROOT (S (NP (NP (DT The) (NN doctor)) (PP (IN near) (NP (DT the) (NN actor)))) "
     "(VP (VBD danced)) (. .)))",
     "(ROOT (S (NP (DT The) (NN doctor)) (VP (VBD danced)) (. .)))",
     "The doctor near the actor danced .", "The doctor danced .", "ex1",
     "subsequence", "se_PP_on_subj", "temp29"],
    ["non-entailment", "( ( If ( the artist slept ) ) ( , ( the actor ran ) ) . )",
     "( ( The artist ) ( slept . ) )",
     "(ROOT (S (SBAR (IN If) (S (NP (DT the) (NN artist)) (VP (VBD slept)))) (, ,) "
     "(NP (DT the) (NN actor)) (VP (VBD ran)) (. .)))",
     "(ROOT (S (NP (DT The) (NN artist)) (VP (VBD slept)) (. .)))",
     "If the artist slept , the actor ran .", "The artist slept .", "ex2",
     "constituent", "cn_embedded_under_if", "temp36"],
]


def hans_rows(n):
  """n rows cycling the three real-looking rows with distinct pairIDs."""
  rows = []
  for i in range(n):
    row = list(HANS_ROWS[i % 3])
    row[7] = f"ex{i}"
    rows.append(row)
  return rows


def write_tsv(path, header, rows):
  path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n", encoding="utf-8")
  return path


def expected_split(pair_id, dev=0.1, test=0.1):
  u = int.from_bytes(hashlib.sha256(pair_id.encode()).digest()[:8], "big") / 2.0**64
  return "test" if u < test else "dev" if u < test + dev else "train"


def test_hans_reads_the_official_format(tmp_path):
  path = write_tsv(tmp_path / "heuristics_evaluation_set.txt", HANS_HEADER, HANS_ROWS)
  task = hans(path, dev_fraction=0.0, test_fraction=0.0)
  assert task.kind == "classification" and task.verbalizer == (" yes", " no")
  assert task.splits["dev"] == () and task.splits["test"] == ()
  by_id = {e.metadata["pairID"]: e for e in task.splits["train"]}
  assert set(by_id) == {"ex0", "ex1", "ex2"}
  ex = by_id["ex1"]
  assert ex.input == ("Premise: The doctor near the actor danced.\nHypothesis: The doctor danced."
                      "\nDoes the premise entail the hypothesis?")
  assert (ex.label, ex.answer) == (0, " yes")
  assert dict(ex.metadata) == {
      "heuristic": "subsequence", "subcase": "se_PP_on_subj", "template": "temp29",
      "pairID": "ex1", "heuristic_lexical_overlap": 0, "heuristic_subsequence": 1,
      "heuristic_constituent": 0}
  assert (by_id["ex0"].label, by_id["ex0"].answer) == (1, " no")
  assert by_id["ex2"].input.startswith("Premise: If the artist slept, the actor ran.\n")
  for e in task.splits["train"]:
    onehot = [e.metadata[f"heuristic_{h}"] for h in ("lexical_overlap", "subsequence",
                                                      "constituent")]
    assert sum(onehot) == 1 and e.metadata[f"heuristic_{e.metadata['heuristic']}"] == 1


def test_hans_split_is_a_stable_hash_of_pair_id(tmp_path):
  path = write_tsv(tmp_path / "hans.txt", HANS_HEADER, hans_rows(300))
  task = hans(path)
  for split in SPLITS:
    ids = [e.metadata["pairID"] for e in task.splits[split]]
    assert ids and all(expected_split(i) == split for i in ids)
  assert sum(len(task.splits[s]) for s in SPLITS) == 300
  # Another seed: same membership, another order; limits keep a subset of the split.
  other = hans(path, seed=1)
  for split in SPLITS:
    assert sorted(task.splits[split], key=repr) == sorted(other.splits[split], key=repr)
  assert task.splits["train"] != other.splits["train"]
  limited = hans(path, n_train=10, n_dev=3, n_test=0)
  assert [len(limited.splits[s]) for s in SPLITS] == [10, 3, 0]
  assert set(map(repr, limited.splits["train"])) <= set(map(repr, task.splits["train"]))
  assert hans(path, n_train=10, n_dev=3, n_test=0) == limited


def test_hans_errors(tmp_path):
  with pytest.raises(TaskError, match=r"nope\.txt: no such HANS file"):
    hans(tmp_path / "nope.txt")

  empty = tmp_path / "empty.txt"
  empty.write_text("")
  with pytest.raises(TaskError, match=r"empty\.txt: empty file"):
    hans(empty)

  only_header = write_tsv(tmp_path / "header.txt", HANS_HEADER, [])
  with pytest.raises(TaskError, match=r"header\.txt: no examples"):
    hans(only_header)

  no_col = write_tsv(tmp_path / "nocol.txt", [c for c in HANS_HEADER if c != "heuristic"],
                     [r[:8] + r[9:] for r in HANS_ROWS])
  with pytest.raises(TaskError) as e:
    hans(no_col)
  assert "nocol.txt: line 1: missing required column 'heuristic'" in str(e.value)

  # (row, column, the new value or None to cut the row there, file name, the error)
  for row, col, value, name, error in [
      (1, 0, "contradiction", "label.txt",
       "label.txt: line 3: column 'gold_label' has unknown value 'contradiction'"),
      (2, 8, "negation", "heur.txt", "heur.txt: line 4: column 'heuristic' has unknown value "
                                     "'negation'"),
      (2, 6, None, "short.txt", "short.txt: line 4: column 'sentence2' is missing"),
      (2, 7, "ex0", "dup.txt", "dup.txt: line 4: column 'pairID' value 'ex0' repeats line 2")]:
    rows = hans_rows(3)
    if value is None:
      rows[row] = rows[row][:col]
    else:
      rows[row][col] = value
    with pytest.raises(TaskError) as e:
      hans(write_tsv(tmp_path / name, HANS_HEADER, rows))
    assert error in str(e.value)

  with pytest.raises(TaskError, match="dev_fraction \\+ test_fraction must be at most 1"):
    hans(write_tsv(tmp_path / "ok.txt", HANS_HEADER, HANS_ROWS), dev_fraction=0.6,
         test_fraction=0.6)


# --- table -----------------------------------------------------------------------------------

def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return path


def test_table_jsonl_classification(tmp_path):
  records = [
      {"text": "The movie was great.", "sentiment": "positive", "split": "train", "len": 4,
       "genre": "drama", "score": 0.9, "flag": True, "tags": ["a"], "none": None},
      {"text": "Boring.", "sentiment": 1, "split": "dev", "len": 1, "genre": "comedy"},
      {"text": "Fine.", "sentiment": " negative ", "split": "validation", "len": 1},
      {"text": "Loved it.", "sentiment": "0", "split": "test", "len": 2},
  ]
  path = write_jsonl(tmp_path / "reviews.jsonl", records)
  task = table(path, Columns("text", label="sentiment", labels=(" positive", " negative"),
                             split="split"))
  assert (task.name, task.kind, task.verbalizer) == (
      "reviews", "classification", (" positive", " negative"))
  assert [len(task.splits[s]) for s in SPLITS] == [1, 2, 1]
  (train,) = task.splits["train"]
  assert (train.input, train.label, train.answer) == ("The movie was great.", 0, " positive")
  assert dict(train.metadata) == {"len": 4.0, "genre": "drama", "score": 0.9, "flag": 1.0}
  assert all(isinstance(v, float) for k, v in train.metadata.items() if k != "genre")
  dev = {e.input: e for e in task.splits["dev"]}
  assert (dev["Boring."].label, dev["Boring."].answer) == (1, " negative")
  assert dev["Fine."].label == 1
  assert task.splits["test"][0].label == 0


def test_table_csv_generation_with_hash_split(tmp_path):
  path = tmp_path / "qa.csv"
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["question", "target", "difficulty", "source", "note"])
    for i in range(200):
      w.writerow([f"What is {i}, exactly?", f" {i}", str(i % 5), "synthetic", ""])
  task = table(path, Columns("question", answer="target"), n_dev=7)
  assert task.kind == "generation" and task.verbalizer == ()
  assert len(task.splits["dev"]) == 7
  n_all = sum(len(table(path, Columns("question", answer="target")).splits[s])
              for s in SPLITS)
  assert n_all == 200
  for split in SPLITS:
    for ex in task.splits[split]:
      i = int(ex.input.split()[2].rstrip(","))
      assert ex.answer == f" {i}" and ex.label is None
      assert dict(ex.metadata) == {"difficulty": float(i % 5), "source": "synthetic"}
      assert expected_split(ex.input) == split
  assert table(path, Columns("question", answer="target"), n_dev=7) == task


def test_table_tsv_keeps_commas(tmp_path):
  path = tmp_path / "pairs.tsv"
  path.write_text("text\tlabel\tsplit\nyes, it is\t no\ttest\n", encoding="utf-8")
  task = table(path, Columns("text", label="label", labels=(" yes", " no"), split="split"))
  (ex,) = task.splits["test"]
  assert (ex.input, ex.label, ex.answer, dict(ex.metadata)) == ("yes, it is", 1, " no", {})


# (file name, its content: text, JSON records or None for no file, table options, the error).
_TABLE_ERRORS = [
    ("missing.jsonl", None, {}, "missing.jsonl: no such file"),
    ("empty.jsonl", "\n\n", {}, "empty.jsonl: empty data set"),
    ("empty.csv", "text,y\n", {}, "empty.csv: empty data set"),
    ("missing_field.jsonl",
     [{"text": "a", "y": "yes"}, {"text": "b", "y": 1}, {"txt": "c", "y": 0}], {},
     "missing_field.jsonl: line 3: missing field 'text'"),
    ("no_label.jsonl", [{"text": "a"}], {}, "no_label.jsonl: line 1: missing field 'y'"),
    ("short.csv", "text,y\nhello,yes\nbye\n", {}, "short.csv: line 3: missing field 'y'"),
    *[("bad_label.jsonl", [{"text": "a", "y": "no"}, {"text": "b", "y": value}], {},
       f"bad_label.jsonl: line 2: field 'y' has label {shown} outside the verbalizer")
      for value, shown in (("maybe", "'maybe'"), ("7", "'7'"), (2, "2"), (-1, "-1"),
                           (True, "True"))],
    # Integer verbalizer words are matched as words only: "0" is not an index here.
    ("numerals.jsonl", [{"text": "a", "y": "2"}, {"text": "b", "y": 1}, {"text": "c", "y": "0"}],
     {"labels": ("1", "2")},
     "numerals.jsonl: line 3: field 'y' has label '0' outside the verbalizer"),
    ("malformed.jsonl", '{"text": "a", "y": 0}\n{"text": "b", "y": 1\n', {},
     "malformed.jsonl: line 2: malformed JSON"),
    ("list.jsonl", '["a", 0]\n', {}, "list.jsonl: line 1: expected a JSON object"),
    ("split.jsonl", [{"text": "a", "y": 0, "s": "holdout"}], {"split_field": "s"},
     "split.jsonl: line 1: field 's' has unknown split 'holdout'"),
    ("ok.jsonl", [{"text": "a", "y": 0}], {"labels": (" yes",)},
     "needs at least 2 verbalizer words"),
    ("ok.jsonl", [{"text": "a", "y": 0}], {"answer_field": "text"}, "not both"),
    ("t.xlsx", [{}], {}, "unknown table format '.xlsx'"),
]


_COLUMN_KEYS = {"input_field", "answer_field", "label_field", "labels", "split_field"}


@pytest.mark.parametrize("name,content,options,error", _TABLE_ERRORS)
def test_table_errors(tmp_path, name, content, options, error):
  path = tmp_path / name
  if isinstance(content, str):
    path.write_text(content)
  elif content is not None:
    write_jsonl(path, content)
  with pytest.raises(TaskError) as e:
    fields = {"input": "text", "label": "y", "labels": (" yes", " no"),
              **{k.removesuffix("_field"): v for k, v in options.items() if k in _COLUMN_KEYS}}
    table(path, Columns(**fields), **{k: v for k, v in options.items() if k not in _COLUMN_KEYS})
  assert error in str(e.value)


def test_table_numeral_labels_are_words(tmp_path):
  """Integer verbalizer words are matched as words: label "2" and 1 are both the word for 2."""
  rows = [{"text": "a", "y": "2", "s": "train"}, {"text": "b", "y": 1, "s": "train"}]
  task = table(write_jsonl(tmp_path / "numerals_ok.jsonl", rows),
               Columns("text", label="y", labels=("1", "2"), split="s"))
  assert {e.input: e.label for e in task.splits["train"]} == {"a": 1, "b": 0}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_table_with_a_byte_order_mark(tmp_path, suffix):
  """Excel's "CSV UTF-8" export starts with a BOM; the first header field keeps its name."""
  sep = "\t" if suffix == ".tsv" else ","
  body = (f"text{sep}y\nyes it is{sep}0\n" if suffix != ".jsonl"
          else '{"text": "yes it is", "y": 0}\n')
  path = tmp_path / f"excel{suffix}"
  path.write_bytes(body.encode("utf-8-sig"))
  task = table(path, Columns("text", label="y", labels=(" yes", " no")), dev_fraction=0,
               test_fraction=0)
  (ex,) = task.splits["train"]
  assert (ex.input, ex.label, dict(ex.metadata)) == ("yes it is", 0, {})


def test_hans_with_a_byte_order_mark(tmp_path):
  path = write_tsv(tmp_path / "hans.txt", HANS_HEADER, HANS_ROWS)
  path.write_bytes(path.read_text(encoding="utf-8").encode("utf-8-sig"))
  task = hans(path, dev_fraction=0.0, test_fraction=0.0)
  assert {e.metadata["pairID"] for e in task.splits["train"]} == {"ex0", "ex1", "ex2"}


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".txt"])
def test_data_file_not_utf8(tmp_path, suffix):
  """A Latin-1 file (as older Excel versions save) names the file, line and byte offset."""
  if suffix == ".txt":
    path = write_tsv(tmp_path / "hans.txt", HANS_HEADER, HANS_ROWS)
  elif suffix == ".jsonl":
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": t, "y": 0} for t in ("a", "c", "b")])
  else:
    sep = "\t" if suffix == ".tsv" else ","
    path = tmp_path / f"t{suffix}"
    path.write_text(f"text{sep}y\na{sep}0\nb{sep}1\n", encoding="utf-8")
  lines = path.read_bytes().splitlines(keepends=True)
  lines[2] = lines[2].replace(b"ex1" if suffix == ".txt" else b"b", b"caf\xe9", 1)
  path.write_bytes(b"".join(lines))
  offset = sum(map(len, lines[:2])) + lines[2].index(b"\xe9")
  with pytest.raises(TaskError) as info:
    if suffix == ".txt":
      hans(path)
    else:
      table(path, Columns("text", label="y", labels=(" yes", " no")))
  msg = str(info.value)
  assert msg.startswith(f"{path}: line 3: not UTF-8"), msg
  assert f"0xe9 at file offset {offset}" in msg, msg


# --- config ----------------------------------------------------------------------------------

def test_build_task_dispatches(tmp_path):
  task = build_task(TaskConfig(name="arithmetic_generation", operations=["plus"], digits=[2],
                               n_train=5, n_dev=2, n_test=2))
  assert isinstance(task, Task) and task.name == "arithmetic_generation"
  assert TaskConfig(operations=["plus"], digits=[2]).operations == ("plus",)
  assert {e.metadata["operation"] for _, e in all_examples(task)} == {"plus"}
  ver = build_task(TaskConfig(n_train=8, n_dev=2, n_test=2, p_correct=0.25))
  assert ver.name == "arithmetic_verification"
  assert sum(e.label == 0 for e in ver.splits["train"]) == 2

  path = write_tsv(tmp_path / "hans.txt", HANS_HEADER, hans_rows(60))
  h = build_task(TaskConfig(name="hans", path=str(path), n_train=-1, n_dev=-1, n_test=-1))
  assert sum(len(h.splits[s]) for s in SPLITS) == 60
  h = build_task(TaskConfig(name="hans", path=str(path), n_train=4, n_dev=-1, n_test=-1))
  assert len(h.splits["train"]) == 4

  jl = write_jsonl(tmp_path / "t.jsonl", [{"q": f"q{i}", "a": " x", "k": i} for i in range(20)])
  t = build_task(TaskConfig(name="table", path=str(jl), input_field="q", answer_field="a",
                            n_train=-1, n_dev=-1, n_test=-1, test_fraction=0.5, dev_fraction=0))
  assert t.kind == "generation" and sum(len(t.splits[s]) for s in SPLITS) == 20
  assert t.splits["dev"] == ()


def test_build_task_errors():
  with pytest.raises(TaskError) as e:
    build_task(TaskConfig(name="arithmetics"))
  assert "unknown task name 'arithmetics'" in str(e.value)
  for name in ("arithmetic_generation", "arithmetic_verification", "hans", "table"):
    assert name in str(e.value)
  for name in ("hans", "table"):
    with pytest.raises(TaskError, match=f"task '{name}' needs a path"):
      build_task(TaskConfig(name=name))
  with pytest.raises(TaskError, match="operations must be a sequence"):
    TaskConfig(operations="plus")
