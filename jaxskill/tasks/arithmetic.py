"""BIG-bench-style arithmetic, regenerated from a seed.

Problems (the operand ranges are our reading of "n-digit"; BIG-bench's generator is not vendored):
  plus, minus, times: a and b in [0, 10^n), the larger one with exactly n digits (n = 1: 0..9).
    Subtraction may go negative ("What is 3 minus 8?" -> -5), as in BIG-bench.
  divided by: divisor b in [1, 10^n) and quotient q in [0, 10^n), the larger one with exactly n
    digits, and a = b * q; so the answer is an integer and n-digit division is the inverse of
    n-digit multiplication.
The n-digit pools are disjoint, so a problem (a, b, operation) is never repeated: not within a
split and not across train / dev / test.

Two tasks are built from the same problems (for the same seed, arithmetic_verification asks about
exactly the problems arithmetic_generation asks to solve):
  generation:    input "Q: What is 12 plus 7?\\nA:", answer " 19".
  verification:  input "Q: What is 12 plus 7?\\nA: 19\\nCorrect?", answer " yes" (label 0) when
                 the candidate is the true result, " no" (label 1) otherwise.
Wrong candidates come in two kinds, so that a "last digit only" shortcut can be told apart from
real checking: `last_digit_only` candidates differ from the truth only in the last digit; the
others differ elsewhere (a digit other than the last changed, or off by 10^k) and keep the last
digit. The sign is kept; digits are those of |result|.
"""

from __future__ import annotations

import math
import random
from typing import Sequence

from jaxskill.tasks.base import SPLITS, Example, Task, TaskError

OPERATIONS = ("plus", "minus", "times", "divided by")
VERBALIZER = (" yes", " no")  # label 0: the candidate is correct, label 1: it is wrong
DEFAULT_DIGITS = (1, 2, 3, 4, 5)

Problem = tuple[str, int, int, int]  # (operation, digits, a, b)


# --- problems -------------------------------------------------------------------------------

def evaluate(operation: str, a: int, b: int) -> int:
  """The exact integer result (division problems are generated to divide evenly)."""
  if operation == "plus":
    return a + b
  if operation == "minus":
    return a - b
  if operation == "times":
    return a * b
  if operation == "divided by":
    q, r = divmod(a, b)
    if r:
      raise TaskError(f"arithmetic: {a} divided by {b} is not an integer")
    return q
  raise TaskError(f"arithmetic: unknown operation {operation!r}; valid: {list(OPERATIONS)}")


def question(operation: str, a: int, b: int) -> str:
  """'Q: What is {a} {operation} {b}?' (BIG-bench's input, with the 'Q: ' of the rendering)."""
  return f"Q: What is {a} {operation} {b}?"


def _low(digits: int) -> int:
  """The smallest value the larger operand may take (0 for one digit: 0..9 are all allowed)."""
  return 10 ** (digits - 1) if digits > 1 else 0


def pool_size(operation: str, digits: int) -> int:
  """How many distinct problems exist for one (operation, digits) subtask."""
  hi, lo = 10**digits, _low(digits)
  if operation == "divided by":  # pairs (b, q), b >= 1, minus those with both below lo
    return (hi - 1) * hi - max(lo - 1, 0) * lo
  return hi * hi - lo * lo


def _draw(rng: random.Random, operation: str, digits: int) -> tuple[int, int]:
  """One random (a, b) of the subtask; rejection keeps the larger operand at exactly n digits."""
  hi, lo = 10**digits, _low(digits)
  while True:
    if operation == "divided by":
      b, q = rng.randrange(1, hi), rng.randrange(hi)
      if max(b, q) >= lo:
        return b * q, b
    else:
      a, b = rng.randrange(hi), rng.randrange(hi)
      if max(a, b) >= lo:
        return a, b


