"""Run configs: YAML files of nested sections, loaded into frozen dataclasses, overridable with
`section.key=value` on the command line (MaxText style). A file may start from another with
`base_config: <path>` (relative to the file) and set only what differs. An unknown key or a value
of the wrong type is an error that names it and its file; the merged config is written to the run
directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from jaxskill.model import interventions
from jaxskill.tasks import SPLITS, TaskConfig


class RunConfigError(ValueError):
  """A config file or override that does not fit the schema."""


class FieldError(ValueError):
  """A section's own validation refusing one of its fields (`field`)."""

  def __init__(self, field: str, message: str):
    super().__init__(message)
    self.field = field


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Which checkpoint to load and how to run it."""
  path: str = "demo"  # a checkpoint dir, a cached hub id, or "demo" for the shipped model
  dtype: str = "float32"  # float32 | bfloat16
  remat: bool = False


_SPLIT_TEXT = ", ".join(SPLITS[:-1]) + f" or {SPLITS[-1]}"
# The positions a neuron's mean is taken over (verify.mean_over; `verify.position_weights`).
MEAN_OVER = ("inputs", "site", "all")
# Per metric: the report keeps every example's activations of this many neurons and the
# browser the token-level activations of as many examples per neuron; at 100000 the page was
# 7.7 MB, so these bound it.
MAX_REPORT_NEURONS = 64
MAX_BROWSER_EXAMPLES = 50


def _check(section, **conditions: tuple[bool, str]) -> None:
  """Raises for the first false condition, naming the field, its value and what it must be:
  `_check(self, length=(self.length >= 1, ">= 1"))`."""
  for name, (ok, expected) in conditions.items():
    if not ok:
      raise FieldError(name, f"{name}={getattr(section, name)!r} is out of range: expected "
                       f"{expected}")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """The soft prompt: its length, initialization and placement."""
  length: int = 8  # P, the number of soft-prompt vectors
  init: str = "vocab"  # random | vocab | text
  init_std: float = 0.02  # for init=random
  init_text: str = ""  # for init=text: tokenized, repeated or cut to `length`
  placement: str = "infix"  # infix: [input][prompt][answer]; prefix: [prompt][input][answer]

  def __post_init__(self):
    _check(self, length=(self.length >= 1, ">= 1"), init_std=(self.init_std > 0, "> 0"))
    if self.init == "text" and not self.init_text:
      raise ValueError("init=text needs a non-empty init_text")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """How examples become token sequences."""
  max_length: int = 64  # tokens per sequence: input + prompt + answer, padded to this
  truncation: str = "left"  # inputs too long lose tokens on the left | right | error
  append_eos: bool = True  # generation: the target ends with EOS so the model learns to stop

  def __post_init__(self):
    _check(self, max_length=(self.max_length >= 2, ">= 2"))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Prompt training: optimizer, schedule, logging, checkpoints and the device mesh."""
  steps: int = 200
  batch_size: int = 16
  lr: float = 1e-3
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.01
  warmup_steps: int = 0
  decay: str = "constant"  # constant | linear | cosine (to 0 at `steps`, after warmup)
  clip_norm: float = 0.0  # global-norm clipping of the prompt gradient; 0 = off
  eval_every: int = 50
  log_every: int = 10
  checkpoint_every: int = 50
  max_to_keep: int = 3
  async_checkpoint: bool = True
  seed: int = 0
  data_parallel: int = 0  # devices on the mesh's data axis; 0 = all the model axis leaves
  model_parallel: int = 1  # devices on the mesh's model axis (params split over it)
  param_sharding: str = "tensor"  # tensor | fsdp: how params are split (jaxskill.runtime.sharding)

  def __post_init__(self):
    import math
    _check(self, steps=(self.steps >= 1, ">= 1"), batch_size=(self.batch_size >= 1, ">= 1"),
           lr=(math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
           b1=(0 <= self.b1 < 1, "in [0, 1)"), b2=(0 <= self.b2 < 1, "in [0, 1)"),
           eps=(self.eps > 0, "> 0"), weight_decay=(self.weight_decay >= 0, ">= 0"),
           warmup_steps=(0 <= self.warmup_steps, ">= 0"),
           clip_norm=(self.clip_norm >= 0, ">= 0 (0: no clipping)"),
           eval_every=(self.eval_every >= 1, ">= 1"), log_every=(self.log_every >= 1, ">= 1"),
           checkpoint_every=(self.checkpoint_every >= 1, ">= 1"),
           max_to_keep=(self.max_to_keep >= 1, ">= 1"),
           data_parallel=(self.data_parallel >= 0, ">= 0 (0: every device)"),
           model_parallel=(self.model_parallel >= 1, ">= 1"))


@dataclasses.dataclass(frozen=True)
class FindConfig:
  """Skill-neuron discovery: capture sites, metrics, ranking and thresholds."""
  sites: tuple[str, ...] = ("prompt", "last_input", "answer")  # see jaxskill.model.capture
  metrics: tuple[str, ...] = ()  # () = every built-in metric and numeric metadata column
  custom_metrics: tuple[str, ...] = ()  # "package.module:function", fn(logits, batch) -> [b]
  split: str = "train"  # the examples whose activations are correlated
  batch_size: int = 16
  top_k: int = 100  # neurons per metric in neurons.csv, ranked by |r| (max over positions)
  top_p_per_layer: float = 0.01  # share of each layer's neurons selected per layer
  threshold: float = 0.5  # |r| above which a neuron counts as a skill neuron in summary.json
  seeds: tuple[int, ...] = ()  # train one prompt per seed and average; () = train.seed only
  checkpoint_every: int = 50  # batches between checkpoints of the running statistics
  report_neurons: int = 4  # per metric: activations on every example kept for the report
  # ... and on this split too (activations_heldout.npz), for verdicts on examples the neurons were
  # not selected on, e.g. the last-digit shortcut; "" = none
  heldout_split: str = "test"
  # For each report neuron, its top and bottom this many examples of find.split run
  # again with every position captured: the report's token-coloured examples; 0 = none
  browser_examples: int = 5
  merge_every: int = 16  # batches summed on the device (float32) per float64 host merge
  # Significance (jaxskill.stats.significance): P seeded within-batch shuffles of every metric,
  # taken in the same pass (each costs one [m, f] co-moment: a shuffled copy shares the metric's
  # means and M2), for the null of max |r| (FWER) and of the count above each threshold; BH at
  # fdr_q. find estimates its peak memory first (jaxskill.runtime.memory; see fit_memory).
  permutations: int = 20
  permutation_seed: int = 0
  fdr_q: float = 0.05
  # When find's estimated peak (jaxskill.runtime.memory) exceeds the memory available: refuse
  # before anything is removed, naming the largest permutations that fit, or lower
  # find.permutations to that with a warning (the summary records the number used).
  fit_memory: str = "refuse"

  def __post_init__(self):
    _check(self, permutations=(self.permutations >= 0, ">= 0"),
           fdr_q=(0 < self.fdr_q < 1, "in (0, 1)"), batch_size=(self.batch_size >= 1, ">= 1"),
           top_k=(self.top_k >= 1, ">= 1"),
           top_p_per_layer=(0 < self.top_p_per_layer <= 1, "in (0, 1]"),
           threshold=(0 <= self.threshold <= 1, "in [0, 1]"),
           checkpoint_every=(self.checkpoint_every >= 1, ">= 1"),
           report_neurons=(0 <= self.report_neurons <= MAX_REPORT_NEURONS,
                           f"in [0, {MAX_REPORT_NEURONS}] (the report's page grows with it)"),
           browser_examples=(0 <= self.browser_examples <= MAX_BROWSER_EXAMPLES,
                             f"in [0, {MAX_BROWSER_EXAMPLES}] (the report's page grows with it)"),
           merge_every=(self.merge_every >= 1, ">= 1"),
           split=(self.split in SPLITS, _SPLIT_TEXT),
           heldout_split=(self.heldout_split in ("", *SPLITS),
                          _SPLIT_TEXT + ", or \"\" for none"))
    if self.heldout_split == self.split:
      raise FieldError("heldout_split", f"heldout_split={self.heldout_split!r} is find.split itself: a verdict "
                       "on it would not be held out (another split, or \"\" for none)")


@dataclasses.dataclass(frozen=True)
class VerifyConfig:
  """Verification by perturbing the selected neurons against random controls."""
  selection: tuple[str, ...] = ()  # find metrics whose top neurons are perturbed; () = the task's
  #                                  label (classification) or correct (generation)
  split: str = "test"  # the examples the accuracy and metrics are measured on
  modes: tuple[str, ...] = ("noise", "zero", "mean")  # see jaxskill.model.interventions
  sigma: float = 0.1  # noise std: in units of each neuron's std (noise_scale), 0.1 in 2022
  # The positions a neuron's train-split mean (mode mean) and std (noise_scale neuron_std) are
  # taken over: inputs (the input tokens only), site (find.sites), all (every real position,
  # the prompt's too: identical in every row, they pull the mean towards the prompt's values).
  mean_over: str = "inputs"
  noise_scale: str = "neuron_std"  # noise std = sigma x the neuron's std, or sigma (absolute)
  k: int = 10  # the headline number of perturbed neurons
  k_list: tuple[int, ...] = (1, 5, 10, 50)  # dose-response: top-K and random-K for each K
  random_draws: int = 20  # R random neuron sets, matched to the top-K per layer (R >= 19 lets
  #                        the top-K's empirical p reach 0.05)
  group_by: tuple[str, ...] = ()  # metadata columns: accuracy per combination of their values
  batch_size: int = 32
  # Edits run together in one call (vmapped), from the residual entering their lowest perturbed
  # layer, computed once per batch; memory grows with it. 1: each edit its own whole forward
  # pass (the reference path). 0: 2 on a CPU (larger slows down there: the batch of edits no
  # longer fits the caches; BENCHMARKS.md), 8 on a GPU or TPU. Changes no result (the same
  # numbers within float rounding).
  edits_per_pass: int = 0
  seed: int = 0

  def __post_init__(self):
    _check(self, sigma=(self.sigma > 0, "> 0"), k=(self.k >= 1, ">= 1"),
           k_list=(bool(self.k_list) and all(k >= 1 for k in self.k_list),
                   "a non-empty list of integers >= 1"),
           random_draws=(self.random_draws >= 2, ">= 2"),
           batch_size=(self.batch_size >= 1, ">= 1"),
           edits_per_pass=(self.edits_per_pass >= 0, ">= 0 (0: by device)"),
           modes=(bool(self.modes) and all(m in interventions.MODES for m in self.modes),
                  f"a non-empty list of {', '.join(interventions.MODES)}"),
           split=(self.split in SPLITS, _SPLIT_TEXT),
           mean_over=(self.mean_over in MEAN_OVER, ", ".join(MEAN_OVER)),
           noise_scale=(self.noise_scale in ("neuron_std", "absolute"), "neuron_std or absolute"))


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """Multi-process runs (one process per host). The environment overrides each field:
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, JAXSKILL_DISTRIBUTED=auto."""
  coordinator_address: str = ""  # host:port of process 0; "" = a single process
  num_processes: int = 0
  process_id: int = -1  # usually from the environment: it differs per process
  auto: bool = False  # let jax find the cluster (Cloud TPU, SLURM)

  def __post_init__(self):
    _check(self, num_processes=(self.num_processes >= 0, ">= 0"),
           process_id=(self.process_id >= -1, ">= -1 (-1: from the environment)"))


# Per section, the keys that change how a stage logs and checkpoints, never what it computes: the
# pipeline's fingerprints leave them out, and a training run resumes across a change of them.
NEUTRAL_KEYS = {"train": ("log_every", "checkpoint_every", "max_to_keep", "async_checkpoint"),
                "find": ("checkpoint_every",), "verify": ("edits_per_pass",)}


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """One run: its name and output directory, and every section."""
  name: str = "run"
  out_dir: str = "runs"
  model: ModelConfig = ModelConfig()
  prompt: PromptConfig = PromptConfig()
  task: TaskConfig = TaskConfig()
  data: DataConfig = DataConfig()
  train: TrainConfig = TrainConfig()
  find: FindConfig = FindConfig()
  verify: VerifyConfig = VerifyConfig()
  distributed: DistributedConfig = DistributedConfig()

  def __post_init__(self):
    # The run directory is out_dir/name: a name that is a path would write elsewhere.
    if (not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name
        or self.name != self.name.strip()):
      raise FieldError("name", f"name={self.name!r} must be a plain directory name (not empty, no '/', "
                       "not '.' or '..'): the run directory is out_dir/name")
    if not self.out_dir:
      raise FieldError("out_dir", "out_dir='' must name a directory (e.g. runs)")

  @property
  def run_dir(self) -> Path:
    """Where the run writes: out_dir/name."""
    return Path(self.out_dir) / self.name


def seed_runs(config: RunConfig) -> list[RunConfig]:
  """The run configs whose prompts are trained: `config` itself, or one per find.seeds entry
  (run dirs `<name>-seed<seed>`, train.seed = the seed); the aggregate goes to
  `config.run_dir`."""
  if not config.find.seeds:
    return [config]
  return [dataclasses.replace(config, name=f"{config.name}-seed{seed}",
                              train=dataclasses.replace(config.train, seed=seed))
          for seed in config.find.seeds]


def config_diff(old: dict, new: dict, prefix: str = "") -> list[str]:
  """"section.key: old -> new" for every leaf that differs between two `to_dict` trees (a key
  missing on one side shows as <unset>)."""
  out = []
  for key in sorted(set(old) | set(new), key=lambda k: (k not in new, str(k))):
    a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
    name = f"{prefix}{key}"
    if isinstance(a, dict) and isinstance(b, dict):
      out += config_diff(a, b, f"{name}.")
    elif a != b:
      out.append(f"{name}: {a!r} -> {b!r}")
  return out


_CHOICES = {
    ("model", "dtype"): ("float32", "bfloat16"),
    ("prompt", "init"): ("random", "vocab", "text"),
    ("prompt", "placement"): ("infix", "prefix"),
    ("data", "truncation"): ("left", "right", "error"),
    ("train", "decay"): ("constant", "linear", "cosine"),
    ("train", "param_sharding"): ("tensor", "fsdp"),
    ("find", "fit_memory"): ("refuse", "lower"),
}


def _coerce(value: Any, tp: Any, where: str) -> Any:
  """`value` (from YAML, or a raw command-line string) as type `tp`, or a RunConfigError."""
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None:
      return None
    return _coerce(value, args[0], where)
  if origin is tuple:
    (item, *_) = typing.get_args(tp)
    return _coerce_tuple(value, item, where)
  if tp is bool:
    if isinstance(value, bool):
      return value
    if isinstance(value, str) and value.lower() in _BOOLS:
      return _BOOLS[value.lower()]
    raise RunConfigError(f"{where}: expected true or false, got {value!r}")
  if tp is int or tp is float:
    return _coerce_number(value, tp, where)
  if tp is str:
    if isinstance(value, bool) or value is None:
      # YAML 1.1 turns yes/no/on/off/null into booleans and None: never a silent "True".
      raise RunConfigError(f"{where}: expected a string, got {value!r}; quote it in YAML")
    if isinstance(value, (dict, list)):
      raise RunConfigError(f"{where}: expected a string, got {value!r}")
    return str(value)
  raise RunConfigError(f"{where}: unsupported type {tp}")


def _coerce_tuple(value: Any, item: Any, where: str) -> tuple:
  """A list, a single number or a "1,2" / "[1, 2]" string as a tuple of `item`s."""
  if isinstance(value, str):  # "1,2" or "[1, 2]" on the command line
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
      text = text[1:-1]
    value = [v.strip() for v in text.split(",") if v.strip() != ""]
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    value = [value]
  if not isinstance(value, (list, tuple)):
    raise RunConfigError(f"{where}: expected a list, got {value!r}")
  return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))


