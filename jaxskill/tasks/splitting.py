"""Deterministic splits and subsampling shared by the file-backed tasks (HANS, table).

An example's split comes from a stable hash of a key (HANS: pairID; table: the input text), so it
never depends on the file's order, on the seed or on Python's per-process string hashing, and
examples that share a key always land in the same split. The seed only picks which examples a
`n_*` limit keeps, and their order.
"""

from __future__ import annotations

import hashlib
import random
from typing import Mapping, Sequence, TypeVar

from jaxskill.tasks.base import SPLITS, TaskError

T = TypeVar("T")


def check_fractions(name: str, dev_fraction: float, test_fraction: float) -> None:
  """Raises TaskError unless both fractions are in [0, 1] and sum to at most 1."""
  for field, value in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
    if not 0.0 <= value <= 1.0:
      raise TaskError(f"task '{name}': {field} must be in [0, 1], got {value!r}")
  if dev_fraction + test_fraction > 1.0:
    raise TaskError(f"task '{name}': dev_fraction + test_fraction must be at most 1, got "
                    f"{dev_fraction!r} + {test_fraction!r}")


def check_limits(name: str, limits: Mapping[str, int | None]) -> None:
  """Raises TaskError for a negative or non-integer `n_*` limit (None means no limit)."""
  for split, n in limits.items():
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
      raise TaskError(f"task '{name}': n_{split} must be a non-negative integer or None, "
                      f"got {n!r}")


def unit_hash(key: str) -> float:
  """A uniform number in [0, 1) from sha256(key); the same on every machine and run."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(key: str, dev_fraction: float, test_fraction: float) -> str:
  """"test" for the first `test_fraction` of the hash range, then "dev", else "train"."""
  u = unit_hash(key)
  if u < test_fraction:
    return "test"
  if u < test_fraction + dev_fraction:
    return "dev"
  return "train"


def shuffle_and_limit(splits: Mapping[str, Sequence[T]], limits: Mapping[str, int | None],
                      seed: int) -> dict[str, tuple[T, ...]]:
  """Shuffles every split with `random.Random(seed)` and keeps its first `limits[split]` items.

  Splits are shuffled in SPLITS order from one generator, so the result depends only on the
  input order and the seed.
  """
  rng = random.Random(seed)
  out = {}
  for split in SPLITS:
    items = list(splits.get(split, ()))
    rng.shuffle(items)
    n = limits.get(split)
    out[split] = tuple(items if n is None else items[:n])
  return out