def _check_options(name: str, operations: Sequence[str], digits: Sequence[int],
                   counts: dict[str, int]) -> None:
  if not operations:
    raise TaskError(f"task '{name}': operations is empty; valid: {list(OPERATIONS)}")
  for op in operations:
    if op not in OPERATIONS:
      raise TaskError(f"task '{name}': unknown operation {op!r}; valid: {list(OPERATIONS)}")
  if not digits:
    raise TaskError(f"task '{name}': digits is empty")
  for d in digits:
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
      raise TaskError(f"task '{name}': digits must be positive integers, got {d!r}")
  for split, n in counts.items():
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
      raise TaskError(f"task '{name}': n_{split} must be a non-negative integer, got {n!r}")
  if not sum(counts.values()):
    raise TaskError(f"task '{name}': n_train + n_dev + n_test is 0, no examples to generate")


def problems(name: str, operations: Sequence[str], digits: Sequence[int], counts: dict[str, int],
             seed: int) -> dict[str, list[Problem]]:
  """split -> shuffled problems (operation, digits, a, b), distinct across all splits.

  Within a split, example i belongs to subtask i mod K (K = len(operations) * len(digits)), so
  every subtask gets an equal share up to one example. Raises TaskError when a subtask has fewer
  distinct problems than asked (e.g. 1-digit division has 90).
  """
  _check_options(name, operations, digits, counts)
  subtasks = [(op, d) for op in dict.fromkeys(operations) for d in dict.fromkeys(digits)]
  need = dict.fromkeys(subtasks, 0)
  for n in counts.values():
    for i in range(n):
      need[subtasks[i % len(subtasks)]] += 1
  for (op, d), k in need.items():
    if k > pool_size(op, d):
      raise TaskError(f"task '{name}': {d}-digit '{op}' has only {pool_size(op, d)} distinct "
                      f"problems, {k} are needed (n_train + n_dev + n_test = "
                      f"{sum(counts.values())} over {len(subtasks)} subtasks)")
  rng = random.Random(seed)
  seen: set[tuple[int, int, str]] = set()
  out = {}
  for split in SPLITS:
    items = []
    for i in range(counts.get(split, 0)):
      op, d = subtasks[i % len(subtasks)]
      while True:  # the pool check above guarantees this ends
        a, b = _draw(rng, op, d)
        if (a, b, op) not in seen:
          break
      seen.add((a, b, op))
      items.append((op, d, a, b))
    rng.shuffle(items)
    out[split] = items
  return out


# --- wrong candidates -----------------------------------------------------------------------

def _signed(sign: int, magnitude: int) -> int:
  return -magnitude if sign < 0 else magnitude


def wrong_last_digit(truth: int, rng: random.Random) -> int:
  """truth with only the last digit of |truth| changed (sign kept; never -0, so the rendered
  string differs from the truth's only in its last character)."""
  t = abs(truth)
  last = t % 10
  choices = [d for d in range(10) if d != last and not (truth < 0 and t - last + d == 0)]
  return _signed(truth, t - last + rng.choice(choices))


def wrong_elsewhere(truth: int, rng: random.Random) -> int:
  """truth changed somewhere other than the last digit of |truth|, which is kept.

  Either one non-last digit is replaced (the leading digit by a non-zero one, so the length
  stays), or |truth| is moved by +-10^k, 1 <= k <= its number of digits (never to 0 or below).
  """
  t = abs(truth)
  s = str(t)
  if len(s) > 1 and rng.random() < 0.5:
    i = rng.randrange(len(s) - 1)
    choices = [c for c in "0123456789" if c != s[i] and not (i == 0 and c == "0")]
    return _signed(truth, int(s[:i] + rng.choice(choices) + s[i + 1:]))
  k = rng.randint(1, len(s))
  step = 10**k
  if t - step > 0 and rng.random() < 0.5:
    return _signed(truth, t - step)
  return _signed(truth, t + step)


def last_digit(x: int) -> int:
  """The last digit of |x|."""
  return abs(x) % 10


# --- tasks ----------------------------------------------------------------------------------