def _coerce_number(value: Any, tp: type, where: str) -> int | float:
  """`value` as an int (a whole number, "3" or "3.0") or a float (also "1e-3"); never a bool."""
  if tp is int:
    try:
      if isinstance(value, bool):
        raise ValueError
      number = float(value) if isinstance(value, str) else value
      if isinstance(number, float) and not number.is_integer():
        raise ValueError
      return int(number)
    except (TypeError, ValueError):
      raise RunConfigError(f"{where}: expected an integer, got {value!r}") from None
  try:
    if isinstance(value, bool):
      raise ValueError
    return float(value)  # also "1e-3", which YAML 1.1 reads as a string
  except (TypeError, ValueError):
    raise RunConfigError(f"{where}: expected a number, got {value!r}") from None


_BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False,
          "on": True, "off": False}


def _build(cls, data: dict, where: str, make: bool = True):
  """An instance of the dataclass `cls` from `data`. make=False checks only the keys, types and
  choices (not the sections' own validation, whose fields may come from several files) and
  returns None: a file of a base_config chain is checked on its own with it, so that an error
  names the file that has it."""
  if not isinstance(data, dict):
    raise RunConfigError(f"{where or 'config'}: expected a mapping of keys, got {data!r}")
  hints = typing.get_type_hints(cls)
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - fields)
  if unknown:
    raise RunConfigError(f"{where or 'config'}: unknown key(s) {unknown}; "
                         f"valid keys: {sorted(fields)}")
  kwargs = {}
  for name, value in data.items():
    key = f"{where}.{name}" if where else name
    tp = hints[name]
    if dataclasses.is_dataclass(tp):
      kwargs[name] = _build(tp, {} if value is None else value, key, make)
    else:
      kwargs[name] = _coerce(value, tp, key)
      section = where.rsplit(".", 1)[-1]
      allowed = _CHOICES.get((section, name))
      if allowed and kwargs[name] not in allowed:
        raise RunConfigError(f"{key}: must be one of {list(allowed)}, got {kwargs[name]!r}")
  if not make:
    return None
  try:
    return cls(**kwargs)
  except ValueError as e:  # a section's own validation
    error = RunConfigError(f"{where or 'config'}: {e}")
    error.key = ".".join(filter(None, [where, getattr(e, "field", None)]))
    raise error from None


