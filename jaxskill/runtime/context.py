"""What every stage builds from a run config before it runs the model: the model and params on
the run's mesh, the tokenizer, the task and its encoded splits (each process tokenizing only its
rows in multi-process runs), and the trained prompt of a (seed) run.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from jaxskill.config import RunConfig
from jaxskill.model import CausalLM, load_model, load_tokenizer
from jaxskill.model.checkpoint import DTYPES
from jaxskill.runtime import files, sharding
from jaxskill.tasks import encode as data_lib
from jaxskill.tasks import Task, TaskError, build_task

log = logging.getLogger("jaxskill.runtime.context")


# (split name, number of examples) -> the example indices this process feeds.
RowPlan = Callable[[str, int], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run builds from its config before training: model, data and task."""
  model: CausalLM
  params: Any
  tokenizer: Any
  task: Task
  train: data_lib.Encoded
  dev: data_lib.Encoded | None
  verbalizer: np.ndarray  # token ids `[c]` (classification) or `[1]` zeros (generation)
  input_cols: int  # the prompt's first column in every row (infix), or 0 (prefix)
  budget: int  # answer tokens every row leaves room for (`data.answer_budget`)
  rows: RowPlan | None = None  # which rows of a split this process tokenizes (None: all)

  def encode(self, config: RunConfig, split: str) -> data_lib.Encoded:
    """Another split of the task, in the same layout and row plan."""
    return sharding.raise_together(lambda: encode_split(
        config, self.task, self.tokenizer, split, self.budget, self.rows), TaskError)


def encode_split(config: RunConfig, task: Task, tokenizer, split: str, budget: int,
                 rows: RowPlan | None = None) -> data_lib.Encoded:
  """One split in the run's layout; with a row plan, only this process's rows are tokenized."""
  n = len(task.splits.get(split, ()))
  chosen = rows(split, n) if rows is not None and n else None
  encoded = _encode(config, task, tokenizer, split, budget, chosen)
  if chosen is not None:
    log.info("process %d of %d tokenized %d of the %d %s rows (its share)",
             jax.process_index(), jax.process_count(), len(chosen), n, split)
  return encoded


def encode_rows(config: RunConfig, setup: "Setup", split: str, rows: np.ndarray
                ) -> data_lib.Encoded:
  """The examples `rows` of a split alone, in that order, in the run's layout: every process
  tokenizes all of them, whatever its share of the split."""
  return data_lib.take(_encode(config, setup.task, setup.tokenizer, split, setup.budget, rows),
                       rows)


def _encode(config: RunConfig, task: Task, tokenizer, split: str, budget: int,
            rows: np.ndarray | None) -> data_lib.Encoded:
  layout = data_lib.Layout(config.prompt.length, config.prompt.placement, config.data.max_length,
                           config.data.truncation, config.data.append_eos)
  return data_lib.encode(task, split, tokenizer, layout, budget=budget, rows=rows)


def eval_plan(mesh: Mesh, batch_size: int) -> RowPlan | None:
  """Multi-process runs: each process tokenizes only the rows it feeds when splits are streamed
  in order in global batches of `batch_size`. None (every row) in a single process."""
  if jax.process_count() == 1:
    return None
  local = sharding.local_rows(mesh, batch_size)
  return lambda split, n: data_lib.eval_rows(n, batch_size, local)


def model_dtype(config: RunConfig):
  """The dtype that model.dtype names (`checkpoint.DTYPES`)."""
  return DTYPES[config.model.dtype]


def prepare(config: RunConfig, rows: RowPlan | None = None, mesh: Mesh | None = None) -> Setup:
  """Model, tokenizer, task and the encoded train and dev splits of `config`. `rows`: the row
  plan of a multi-process stage (`eval_plan`, or training's own); None encodes every row.
  `mesh`: the stage's (its `Runner`'s); default: the mesh of `config.train`."""
  dtype = model_dtype(config)
  # Read straight into the run's layout: each device loads only its shard of the params.
  if mesh is None:
    mesh = sharding.make_mesh(config.train.data_parallel, config.train.model_parallel)
  model, params = load_model(config.model.path, dtype=dtype, remat=config.model.remat,
                             mesh=mesh, layout=config.train.param_sharding,
                             log_unread=False)  # the pipeline's check_checkpoint named them
  tokenizer = load_tokenizer(config.model.path)
  task = build_task(config.task)
  budget = data_lib.answer_budget(task, tokenizer, config.data.append_eos)  # one for all splits
  train, dev = sharding.raise_together(lambda: (
      encode_split(config, task, tokenizer, "train", budget, rows),
      encode_split(config, task, tokenizer, "dev", budget, rows) if task.splits.get("dev")
      else None), TaskError)
  verbalizer = (data_lib.verbalizer_ids(tokenizer, task.verbalizer)
                if task.kind == "classification" else np.zeros(1, np.int32))
  # From the layout, not from a row: under a row plan row 0 may be another process's, and
  # every process must compile the same program.
  input_cols = (config.data.max_length - config.prompt.length - budget
                if config.prompt.placement == "infix" else 0)
  return Setup(model, params, tokenizer, task, train, dev, verbalizer, input_cols, budget, rows)


def encoded_split(setup: Setup, config: RunConfig, split: str) -> data_lib.Encoded:
  """A split of the run's task, encoded (train and dev come with the setup)."""
  if split == "train":
    return setup.train
  if split == "dev" and setup.dev is not None:
    return setup.dev
  return setup.encode(config, split)


def load_prompt(run: RunConfig) -> np.ndarray:
  """The trained prompt `[p, h]` of a (seed) run: its prompt_best.npy."""
  path = run.run_dir / "prompt_best.npy"
  if not path.exists():
    raise FileNotFoundError(f"{path}: no trained prompt; train it first (`jaxskill train` or "
                            "`jaxskill run` with this config)")
  return files.load_npy(path)
