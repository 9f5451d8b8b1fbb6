"""Tasks: arithmetic and Skill-Mix-style texts (generated), HANS and user tables, built from
one `TaskConfig`."""

from __future__ import annotations

import dataclasses

from jaxskill.tasks.arithmetic import (DEFAULT_DIGITS, OPERATIONS, arithmetic_generation,
                                       arithmetic_verification)
from jaxskill.tasks.base import SPLITS, Example, Task, TaskError
from jaxskill.tasks.hans import hans
from jaxskill.tasks.skillmix import DEFAULT_SKILLS_PER_TEXT, skillmix
from jaxskill.tasks.table import Columns, table

TASK_NAMES = ("arithmetic_generation", "arithmetic_verification", "hans", "skillmix", "table")


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Every task option; each builder reads the ones it uses.

  name: one of TASK_NAMES. path: the data file (hans, table).
  operations, digits: arithmetic subtasks (words of OPERATIONS; digit counts >= 1).
  skills_per_text: skillmix, the numbers of skills one text is asked to show (k); the examples are
    drawn from every (topic, k-skill set) combination of these sizes.
  n_train, n_dev, n_test: examples per split; for hans and table a negative value means all.
  seed: arithmetic and skillmix generation; for hans and table, which examples a limit keeps and
    their order.
  p_correct, p_last_digit_wrong: arithmetic_verification shares of correct candidates, and of
    wrong candidates that differ only in the last digit.
  input_field, answer_field, label_field, split_field, labels: table fields ("" = unset) and
    verbalizer words.
  dev_fraction, test_fraction: hash-split shares (hans; table without split_field).
  """
  name: str = "arithmetic_verification"
  path: str = ""
  operations: tuple[str, ...] = OPERATIONS
  digits: tuple[int, ...] = DEFAULT_DIGITS
  skills_per_text: tuple[int, ...] = DEFAULT_SKILLS_PER_TEXT
  n_train: int = 1000
  n_dev: int = 200
  n_test: int = 500
  seed: int = 0
  p_correct: float = 0.5
  p_last_digit_wrong: float = 0.5
  input_field: str = ""
  answer_field: str = ""
  label_field: str = ""
  split_field: str = ""
  labels: tuple[str, ...] = ()
  dev_fraction: float = 0.1
  test_fraction: float = 0.1

  def __post_init__(self):
    # Lists from YAML / JSON become tuples, so the config stays hashable and immutable.
    for field in ("operations", "digits", "skills_per_text", "labels"):
      value = getattr(self, field)
      if isinstance(value, str):
        raise TaskError(f"task config: {field} must be a sequence, got the string {value!r}")
      object.__setattr__(self, field, tuple(value))


def _limit(n: int) -> int | None:
  return None if n < 0 else n


def build_task(cfg: TaskConfig) -> Task:
  """The Task `cfg.name` names. Raises TaskError for an unknown name or a missing path."""
  if cfg.name not in TASK_NAMES:
    raise TaskError(f"task config: unknown task name {cfg.name!r}; valid: {list(TASK_NAMES)}")
  if cfg.name.startswith("arithmetic"):
    common = dict(operations=cfg.operations, digits=cfg.digits, n_train=cfg.n_train,
                  n_dev=cfg.n_dev, n_test=cfg.n_test, seed=cfg.seed)
    if cfg.name == "arithmetic_generation":
      return arithmetic_generation(**common)
    return arithmetic_verification(**common, p_correct=cfg.p_correct,
                                   p_last_digit_wrong=cfg.p_last_digit_wrong)
  if cfg.name == "skillmix":
    return skillmix(skills_per_text=cfg.skills_per_text, n_train=cfg.n_train, n_dev=cfg.n_dev,
                    n_test=cfg.n_test, seed=cfg.seed)
  if not cfg.path:
    raise TaskError(f"task config: task {cfg.name!r} needs a path to its data file")
  limits = dict(n_train=_limit(cfg.n_train), n_dev=_limit(cfg.n_dev), n_test=_limit(cfg.n_test),
                seed=cfg.seed, dev_fraction=cfg.dev_fraction, test_fraction=cfg.test_fraction)
  if cfg.name == "hans":
    return hans(cfg.path, **limits)
  columns = Columns(cfg.input_field, cfg.answer_field or None, cfg.label_field or None,
                    cfg.labels, cfg.split_field or None)
  return table(cfg.path, columns, **limits)


__all__ = ["SPLITS", "TASK_NAMES", "Columns", "Example", "Task", "TaskConfig", "TaskError",
           "build_task", "arithmetic_generation", "arithmetic_verification", "hans", "skillmix",
           "table"]