def parse_overrides(overrides: list[str]) -> dict:
  """["train.lr=1e-3", "task.digits=1,2"] -> nested dict. A key given twice is an error."""
  nested: dict = {}
  seen = set()
  for item in overrides:
    if "=" not in item:
      raise RunConfigError(f"override {item!r}: expected key=value (e.g. train.lr=1e-3)")
    key, raw = item.split("=", 1)
    if key in seen:
      raise RunConfigError(f"override {key!r} given twice")
    seen.add(key)
    value = raw  # kept as typed: each field's type decides how to read it (no YAML guessing)
    parts = key.split(".")
    node = nested
    for part in parts[:-1]:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise RunConfigError(f"override {key!r} conflicts with another override")
    node[parts[-1]] = value
  return nested


def _merge(base: dict, over: dict) -> dict:
  """`over` on top of `base`: sections merged key by key, anything else (a list too) replaced."""
  out = dict(base)
  for key, value in over.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = _merge(out[key], value)
    elif value is None and isinstance(out.get(key), dict):
      pass  # an empty section (`train:` with every key commented out) keeps the base's keys
    else:
      out[key] = value
  return out


BASE_KEY = "base_config"  # a file's key naming the file it starts from; not a RunConfig field


def _yaml_problem(error: yaml.YAMLError) -> str:
  """One line: "line L, column C: <problem>", where PyYAML's own message takes seven."""
  mark = getattr(error, "problem_mark", None)
  problem = getattr(error, "problem", None) or str(error).splitlines()[0]
  context = getattr(error, "context", None)
  where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
  return where + problem + (f" ({context} at line {error.context_mark.line + 1})"
                            if context and getattr(error, "context_mark", None) else "")