def arithmetic_generation(operations: Sequence[str] = OPERATIONS,
                          digits: Sequence[int] = DEFAULT_DIGITS, n_train: int = 1000,
                          n_dev: int = 200, n_test: int = 500, seed: int = 0) -> Task:
  """Generation task: input "Q: What is {a} {op} {b}?\\nA:", answer " {result}".

  metadata: digits, operation, a, b, result, result_last_digit (of |result|).
  """
  name = "arithmetic_generation"
  counts = {"train": n_train, "dev": n_dev, "test": n_test}
  splits = {}
  for split, items in problems(name, operations, digits, counts, seed).items():
    examples = []
    for op, d, a, b in items:
      result = evaluate(op, a, b)
      examples.append(Example(
          input=f"{question(op, a, b)}\nA:", answer=f" {result}",
          metadata={"digits": d, "operation": op, "a": a, "b": b, "result": result,
                    "result_last_digit": last_digit(result)}))
    splits[split] = tuple(examples)
  return Task(name=name, kind="generation", splits=splits)


def _flags(n: int, fraction: float, rng: random.Random) -> list[bool]:
  """round(fraction * n) Trues among n, in random order (exact shares, even for small splits)."""
  k = round(fraction * n)
  flags = [True] * k + [False] * (n - k)
  rng.shuffle(flags)
  return flags


def arithmetic_verification(operations: Sequence[str] = OPERATIONS,
                            digits: Sequence[int] = DEFAULT_DIGITS, n_train: int = 1000,
                            n_dev: int = 200, n_test: int = 500, seed: int = 0,
                            p_correct: float = 0.5, p_last_digit_wrong: float = 0.5) -> Task:
  """Classification task: is the candidate answer right?

  input "Q: What is {a} {op} {b}?\\nA: {candidate}\\nCorrect?", verbalizer (" yes", " no"),
  label 0 when candidate == truth. Per split, round(p_correct * n) candidates are correct and
  round(p_last_digit_wrong * n_wrong) of the wrong ones differ only in the last digit.

  metadata: digits, operation, a, b, truth, candidate, correct (1/0), last_digit_only (1 for a
  wrong candidate that differs only in the last digit, else 0), candidate_last_digit_correct
  (1/0: the last digit of |candidate| equals that of |truth|).
  """
  name = "arithmetic_verification"
  for field, value in (("p_correct", p_correct), ("p_last_digit_wrong", p_last_digit_wrong)):
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0 and math.isfinite(value)):
      raise TaskError(f"task '{name}': {field} must be in [0, 1], got {value!r}")
  counts = {"train": n_train, "dev": n_dev, "test": n_test}
  # A second generator for the candidates keeps the problems identical to the generation task's.
  rng = random.Random(f"arithmetic_verification:{seed}")
  splits = {}
  for split, items in problems(name, operations, digits, counts, seed).items():
    correct = _flags(len(items), p_correct, rng)
    last_only = iter(_flags(correct.count(False), p_last_digit_wrong, rng))
    examples = []
    for (op, d, a, b), ok in zip(items, correct):
      truth = evaluate(op, a, b)
      only_last = False if ok else next(last_only)
      if ok:
        candidate = truth
      elif only_last:
        candidate = wrong_last_digit(truth, rng)
      else:
        candidate = wrong_elsewhere(truth, rng)
      label = 0 if ok else 1
      examples.append(Example(
          input=f"{question(op, a, b)}\nA: {candidate}\nCorrect?", answer=VERBALIZER[label],
          label=label,
          metadata={"digits": d, "operation": op, "a": a, "b": b, "truth": truth,
                    "candidate": candidate, "correct": int(ok), "last_digit_only": int(only_last),
                    "candidate_last_digit_correct":
                        int(last_digit(candidate) == last_digit(truth))}))
    splits[split] = tuple(examples)
  return Task(name=name, kind="classification", splits=splits, verbalizer=VERBALIZER)