def _read_yaml(path: Path, name: str) -> dict:
  """The top-level mapping of one config file; errors start with `name` (the file, and for a
  base the file that names it)."""
  try:
    data = yaml.safe_load(path.read_text()) or {}
  except FileNotFoundError:
    raise RunConfigError(f"{name}: config file not found") from None
  except yaml.YAMLError as e:
    raise RunConfigError(f"{name}: not valid YAML ({_yaml_problem(e)})") from None
  except (UnicodeDecodeError, IsADirectoryError) as e:
    raise RunConfigError(f"{name}: not a UTF-8 text file ({e})") from None
  if not isinstance(data, dict):
    raise RunConfigError(f"{name}: expected a mapping at the top level")
  return data


def _read_chain(path: Path) -> tuple[dict, list[Path]]:
  """The file at `path` merged over its base_config chain (the root base first, each file on top
  of the one it names), and the chain's files from `path` down to the root base. Each file is
  checked on its own first, so that an unknown key or a bad value names the file that has it."""
  files: list[Path] = []
  seen: list[Path] = []  # resolved, so that a.yaml and ./a.yaml are the same file
  layers: list[dict] = []
  while path is not None:
    real = path.resolve()
    if real in seen:
      cycle = " -> ".join(str(p) for p in [*files[seen.index(real):], path])
      raise RunConfigError(f"{files[0]}: base_config cycle: {cycle}")
    name = (str(path) if not files else f"{path} (the base_config of {files[-1]}"
            + (f", from {files[0]})" if len(files) > 1 else ")"))
    files.append(path)
    seen.append(real)
    data = _read_yaml(path, name)
    has_base = BASE_KEY in data
    base = data.pop(BASE_KEY, None)
    if has_base and (not isinstance(base, str) or not base.strip()):
      raise RunConfigError(f"{name}: {BASE_KEY}: expected the path of a config file (relative "
                           f"to this one), got {base!r}")
    try:
      _build(RunConfig, data, "", make=False)
    except RunConfigError as e:
      raise RunConfigError(f"{name}: {e}") from None
    layers.append(data)
    path = path.parent / base if has_base else None  # an absolute base stays absolute
  merged: dict = {}
  for layer in reversed(layers):
    merged = _merge(merged, layer)
  return merged, files


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
  """The config of the file at `path` (merged over its base_config chain, if it names one) with
  the `section.key=value` overrides on top; no file: the defaults with the overrides."""
  data: dict = {}
  where = "overrides"
  given = parse_overrides(list(overrides))
  if overrides:  # a bad key, type or choice on the command line is blamed on it, not the file
    try:
      _build(RunConfig, given, "", make=False)
    except RunConfigError as e:
      raise RunConfigError(f"command line: {e}") from None
  if path is not None:
    path = Path(path)
    data, files = _read_chain(path)
    # Each file passed its own checks: what fails now is a section's validation of the merged
    # values (which any file of the chain may have set) or an override.
    where = str(path) if len(files) == 1 else (
        f"{path} (over {' -> '.join(map(str, files[1:]))})")
  data = _merge(data, given)
  try:
    return _build(RunConfig, data, "")
  except RunConfigError as e:
    given_as = dict(o.split("=", 1) for o in overrides)
    key = getattr(e, "key", "")
    if key in given_as:
      raise RunConfigError(f"command line ({key}={given_as[key]}): {e}") from None
    raise RunConfigError(f"{where}: {e}") from None


def to_dict(config) -> dict:
  """A config dataclass as nested plain dicts, tuples as lists (what YAML and JSON write)."""
  def plain(v):
    """A tuple as a list, recursively; anything else unchanged."""
    if isinstance(v, tuple):
      return [plain(x) for x in v]
    return v
  return {f.name: (to_dict(getattr(config, f.name))
                   if dataclasses.is_dataclass(getattr(config, f.name))
                   else plain(getattr(config, f.name)))
          for f in dataclasses.fields(config)}


def dump_config(config: RunConfig, path: str | Path) -> None:
  """Writes `config` as YAML to `path` (atomically)."""
  from jaxskill.runtime.files import write_text
  write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
